"""A template, not an app: a new model or regularizer is one file plus one YAML, and an optimizer from
torch.optim or an LR scheduler from torch.optim.lr_scheduler one YAML, all outside src/ (tests/extensions/);
each trains, resumes exactly, generates, evaluates, and shows up in compare_runs and the hparams."""

import json
import re
import shlex
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
from tests.conftest import TINY_RUN, compose_train, run_cli

from tinytransformer.runtime.cli import ROOT
from tinytransformer.runtime.recipe import train

EXTENSIONS = Path(__file__).parent / "extensions"
ON_PATH = {"PYTHONPATH": str(EXTENSIONS)}  # gru_lm, my_regularizers
SEARCH_PATH = f"hydra.searchpath=[file://{EXTENSIONS / 'conf'}]"
BASE = [*(o for o in TINY_RUN if not o.startswith(("model=", "scheduler."))), SEARCH_PATH, "test=false"]
# The same cosine schedule for a run stopped at 20 steps and one of 40.
COSINE = ["scheduler.warmup_steps=5", "scheduler.total_steps=40"]
# What each extension is chosen by, and where its checkpoint holds its spec.
CHOICES = {
    "model": (["model=gru", *COSINE], ("model",)),
    "optimizer": (["model=tiny", "optimizer=sgd", *COSINE], ("optimizer",)),
    "optimizer by role": (["model=tiny", "optimizer=hybrid", *COSINE], ("optimizer",)),
    "optimizer by role, constant lr": (["model=tiny", "optimizer=hybrid", "scheduler=none"], ("optimizer",)),
    "regularizer": (
        ["model=tiny", "regularization=confidence_penalty", *COSINE],
        ("regularizers", "confidence_penalty"),
    ),
    "scheduler": (["model=tiny", "scheduler=step", "scheduler.step_size=10"], ("scheduler",)),
}
TARGETS = {
    "model": "gru_lm.GRULanguageModel",
    "optimizer": "torch.optim.SGD",
    "optimizer by role": "hybrid_optim.MuonAdamW",
    "optimizer by role, constant lr": "hybrid_optim.MuonAdamW",
    "regularizer": "my_regularizers.ConfidencePenalty",
    "scheduler": "torch.optim.lr_scheduler.StepLR",
}
FIXTURE = Path(__file__).parent / "fixtures" / "checkpoint-14a602d.ckpt"  # written by main at 14a602d


def only_run(log_dir: Path) -> Path:
    (run,) = log_dir.glob("train/runs/*/*")
    return run


@pytest.fixture(scope="module", params=list(CHOICES))
def runs(request, tmp_path_factory) -> tuple[str, Path, Path]:
    """(the extension, a 40-step run with it, one stopped at 20 steps and resumed to 40), trained in this
    process (docs/extending.md's commands, run by a test below, do it through the command line)."""
    choice = CHOICES[request.param][0]
    whole, halves = tmp_path_factory.mktemp("whole"), tmp_path_factory.mktemp("halves")
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(EXTENSIONS))  # gru_lm, my_regularizers: outside src/
        for out, steps in ((whole, 40), (halves, 20)):
            train(compose_train([*BASE, *choice, f"trainer.max_steps={steps}"], out), out)
        last = halves / "checkpoints" / "last.ckpt"
        train(compose_train([*BASE, *choice, "trainer.max_steps=40"], halves), halves, ckpt_path=str(last))
    return request.param, whole, halves


def test_it_trains_and_resumes_exactly(runs):
    extension, whole, resumed = runs
    a, b = (torch.load(r / "checkpoints" / "last.ckpt", weights_only=True) for r in (whole, resumed))
    assert a["global_step"] == b["global_step"] == 40
    spec = a["hyper_parameters"]
    for key in CHOICES[extension][1]:
        spec = spec[key]
    assert spec["_target_"] == TARGETS[extension]  # stored as plain data
    for param, tensor in a["state_dict"].items():
        assert torch.equal(tensor, b["state_dict"][param]), param
    lrs = [[g["lr"] for g in ckpt["optimizer_states"][0]["param_groups"]] for ckpt in (a, b)]
    assert lrs[0] == lrs[1]  # every group's: a hybrid's groups have lrs of their own
    assert json.loads((whole / "metrics.json").read_text())["status"] == "finished"


