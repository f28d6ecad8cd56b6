"""Comparing runs: a table row per setting (seeds averaged), failures listed, a report and curves written."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from torch.utils.tensorboard import SummaryWriter

from tinytransformer.comparison.compare import compare, compare_main
from tinytransformer.comparison.curves import read_scalars
from tinytransformer.comparison.groups import short_label
from tinytransformer.comparison.records import find_runs, split_overrides
from tinytransformer.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
FLOOR = 0.3569


def write_val_bpc(run: Path, points: dict[int, float]) -> None:
    """Real TensorBoard event file with val/bpc at the given steps."""
    writer = SummaryWriter(log_dir=str(run / "tensorboard"))
    for step, value in points.items():
        writer.add_scalar("val/bpc", value, step)
    writer.close()


def make_run(parent: Path, name: str, overrides: list[str], metrics=None, failed=None, curve=None) -> Path:
    """A fake run dir as training leaves it: .hydra/, metrics.json, failed.json, tensorboard/."""
    run = parent / name
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("{}\n")
    (run / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if metrics is not None:
        (run / "metrics.json").write_text(json.dumps(metrics))
    if failed is not None:
        (run / "failed.json").write_text(json.dumps({"status": "failed", "reason": failed}))
    if curve is not None:
        write_val_bpc(run, curve)
    return run


def results(best: float, train: float = 1.0, final_val: float | None = None, **extra) -> dict:
    """metrics.json of a finished run whose best val loss is `best` (bits/char = loss + 0.5, to tell apart)."""
    return {
        "best_val_loss": best,
        "best_val_bpc": best + 0.5,
        "best_step": 400,
        "steps": 500,
        "final_train_loss": train,
        "final_val_loss": best if final_val is None else final_val,
        "final_val_bpc": best + 0.5,
        "stop_reason": "max_steps",
        "corpus": "tiny_world",
        **extra,
    }


def make_job(sweep: Path, num: int, overrides: list[str], **kwargs) -> Path:
    """A sweep job dir named as Hydra names it: `<num>_<overrides joined by ,>`."""
    return make_run(sweep, f"{num}_{','.join(overrides)}", overrides, **kwargs)


@pytest.fixture
def sweep(tmp_path) -> Path:
    """Three settings (one with two seeds), a failed job, a non-finite job and a job with no results yet."""
    sweep = tmp_path / "logs" / "train" / "multiruns" / "2024-01-01" / "12-00-00"
    sweep.mkdir(parents=True)
    (sweep / "multirun.yaml").write_text("{}\n")
    floor = {"entropy_floor_bpc": FLOOR}
    no_drop_1 = results(1.3, train=1.0, final_val=1.4, **floor)
    no_drop_2 = results(1.5, train=1.2, final_val=1.6, **floor)
    make_job(sweep, 0, ["model.dropout=0", "seed=1"], metrics=no_drop_1, curve={100: 2.0, 200: 1.8, 300: 1.7})
    make_job(sweep, 1, ["model.dropout=0", "seed=2"], metrics=no_drop_2, curve={100: 2.2, 200: 2.0})
    make_job(sweep, 2, ["model.dropout=0.1", "seed=1"], metrics=results(1.0, **floor), curve={100: 1.9})
    both = ["model.dropout=0.2", "optimizer.weight_decay=0.1", "seed=1"]
    # Hydra leaves paths.log_dir out of the dir name (conf/hydra), but it is in overrides.yaml.
    make_run(sweep, f"3_{','.join(both)}", [*both, "paths.log_dir=/x"], metrics=results(1.2, **floor))
    make_job(sweep, 4, ["model.dropout=0.9", "seed=1"], failed="CUDA out of memory")
    make_job(sweep, 5, ["optimizer.lr=10", "seed=1"], metrics=results(2.0, stop_reason="non_finite_loss"))
    make_job(sweep, 6, ["model.dropout=0.3", "seed=1"])
    return sweep


def table_rows(text: str) -> list[list[str]]:
    """The cells of the markdown table's data rows."""
    rows = [line for line in text.splitlines() if line.startswith("|")][2:]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]


def test_rows_are_sorted_by_mean_best_val_loss(sweep):
    rows = table_rows(compare(sweep))
    assert [row[0] for row in rows] == ["dropout=0.1", "dropout=0.2, weight_decay=0.1", "dropout=0"]


