"""Val curves: a run's TensorBoard scalars (resumed runs' event files merged), and one plot of all settings."""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tinytransformer.files import write_atomic

if TYPE_CHECKING:
    from tinytransformer.comparison.compare import SettingGroup

CURVE_TAG = "val/bpc"


def read_scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) of a TensorBoard scalar over all the run's event files; a repeated step keeps the last."""
    # Imported here: finding runs and printing the table (and every error) need no TensorBoard.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values: dict[int, float] = {}
    # Event file names start with their creation time, so a resumed run's newer file is read last.
    for file in sorted((run_dir / "tensorboard").rglob("events.out.tfevents.*"), key=lambda p: p.name):
        events = EventAccumulator(str(file), size_guidance={"scalars": 0})
        events.Reload()
        if tag in events.Tags()["scalars"]:
            values.update((e.step, e.value) for e in events.Scalars(tag))
    return sorted(values.items())


def setting_curve(group: SettingGroup, tag: str = CURVE_TAG) -> tuple[np.ndarray, ...] | None:
    """(steps, mean, min, max) over the group's runs at the steps every run logged; None if there are none."""
    curves = [dict(read_scalars(r.dir, tag)) for r in group.runs]
    curves = [c for c in curves if c]
    steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
    if not steps:
        return None
    values = np.array([[c[s] for s in steps] for c in curves])  # (runs, steps)
    return np.array(steps), values.mean(0), values.min(0), values.max(0)


def plot_curves(groups: list[SettingGroup], path: Path, floor: float | None) -> None:
    """Val bits/char vs step, one line per setting (min-max band over seeds), to a PNG at `path`."""
    # A bare Figure draws with Agg and leaves pyplot's global backend alone (safe inside a notebook).
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for g in groups:
        curve = setting_curve(g)
        if curve is None:
            continue
        steps, mean, low, high = curve
        # Markers: a run with a single validation still shows up.
        (line,) = ax.plot(steps, mean, marker="o", markersize=3, label=f"{g.label} (n={len(g.runs)})")
        if len(g.runs) > 1:
            ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    if floor is not None:
        ax.axhline(floor, color="black", linestyle="--", linewidth=1, label=f"entropy floor {floor:.4f}")
    ax.set(xlabel="step", ylabel="val bits/char", title=f"val bits/char by setting: {path.parent.name}")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=120)
    write_atomic(path, png.getvalue())
