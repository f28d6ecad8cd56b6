"""Bad input through the real CLI: one line naming the key or file, the value and the fix; exit code 2;
no traceback; and every file that existed before keeps its bytes."""

import hashlib
import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from tests.conftest import TINY_RUN, run_cli

from tinytransformer.runtime.runs import LOCK


def snapshot(root: Path) -> dict[str, str]:
    """Every file's hash; run.lock left out: it names whichever process last held the run dir."""
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != LOCK
    }


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A log dir holding one finished run, plus data files of every bad kind."""
    root = tmp_path_factory.mktemp("errors")
    result = run_cli("train.py", *TINY_RUN, "trainer.max_steps=20", f"paths.log_dir={root / 'logs'}")
    assert result.returncode == 0, result.stderr[-2000:]
    (run_dir,) = list((root / "logs" / "train" / "runs").glob("*/*"))
    files = root / "files"
    files.mkdir()
    (files / "empty.txt").write_text("")
    (files / "blank.txt").write_text("  \n\t \n")
    (files / "short.txt").write_text("The cat sat on the mat. " * 3)
    (files / "binary.bin").write_bytes(b"The cat sat" + bytes([0xFF, 0xFE, 0x00, 0x81]) * 50)
    (files / "other.txt").write_text("Zyxw vut srq! " * 400)
    ckpt = (run_dir / "checkpoints" / "last.ckpt").read_bytes()
    (files / "truncated.ckpt").write_bytes(ckpt[: len(ckpt) // 2])
    (files / "notes.ckpt").write_text("not a checkpoint")
    return root, run_dir, files


def assert_one_line_error(result, *needles):
    assert result.returncode == 2, (result.returncode, result.stderr[-1500:])
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    error_lines = [line for line in lines if line.startswith("error: ")]
    assert len(error_lines) == 1, result.stderr[-1500:]
    for needle in needles:
        assert needle in error_lines[0], (needle, error_lines[0])


TRAIN_CASES = {
    "mistyped key": (["model.d_modle=64"], ["model.d_modle=64", "did you mean model.d_model"]),
    "wrong type": (["trainer.max_steps=abc"], ["trainer.max_steps='abc'", "an integer >= 1"]),
    "dropout too high": (["model.dropout=1.5"], ["model.dropout=1.5", "[0, 1)"]),
    "dropout negative": (["model.dropout=-0.1"], ["model.dropout=-0.1", "[0, 1)"]),
    "zero batch": (["data.batch_size=0"], ["data.batch_size=0", ">= 1"]),
    "negative lr": (["optimizer.lr=-0.001"], ["optimizer.lr=-0.001", "> 0"]),
    "val fraction 0": (["data.val_fraction=0"], ["data.val_fraction=0", "(0, 1)"]),
    "val fraction 1.5": (["data.val_fraction=1.5"], ["data.val_fraction=1.5", "(0, 1)"]),
    "heads not dividing": (["model.n_heads=3"], ["model.n_heads=3", "model.d_model=128"]),
    "block size 0": (["data.block_size=0"], ["data.block_size=0", ">= 1"]),
    "unknown precision": (["trainer.precision=fp8"], ["trainer.precision='fp8'", "bf16-mixed", "auto"]),
    "unknown preset": (["model=huge"], ["model=huge", "available: default, shakespeare, small, tiny"]),
    "bad syntax": (["model dropout=0.1"], ["model dropout=0.1", "bad override syntax", "key=value"]),
    "unbalanced bracket, taken as a string": (["model.dropout=[0.1"], ["model.dropout='[0.1'", "a number"]),
    "no scheduler": (["scheduler._target_=nope.Nope"], ["scheduler._target_=nope.Nope", "cannot import"]),
    "unknown scheduler key": (["+scheduler.gamma=1"], ["scheduler.gamma", "WarmupCosine takes no argument"]),
    "deleting a missing key": (
        ["~model.dropuot"],
        ["~model.dropuot", "did you mean model.dropout", "drop the"],
    ),
    "a sweep's config shown": (["-m", "--info", "seed=1,2"], ["--info with -m", "drop -m"]),
}


@pytest.mark.parametrize("case", list(TRAIN_CASES))
def test_bad_override_is_one_line_and_creates_nothing(workspace, case):
    root, _, _ = workspace
    args, needles = TRAIN_CASES[case]
    before = snapshot(root)
    result = run_cli("train.py", *args, f"paths.log_dir={root / 'logs'}")
    assert_one_line_error(result, *needles)
    assert snapshot(root) == before  # refused before any run dir was made


DATA_CASES = {
    "missing": ("missing.txt", ["data.path", "missing.txt", "does not exist"]),
    "directory": (".", ["data.path", "directory"]),
    "empty": ("empty.txt", ["data.path", "empty.txt", "empty"]),
    "whitespace only": ("blank.txt", ["data.path", "blank.txt", "whitespace"]),
    "too short": ("short.txt", ["data.block_size", "split has"]),
    "not utf-8": ("binary.bin", ["binary.bin", "byte 11", "data.encoding"]),
}


@pytest.mark.parametrize("case", list(DATA_CASES))
def test_bad_data_file_is_one_line_and_leaves_earlier_runs_alone(workspace, case):
    root, _, files = workspace
    name, needles = DATA_CASES[case]
    before = snapshot(root / "logs")
    result = run_cli(
        "train.py", *TINY_RUN, "data=text_file", f"data.path={files / name}", f"paths.log_dir={root / 'logs'}"
    )
    assert_one_line_error(result, *needles)
    after = snapshot(root / "logs")
    assert {k: v for k, v in after.items() if k in before} == before


def test_resume_of_a_dir_that_is_not_a_run_is_refused(workspace):
    root, _, files = workspace
    assert_one_line_error(run_cli("train.py", f"resume={files}"), f"resume={files}", "not a run dir")
    assert_one_line_error(run_cli("train.py", f"resume={root / 'nope'}"), "resume=", "not a run dir")


@pytest.mark.parametrize("override", ["optimizer.lr=0.1", "model.d_model=64", "data.block_size=16"])
def test_resume_refuses_changes_the_checkpoint_would_ignore_or_reject(workspace, override):
    root, run_dir, _ = workspace
    before = snapshot(root)
    assert_one_line_error(run_cli("train.py", f"resume={run_dir}", override), override, "start a new run")
    assert snapshot(root) == before


def test_a_new_run_never_writes_into_an_existing_run_dir(workspace):
    root, run_dir, _ = workspace
    before = snapshot(root)
    result = run_cli("train.py", *TINY_RUN, f"hydra.run.dir={run_dir}", f"paths.log_dir={root / 'logs'}")
    assert_one_line_error(result, "already holds a run", f"resume={run_dir}")
    assert snapshot(root) == before


def test_resume_with_data_the_checkpoint_vocabulary_lacks_is_refused(workspace):
    root, run_dir, files = workspace
    failed = run_dir / "failed.json"
    failed.write_text('{"reason": "disk full"}')  # a failed run: a refused resume must leave it failed
    before = snapshot(root)
    log_before = (run_dir / "train.log").read_text()
    result = run_cli(
        "train.py", f"resume={run_dir}", "data.corpus=text_file", f"data.path={files / 'other.txt'}"
    )
    after = snapshot(root)
    failed.unlink(missing_ok=True)  # the workspace's run is shared with other tests
    assert_one_line_error(result, "vocabulary")
    assert after.get(str(failed)) == before[str(failed)]  # still failed, as it was
    log = str(run_dir / "train.log")
    assert {k: v for k, v in after.items() if k in before and k != log} == {
        k: v for k, v in before.items() if k != log
    }
    assert (
        (run_dir / "train.log").read_text().startswith(log_before)
    )  # the log was appended to, not rewritten


GENERATE_CASES = {
    "missing checkpoint": (["ckpt_path={files}/nope.ckpt"], ["ckpt_path=", "nope.ckpt", "no such file"]),
    "truncated checkpoint": (
        ["ckpt_path={files}/truncated.ckpt"],
        ["truncated.ckpt", "not a readable checkpoint"],
    ),
    "not a checkpoint": (["ckpt_path={files}/notes.ckpt"], ["notes.ckpt", "not a readable checkpoint"]),
    "no checkpoints in dir": (["ckpt_path={files}"], ["ckpt_path=", "no checkpoints"]),
    "empty prompt": (["ckpt_path={run}", "prompt="], ["prompt=", "empty"]),
    "unknown characters": (["ckpt_path={run}", "prompt=The ZEBRA"], ["prompt=", "never saw", "'BERZ'"]),
    "negative tokens": (["ckpt_path={run}", "max_new_tokens=-1"], ["max_new_tokens=-1", ">= 0"]),
    "top_k too large": (["ckpt_path={run}", "top_k=1000"], ["top_k=1000", "vocabulary size"]),
    "top_p zero": (["ckpt_path={run}", "top_p=0"], ["top_p=0", "(0, 1]"]),
    "top_p above one": (["ckpt_path={run}", "top_p=1.5"], ["top_p=1.5", "(0, 1]"]),
    "no checkpoint given": ([], ["ckpt_path", "required"]),
    "a number for a prompt": (
        ["ckpt_path={run}", "prompt=1984"],
        ["prompt=1984 is not text", "prompt=\"'1984'\""],
    ),
    "no such device": (["ckpt_path={run}", "device=gpu"], ["device='gpu'", "no such device", "device=cpu"]),
}


@pytest.mark.parametrize("case", list(GENERATE_CASES))
def test_bad_generation_input_is_one_line(workspace, case):
    root, run_dir, files = workspace
    args, needles = GENERATE_CASES[case]
    args = [a.format(files=files, run=run_dir) for a in args]
    before = snapshot(root)
    assert_one_line_error(run_cli("generate.py", *args), *needles)
    assert snapshot(root) == before


def test_evaluate_refuses_a_truncated_checkpoint_and_a_device_it_has_not(workspace):
    _, run_dir, files = workspace
    assert_one_line_error(run_cli("evaluate.py", f"ckpt_path={files / 'truncated.ckpt'}"), "truncated.ckpt")
    assert_one_line_error(run_cli("evaluate.py", f"ckpt_path={run_dir}", "device=cuda:7"), "device='cuda:7'")


def test_a_new_run_into_a_dir_of_runs_is_refused(workspace):
    root, run_dir, _ = workspace
    before = snapshot(root)
    runs_dir = run_dir.parent.parent  # logs/train/runs: dated dirs of runs
    result = run_cli("train.py", *TINY_RUN, f"hydra.run.dir={runs_dir}")
    assert_one_line_error(result, f"hydra.run.dir={runs_dir} holds other runs (e.g. {runs_dir}/", "a new dir")
    assert snapshot(root) == before


def test_resuming_a_run_whose_saved_config_is_unreadable_is_one_line(workspace, tmp_path):
    _, run_dir, _ = workspace
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("run.lock"))
    (copy / ".hydra" / "config.yaml").write_bytes(b"\x00\xff{[")
    before = snapshot(copy)
    assert_one_line_error(run_cli("train.py", f"resume={copy}"), f"resume={copy}", "cannot be read")
    assert snapshot(copy) == before


class _CreatesFile:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_a_checkpoint_that_would_run_code_is_refused_without_running_it(workspace, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    torch.save(
        {"state_dict": {}, "hyper_parameters": {"model": {}}, "payload": _CreatesFile(marker)},
        evil,
        pickle_protocol=pickle.HIGHEST_PROTOCOL,
    )
    for script in ("generate.py", "evaluate.py"):
        assert_one_line_error(run_cli(script, f"ckpt_path={evil}"), "evil.ckpt", "refused")
    assert not marker.exists()


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    no_warmup = [o for o in TINY_RUN if not o.startswith("scheduler.")]
    result = run_cli(
        "train.py",
        *no_warmup,
        "optimizer.lr=1e6",
        "scheduler=none",
        "trainer.max_steps=200",
        "trainer.checkpoint_every_n_steps=1",
        f"paths.log_dir={tmp_path}",
    )
    assert result.returncode == 1
    error = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(error) == 1 and "non-finite training loss" in error[0] and "lr 1e+06" in error[0]
    (run_dir,) = list((tmp_path / "train" / "runs").glob("*/*"))
    assert json.loads((run_dir / "metrics.json").read_text())["stop_reason"] == "non_finite_loss"
    assert json.loads((run_dir / "failed.json").read_text())["status"] == "failed"
    kept = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert kept["global_step"] >= 1
    assert all(t.isfinite().all() for k, t in kept["state_dict"].items() if k.startswith("model."))


def test_a_batch_too_large_for_memory_is_one_line_and_recorded_as_failed(tmp_path):
    """10^13 windows of 33 tokens: no machine can allocate that, so malloc refuses at once."""
    result = run_cli("train.py", *TINY_RUN, "data.batch_size=10000000000000", f"paths.log_dir={tmp_path}")
    fix = (
        "lower data.batch_size (trainer.accumulate_grad_batches=N keeps the batch per step), data.block_size"
    )
    assert_one_line_error(result, "error: out of memory (tried to allocate ", " GB); " + fix)
    (run_dir,) = list((tmp_path / "train" / "runs").glob("*/*"))
    assert json.loads((run_dir / "failed.json").read_text())["reason"].startswith("out of memory (")


def test_a_gpu_out_of_memory_error_is_one_line_and_other_runtime_errors_are_not_touched():
    from tinytransformer.errors import UserError
    from tinytransformer.runtime.job import out_of_memory_as_user_error

    message = "CUDA out of memory. Tried to allocate 20.00 MiB. GPU 0 has a total capacity of 79.19 GiB"
    refused = r"^out of memory \(tried to allocate 20.00 MiB\); lower data\."
    with pytest.raises(UserError, match=refused), out_of_memory_as_user_error():
        raise torch.OutOfMemoryError(message)
    with pytest.raises(RuntimeError, match="^shape mismatch$"), out_of_memory_as_user_error():
        raise RuntimeError("shape mismatch")