def test_setting_with_two_seeds_shows_mean_and_sample_std(sweep):
    row = next(row for row in table_rows(compare(sweep)) if row[0] == "dropout=0")
    # best val loss 1.3 and 1.5; gaps 1.4-1.0 and 1.6-1.2
    assert row[1:7] == [
        "2",
        "1.4000 ± 0.1414",
        "1.9000 ± 0.1414",
        "1.1000 ± 0.1414",
        "0.4000 ± 0.0000",
        "400 ± 0",
    ]
    assert row[7] == "max_steps"


def test_single_run_setting_shows_plain_values(sweep):
    row = next(row for row in table_rows(compare(sweep)) if row[0] == "dropout=0.1")
    assert row[1:7] == ["1", "1.0000", "1.5000", "1.0000", "0.0000", "400"]


def test_seed_and_path_overrides_are_not_part_of_a_setting():
    setting, seed = split_overrides(["seed=3", "model.dropout=0.1", "paths.log_dir=/x", "hydra.run.dir=/y"])
    assert (setting, seed) == (("model.dropout=0.1",), "3")
    assert short_label(setting) == "dropout=0.1"
    assert short_label(()) == "baseline"
    assert short_label(
        ("regularizers.input_noise.p=0.5", "callbacks.early_stopping.patience=3", "+experiment=reg")
    ) == ("input_noise.p=0.5, patience=3, +experiment=reg")


def test_failed_and_unfinished_runs_are_listed_under_the_table_not_in_it(sweep):
    text = compare(sweep)
    assert "- 4_model.dropout=0.9,seed=1: failed: CUDA out of memory" in text
    assert "- 5_optimizer.lr=10,seed=1: failed: non_finite_loss" in text
    job_6 = sweep / "6_model.dropout=0.3,seed=1"
    assert (
        f"- 6_model.dropout=0.3,seed=1: killed: no process holds it and it did not finish (no validation yet); resume with: python scripts/train.py resume={job_6}"
        in text
    )
    settings = [row[0] for row in table_rows(text)]
    assert not {"dropout=0.9", "lr=10", "dropout=0.3"} & set(settings)
    assert "seed" not in "".join(settings)


def test_entropy_floor_line_appears_only_when_recorded(sweep, tmp_path):
    assert f"entropy floor: {FLOOR:.4f} bits/char" in compare(sweep)
    make_run(tmp_path / "other", "run", ["model.dropout=0.1"], results(1.0))
    assert "entropy floor" not in compare(tmp_path / "other")


