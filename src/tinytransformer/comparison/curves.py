"""Val curves: a run's TensorBoard scalars (resumed runs' event files merged), one plot of all settings, and
each setting's mean curve and spread over its seeds as a TensorBoard run of its own."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tinytransformer.files import write_atomic

if TYPE_CHECKING:
    from tinytransformer.comparison.groups import SettingGroup

CURVE_TAG = "val/bpc"
SETTINGS_DIR = "settings"  # under the sweep dir: a TensorBoard run per setting
SETTING_TAGS = ("val/loss", "val/bpc", "train/loss_avg")


def read_scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) of a TensorBoard scalar over all the run's event files (in its tensorboard/, or in
    `run_dir` itself for a setting's run); a repeated step keeps the last."""
    # Imported here: finding runs and printing the table (and every error) need no TensorBoard.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values: dict[int, float] = {}
    events_dir = run_dir / "tensorboard" if (run_dir / "tensorboard").is_dir() else run_dir
    for file in sorted(events_dir.rglob("events.out.tfevents.*"), key=_creation_order):
        events = EventAccumulator(str(file), size_guidance={"scalars": 0})
        events.Reload()
        if tag in events.Tags()["scalars"]:
            values.update((e.step, e.value) for e in events.Scalars(tag))
    return sorted(values.items())


def _creation_order(file: Path) -> tuple[str, int]:
    """events.out.tfevents.<time, 10 digits>.<host>.<pid>.<the process's file count>: a resumed run's newer
    file is read last, and of two made in one second, the later (the count has no fixed width: 9 < 10)."""
    parts = file.name.split(".")
    return parts[3], int(parts[-1]) if parts[-1].isdigit() else -1


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


def write_setting_runs(groups: list[SettingGroup], root: Path) -> None:
    """`<root>/settings/<setting>/`: a TensorBoard run per setting, whose SETTING_TAGS are the mean over its
    seeds at each step every seed logged (so the Scalars tab draws it beside the jobs' own curves), with
    `spread/<tag>_min` and `_max`; the Custom Scalars tab draws each tag's mean with its min-max band. The
    whole dir is replaced, so comparing again leaves no stale curves."""
    # Imported here: the table (and every error) needs no torch.
    from torch.utils.tensorboard import SummaryWriter

    final, staging = root / SETTINGS_DIR, root / f".{SETTINGS_DIR}.{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    spread = {tag: (f"spread/{tag}_min", f"spread/{tag}_max") for tag in SETTING_TAGS}
    for g in groups:
        with SummaryWriter(str(staging / g.label.replace("/", "_"))) as writer:
            if g is groups[0]:  # one layout serves every run
                charts = {
                    f"{tag}: mean, min-max over seeds": ["Margin", [tag, *spread[tag]]]
                    for tag in SETTING_TAGS
                }
                writer.add_custom_scalars({"settings": charts})
            for tag in SETTING_TAGS:
                curve = setting_curve(g, tag)
                for step, mean, low, high in zip(*(curve or ()), strict=True):
                    writer.add_scalar(tag, mean, int(step))
                    writer.add_scalar(spread[tag][0], low, int(step))
                    writer.add_scalar(spread[tag][1], high, int(step))
    shutil.rmtree(final, ignore_errors=True)
    if staging.exists():
        staging.rename(final)