def logged(run: Path, tag: str) -> dict[int, float]:
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return {e.step: e.value for e in events.Scalars(tag)}


@pytest.mark.parametrize("runs", ["scheduler"], indirect=True)
def test_a_torch_scheduler_named_by_yaml_alone_sets_the_lr_and_resumes_with_its_state(runs):
    _, whole, resumed = runs
    # StepLR(step_size=10, gamma=0.5) over AdamW's lr 0.002: halved every 10 steps. LearningRateMonitor logs
    # the lr of every 10th step (Lightning counts steps from 0 there).
    expected = {9: 2e-3, 19: 1e-3, 29: 5e-4, 39: 2.5e-4}
    assert logged(whole, "lr-AdamW/decay") == pytest.approx(expected, rel=1e-6)
    assert logged(resumed, "lr-AdamW/decay") == pytest.approx(expected, rel=1e-6)  # halves 2, 3: its state
    saved = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["hyper_parameters"]["scheduler"] == {
        "_target_": "torch.optim.lr_scheduler.StepLR",
        "step_size": 10,
        "gamma": 0.5,
    }
    assert saved["lr_schedulers"][0]["last_epoch"] == 40
    assert hparams(whole)["scheduler"] == "StepLR"


def test_it_generates_and_evaluates_from_its_checkpoint_alone(runs):
    _, whole, _ = runs
    sample = run_cli("generate.py", f"ckpt_path={whole}", "prompt=The cat", "max_new_tokens=40", env=ON_PATH)
    assert sample.returncode == 0, sample.stderr[-2000:]
    assert sample.stdout.startswith("The cat") and len(sample.stdout.rstrip("\n")) == len("The cat") + 40
    evaluated = run_cli("evaluate.py", f"ckpt_path={whole}", env=ON_PATH)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    best = json.loads((whole / "metrics.json").read_text())["best_val_loss"]
    assert json.loads(evaluated.stdout)["val/loss"] == pytest.approx(best, rel=1e-5)


def hparams(run: Path) -> dict:
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"tensors": 0})
    events.Reload()
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    values = HParamsPluginData.FromString(content).session_start_info.hparams
    return {k: v.string_value or v.number_value for k, v in values.items()}


def extending_section() -> str:
    return (ROOT / "docs" / "extending.md").read_text()


def test_the_extending_page_shows_every_extension_file_as_it_is():
    shown = set()
    for lang, body in re.findall(r"```(\w+)\n(.*?)```", extending_section(), re.S):
        if lang in ("python", "yaml"):
            path = re.search(r"^# (tests/extensions/\S+?)(:|$)", body, re.M).group(1)
            content = body.split("\n", 1)[1] if lang == "python" else body  # python: a path line first
            assert content == (ROOT / path).read_text(), path
            shown.add(path)
    files = {str(p.relative_to(ROOT)) for p in EXTENSIONS.rglob("*") if p.suffix in (".py", ".yaml")}
    assert shown == files