def test_report_and_curves_are_written_into_the_given_dir(sweep):
    text = compare(sweep)
    assert (sweep / "comparison.md").read_text() == text + "\n"
    assert (sweep / "val_curves.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_each_setting_is_a_tensorboard_run_of_its_mean_curve_and_its_spread_over_seeds(sweep):
    compare(sweep)
    compare(sweep)  # again: the setting runs are replaced, not appended to
    setting = sweep / "settings" / "dropout=0"
    assert read_scalars(setting, "val/bpc") == [(100, pytest.approx(2.1)), (200, pytest.approx(1.9))]
    assert read_scalars(setting, "spread/val/bpc_min") == [(100, 2.0), (200, pytest.approx(1.8))]
    assert read_scalars(setting, "spread/val/bpc_max") == [(100, pytest.approx(2.2)), (200, 2.0)]
    assert len(list(setting.glob("events.out.tfevents.*"))) == 1
    assert read_scalars(sweep / "settings" / "dropout=0.1", "val/bpc") == [(100, pytest.approx(1.9))]
    assert not any(run.dir.is_relative_to(sweep / "settings") for run in find_runs(sweep))


def test_the_settings_csv_mirrors_the_json(regularization_like_sweep):
    compare(regularization_like_sweep)
    summary = json.loads((regularization_like_sweep / "comparison.json").read_text())
    with (regularization_like_sweep / "comparison_settings.csv").open(newline="") as file:
        rows = list(csv.DictReader(file))
    assert [row["setting"] for row in rows] == [s["setting"] for s in summary["settings"]]
    for row, setting in zip(rows, summary["settings"], strict=True):
        assert float(row["best_val_loss_mean"]) == pytest.approx(setting["best_val_loss"]["mean"])
        versus = setting["vs_baseline"] or {}
        assert row["vs_baseline_verdict"] == (versus.get("verdict") or "")
        if versus.get("ci"):
            assert float(row["vs_baseline_ci_low"]) == pytest.approx(versus["ci"][0])


@pytest.fixture
def regularization_like_sweep(tmp_path) -> Path:
    for num, (overrides, best) in enumerate(
        [(["regularization=none", f"seed={s}"], 1.3 + s / 10) for s in (1, 2, 3)]
        + [(["regularization=dropout", f"seed={s}"], 1.0 + s / 9) for s in (1, 2, 3)]
    ):
        make_job(tmp_path, num, overrides, metrics=results(best, test_loss=best + 0.1))
    return tmp_path


def test_the_metric_key_compares_the_test_loss_at_the_best_checkpoint(regularization_like_sweep, capsys):
    text = compare(regularization_like_sweep, metric="test_loss")
    assert "Δ test loss at the best checkpoint vs baseline [CI]" in text
    assert "verdict on Δ test loss at the best checkpoint (setting - baseline)" in text
    for key, line in [
        (
            "metric=val_loss",
            "error: metric=val_loss: not a metric compare_runs tests; use one of best_val_loss, test_loss",
        ),
        ("delta=-1", "error: delta=-1: the equivalence margin must be a number of nats > 0;"),
    ]:
        with pytest.raises(SystemExit) as exited:
            compare_main([str(regularization_like_sweep), key])
        assert exited.value.code == 2 and capsys.readouterr().err.startswith(line)


def test_the_delta_key_sets_the_equivalence_margin(regularization_like_sweep):
    # Δ per seed: -0.189, -0.178, -0.167: a 95 % CI of about [-0.205, -0.150].
    assert table_rows(compare(regularization_like_sweep))[0][-1] == "better"
    assert "±δ = 0.5 nats" in compare(regularization_like_sweep, delta=0.5)


def test_runs_are_found_at_any_depth_and_in_a_single_run_dir(sweep, tmp_path):
    single = make_run(tmp_path / "logs" / "train" / "runs" / "2024-01-02", "09-00-00", [], results(0.9))
    names = [run.name for run in find_runs(tmp_path / "logs")]
    assert names[-1] == "train/runs/2024-01-02/09-00-00"
    assert len(names) == 8
    assert [row[0] for row in table_rows(compare(single))] == ["baseline"]


def test_scalars_from_several_event_files_merge_and_a_repeated_step_keeps_the_last(tmp_path):
    run = tmp_path / "run"
    write_val_bpc(run, {100: 2.0, 200: 1.8})
    (older,) = (run / "tensorboard").glob("events.*")
    write_val_bpc(run, {200: 1.7, 300: 1.6})  # a resumed run: a second file, step 200 again
    (newer,) = set((run / "tensorboard").glob("events.*")) - {older}
    # Made in one second by one process, as the 9th and 10th files it wrote: by name alone, 10 < 9.
    older.rename(older.with_name("events.out.tfevents.1733600000.host.1.9"))
    newer.rename(newer.with_name("events.out.tfevents.1733600000.host.1.10"))
    steps, values = zip(*read_scalars(run, "val/bpc"), strict=True)
    assert steps == (100, 200, 300)
    assert values == pytest.approx((2.0, 1.7, 1.6))


def test_dir_without_runs_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no run dirs found"):
        compare(tmp_path)


def test_cli_on_missing_path_exits_2_with_one_line_on_stderr(tmp_path):
    missing = tmp_path / "nope"
    done = subprocess.run(
        [sys.executable, "scripts/compare_runs.py", str(missing)], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 2
    assert done.stderr.startswith(f"error: {missing}: no such directory")
    assert len(done.stderr.strip().splitlines()) == 1


def test_overrides_every_run_shares_are_named_once_under_the_table_not_in_each_row(tmp_path):
    shared = ["model=tiny", "trainer.max_steps=40"]
    make_job(tmp_path, 0, [*shared, "model.dropout=0"], metrics=results(1.2))
    make_job(tmp_path, 1, [*shared, "model.dropout=0.1"], metrics=results(1.1))
    text = compare(tmp_path)
    assert [row[0] for row in table_rows(text)] == ["dropout=0.1", "dropout=0"]
    assert "all runs: model=tiny, max_steps=40" in text.splitlines()


def hold_lock(run: Path) -> subprocess.Popen:
    """Another process holding `run`'s lock as a training run does, until it is killed."""
    code = (
        "import sys, time; from tinytransformer.runtime.runs import lock_run_dir; lock_run_dir(sys.argv[1]); "
        "print('held', flush=True); time.sleep(120)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(run)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_finished_running_stopped_killed_and_failed_runs_are_told_apart(tmp_path):
    running_metrics = results(1.1, status="running", final_val_step=200)
    make_job(tmp_path, 0, ["seed=1"], metrics=results(1.2, status="finished"))
    running = make_job(tmp_path, 1, ["seed=2"], metrics=running_metrics)
    killed = make_job(tmp_path, 2, ["seed=3"], metrics=running_metrics)
    stopped = make_job(
        tmp_path, 3, ["seed=4"], metrics=results(1.0, status="interrupted", stop_reason="SIGTERM")
    )
    make_job(tmp_path, 4, ["seed=5"], failed="No space left on device")
    torn = make_job(tmp_path, 5, ["seed=6"])
    (torn / "metrics.json").write_text("\x00\x00")  # zeroed by a crash, as some file systems leave it
    holder = hold_lock(running)
    try:
        text = compare(tmp_path)
    finally:
        holder.kill()
        holder.wait()
    assert table_rows(text)[0][1] == "1"  # only the finished run is in the table
    problems = [line for line in text.splitlines() if line.startswith("- ")]
    assert problems[0].startswith(
        f"- 1_seed=2: running (its last validation was at step 200; held by pid {holder.pid} on "
    )
    assert problems[1:] == [
        "- 2_seed=3: killed: no process holds it and it did not finish (its last validation was at step "
        f"200); resume with: python scripts/train.py resume={killed}",
        "- 3_seed=4: stopped by SIGTERM (its last validation was at step 400); resume with: python "
        f"scripts/train.py resume={stopped}",
        "- 4_seed=5: failed: No space left on device",
        "- 5_seed=6: failed: unreadable results file: Expecting value: line 1 column 1 (char 0)",
    ]
    with (tmp_path / "comparison.csv").open(newline="") as file:
        assert [row["status"] for row in csv.DictReader(file)][-1] == "failed"
    # The holder is gone (killed): the kernel dropped its lock, so the same run now reads as killed.
    assert "- 1_seed=2: killed: no process holds it" in compare(tmp_path)


def test_a_run_stopped_before_its_first_validation_is_listed_as_stopped(tmp_path):
    early = {"best_val_loss": float("nan"), "status": "interrupted", "stop_reason": "SIGTERM", "steps": 7}
    run = make_job(tmp_path, 0, ["seed=1"], metrics=early)
    line = f"- 0_seed=1: stopped by SIGTERM (no validation yet); resume with: python scripts/train.py resume={run}"
    assert line in compare(tmp_path)


def test_the_command_line_takes_the_baseline_key_and_names_every_file_it_wrote(sweep, capsys):
    compare_main([str(sweep), "baseline=model.dropout=0"])
    out = capsys.readouterr().out
    assert "baseline: dropout=0 (" in out
    for name in (
        "comparison.md",
        "comparison.csv",
        "comparison_settings.csv",
        "comparison.json",
        "val_curves.png",
    ):
        assert f"wrote {sweep / name}\n" in out
        assert (sweep / name).is_file()


def test_the_csv_has_one_row_per_run_and_parses_back(sweep):
    compare(sweep)
    with (sweep / "comparison.csv").open(newline="") as file:
        rows = {row["run"]: row for row in csv.DictReader(file)}
    assert len(rows) == len(find_runs(sweep)) == 7
    first = rows["0_model.dropout=0,seed=1"]
    assert (first["setting"], first["seed"], first["status"], first["stop_reason"]) == (
        "dropout=0",
        "1",
        "finished",
        "max_steps",
    )
    assert [float(first[k]) for k in ("best_val_loss", "best_val_bpc", "final_train_loss")] == [1.3, 1.8, 1.0]
    assert (float(first["entropy_floor_bpc"]), int(first["best_step"])) == (FLOOR, 400)
    failed = rows["4_model.dropout=0.9,seed=1"]
    assert (failed["status"], failed["failure"], failed["best_val_loss"]) == (
        "failed",
        "CUDA out of memory",
        "",
    )