def test_the_extending_pages_commands_run_and_the_sweep_compares_every_extension(tmp_path):
    """Each command of docs/extending.md, as written (a short run: a few overrides appended)."""
    (commands,) = re.findall(r"```bash\n(.*?)```", extending_section(), re.S)
    small = [*(o for o in TINY_RUN if not o.startswith("model=")), "trainer.max_steps=20", "test=false"]
    small.append(f"paths.log_dir={tmp_path}")
    run_dir = sweep_dir = None
    for line in commands.strip().splitlines():
        filled = line.replace("$PWD", str(ROOT)).replace("<run dir>", str(run_dir))
        words = shlex.split(filled.replace("<sweep dir>", str(sweep_dir)))
        env = dict(w.split("=", 1) for w in words if re.match(r"^[A-Z_]+=", w))
        args = [w for w in words if not re.match(r"^[A-Z_]+=", w)][1:]  # without `python`
        if args[0] == "scripts/train.py":
            args += small
        done = run_cli(args[0].removeprefix("scripts/"), *args[1:], env=env)  # PYTHONPATH too
        assert done.returncode == 0, (line, done.stderr[-2000:])
        runs = sorted(tmp_path.glob("train/runs/*/*"))
        run_dir = runs[-1] if runs else None
        sweep_dir = next(tmp_path.glob("train/multiruns/*/*"), None)
    every = hparams(next(sweep_dir.glob("*_gru,sgd,confidence_penalty")))
    assert (every["model"], every["d_model"], every["optimizer"]) == ("GRULanguageModel", 64, "SGD")
    assert every["scheduler"] == "WarmupCosine"
    assert every["regularizers.confidence_penalty.beta"] == pytest.approx(0.1)
    none = hparams(next(sweep_dir.glob("*_default,adamw,none")))
    assert (
        none.keys() == every.keys() and none["regularizers.confidence_penalty.beta"] == 0
    )  # the same columns
    rows = [line.split("|")[1].strip() for line in done.stdout.splitlines() if line.startswith("| model=")]
    assert sorted(rows) == [
        f"model={m}, optimizer={o}, regularization={r}"
        for m in ("default", "gru")
        for o in ("adamw", "sgd")
        for r in ("confidence_penalty", "none")
    ]


def test_a_model_class_that_cannot_be_imported_or_built_is_one_line(tmp_path):
    for override, needle in (
        ("model._target_=no_such_module.Model", "model._target_=no_such_module.Model: cannot import it"),
        ("+model.depth=3", "model.depth: TinyTransformer takes no argument 'depth'"),
    ):
        done = run_cli("train.py", *TINY_RUN, override, f"paths.log_dir={tmp_path}")
        assert done.returncode == 2 and "Traceback" not in done.stderr
        assert done.stderr.startswith(f"error: {needle}"), done.stderr
    assert not (tmp_path / "train").exists()


def files_of(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("runs", ["optimizer by role"], indirect=True)
def test_an_optimizer_by_role_steps_hidden_matrices_with_muon_and_the_rest_with_adamw(runs):
    _, whole, _ = runs
    saved = torch.load(whole / "checkpoints" / "last.ckpt", weights_only=True)
    names = [k.removeprefix("model.") for k in saved["state_dict"] if k.startswith("model.")]
    matrices, others = (g["params"] for g in saved["optimizer_states"][0]["param_groups"])
    state = saved["optimizer_states"][0]["state"]
    assert [set(state[i]) for i in matrices[:1]] == [{"momentum_buffer"}]  # Muon's
    assert [set(state[i]) for i in others[:1]] == [{"step", "exp_avg", "exp_avg_sq"}]  # AdamW's
    assert len(matrices) + len(others) == len(names)
    assert hparams(whole)["optimizer"] == "MuonAdamW"


def test_an_optimizer_that_refuses_a_parameter_is_one_line_before_any_work(tmp_path):
    muon = ["optimizer._target_=torch.optim.Muon", "~optimizer.betas", "~optimizer.fused"]
    done = run_cli("train.py", *TINY_RUN, *muon, f"paths.log_dir={tmp_path}")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.stderr.strip().splitlines() == [
        "error: optimizer._target_=torch.optim.Muon fails on parameter blocks.0.ln_1.weight (shape (32,)): Muon "
        "only supports 2D parameters whereas we found a parameter with size: torch.Size([32]); if it cannot "
        "take such a parameter, route it to another optimizer with a class whose first argument is "
        "named_parameters (see docs/extending.md)"
    ]
    assert not (tmp_path / "train").exists()


def test_a_checkpoint_an_older_version_wrote_is_refused_in_one_line_and_left_as_it_is():
    """Written by main at 14a602d: no model._target_, no val history."""
    before = FIXTURE.read_bytes()
    for script, extra in (("generate.py", "prompt=The cat"), ("evaluate.py", "splits=[val]")):
        done = run_cli(script, f"ckpt_path={FIXTURE}", extra)
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
        assert done.stderr.strip().splitlines() == [
            f"error: ckpt_path={FIXTURE}: written by an older version of tinytransformer (no model._target_ "
            "or val history); read it with the version that wrote it, or train a new run (the file was left "
            "as it is)"
        ]
    assert FIXTURE.read_bytes() == before


def test_a_run_dir_an_older_version_wrote_is_refused_in_one_line_and_left_as_it_is(tmp_path):
    """Its config has no config_version (and optimizer.name, moved callback paths): it is not resumed."""
    run = tmp_path / "run"
    shutil.copytree(FIXTURE.parent / "run-14a602d", run)
    before = files_of(run)
    done = run_cli("train.py", f"resume={run}", "trainer.max_steps=30")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    current = yaml.safe_load((ROOT / "conf" / "train.yaml").read_text())["config_version"]
    assert isinstance(current, int)
    assert done.stderr.strip().splitlines() == [
        f"error: resume={run}: written by another version of tinytransformer (config_version None; this one "
        f"reads {current}); continue it with the version that wrote it, or start a new run (nothing in it was changed)"
    ]
    assert files_of(run) == before


def test_the_code_map_lists_every_module():
    code_map = (ROOT / "docs" / "code_map.md").read_text()
    package = ROOT / "src" / "tinytransformer"
    modules = [p.relative_to(package) for p in package.rglob("*.py") if p.name != "__init__.py"]

    def listed(module: Path) -> bool:  # by its path, or by its name in the row of its dir
        row = f"`{module.parent.as_posix()}/`"
        return f"`{module.as_posix()}`" in code_map or (row in code_map and f"`{module.name}`" in code_map)

    missing = [m.as_posix() for m in modules if not listed(m)]
    assert not missing, f"add them to docs/code_map.md: {missing}"


def test_a_callback_from_outside_src_joins_the_default_set_by_yaml(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(EXTENSIONS))  # my_callbacks
    overrides = [*BASE, "model=tiny", "callbacks=[default,val_loss_file]", "trainer.max_steps=40"]
    train(compose_train(overrides, tmp_path), tmp_path)
    records = [json.loads(line) for line in (tmp_path / "val_loss.jsonl").read_text().splitlines()]
    metrics = json.loads((tmp_path / "metrics.json").read_text())  # the default set ran beside it
    assert [r["step"] for r in records] == [20, 40]
    assert records[-1]["val_loss"] == pytest.approx(metrics["final_val_loss"])


def test_a_stock_lightning_callback_by_yaml_alone_trains_resumes_and_evaluates(tmp_path):
    every = tmp_path / "checkpoints" / "every_10_steps"
    overrides = [*BASE, "model=tiny", "callbacks=[default,every_10_steps]"]
    train(compose_train([*overrides, "trainer.max_steps=20"], tmp_path), tmp_path)
    assert sorted(p.name for p in every.iterdir()) == ["step=10.ckpt", "step=20.ckpt"]
    resumed = train(
        compose_train([*overrides, "trainer.max_steps=40"], tmp_path),
        tmp_path,
        ckpt_path=str(tmp_path / "checkpoints" / "last.ckpt"),
    )
    assert resumed["steps"] == 40 and resumed["stop_reason"] == "max_steps"
    assert sorted(p.name for p in every.iterdir()) == [f"step={n}.ckpt" for n in (10, 20, 30, 40)]
    evaluated = run_cli("evaluate.py", f"ckpt_path={every / 'step=40.ckpt'}", "splits=[val]")
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    final = json.loads((tmp_path / "metrics.json").read_text())["final_val_loss"]
    assert json.loads(evaluated.stdout)["val/loss"] == pytest.approx(final, rel=1e-5)
