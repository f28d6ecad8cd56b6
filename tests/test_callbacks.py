"""Every callback is built from its YAML in conf/callbacks/: the default set drops one by one, or all."""

import json
from types import SimpleNamespace

import yaml
from tests.conftest import TINY_RUN, compose_train

from tinytransformer.runtime import recipe
from tinytransformer.runtime.callbacks import RunSummary
from tinytransformer.runtime.cli import CONFIG_DIR
from tinytransformer.runtime.recipe import train

CALLBACKS = CONFIG_DIR / "callbacks"
QUICK = [*TINY_RUN, "trainer.max_steps=20", "test=false"]
BARE = [*(o for o in QUICK if not o.startswith("callbacks.")), "callbacks=none"]


def built_callbacks(monkeypatch) -> list:
    built, build_trainer = [], recipe.build_trainer

    def recording(cfg, output_dir, callbacks):
        built.extend(callbacks)
        return build_trainer(cfg, output_dir, callbacks)

    monkeypatch.setattr(recipe, "build_trainer", recording)
    return built


def test_the_default_set_is_every_callback_yaml_and_each_is_built_from_it(tmp_path, monkeypatch):
    # optuna_pruning: only an Optuna trial runs it (hparams_search=optuna adds it; tests/test_optuna.py).
    files = {p.stem for p in CALLBACKS.glob("*.yaml")} - {"default", "minimal", "none", "optuna_pruning"}
    cfg = compose_train(QUICK, tmp_path)
    assert set(cfg.callbacks) == files  # nothing is built in code beside them
    built = built_callbacks(monkeypatch)
    train(cfg, tmp_path)
    assert sorted(f"{type(c).__module__}.{type(c).__name__}" for c in built) == sorted(
        _defined_in(spec["_target_"]) for spec in cfg.callbacks.values()
    )
    assert (tmp_path / "metrics.json").is_file() and (tmp_path / "checkpoints" / "last.ckpt").is_file()


def _defined_in(target: str) -> str:
    """`pkg.Class` as `module.Class`, the module that defines the class a package re-exports."""
    import importlib

    module, _, name = target.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    return f"{cls.__module__}.{cls.__name__}"


def test_dropping_the_run_summary_or_last_checkpoint_drops_their_files_only(tmp_path):
    results = train(compose_train([*QUICK, "~callbacks.run_summary"], tmp_path / "a"), tmp_path / "a")
    assert (
        not (tmp_path / "a" / "metrics.json").exists()
        and (tmp_path / "a" / "checkpoints" / "last.ckpt").is_file()
    )
    assert (results["steps"], results["stop_reason"], results["status"]) == (20, "max_steps", "finished")
    train(compose_train([*QUICK, "~callbacks.last_checkpoint"], tmp_path / "b"), tmp_path / "b")
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["steps"] == 20
    assert [p.name for p in (tmp_path / "b" / "checkpoints").iterdir()] == ["best-step=20.ckpt"]


def test_callbacks_none_is_a_bare_trainer_without_lightnings_own_checkpoint_or_bar(tmp_path, monkeypatch):
    built = built_callbacks(monkeypatch)
    results = train(compose_train(BARE, tmp_path), tmp_path)
    assert built == [] and results["steps"] == 20
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "metrics.json").exists()


def test_minimal_keeps_the_runs_records_and_default_adds_the_training_rules():
    minimal = yaml.safe_load((CALLBACKS / "minimal.yaml").read_text())["defaults"]
    default = yaml.safe_load((CALLBACKS / "default.yaml").read_text())["defaults"]
    assert default[0] == "minimal" and "_self_" in minimal
    cfg = compose_train(["callbacks=minimal"], CONFIG_DIR)
    assert set(cfg.callbacks) == {n for n in minimal if n != "_self_"}


def test_a_resume_that_fails_as_it_loads_keeps_the_runs_results_in_metrics_json(tmp_path):
    path = tmp_path / "metrics.json"
    earlier = {"status": "interrupted", "steps": 120, "best_val_loss": 1.25, "best_step": 100, "wall_s": 9.0}
    path.write_text(json.dumps(earlier))
    summary = RunSummary(path)  # as a resumed job builds it: its state comes with the checkpoint, later
    summary.on_exception(SimpleNamespace(global_step=0), None, RuntimeError("size mismatch for model.head"))
    written = json.loads(path.read_text())
    assert written == {"status": "failed", "steps": 120, "best_val_loss": 1.25, "best_step": 100} | {
        "stop_reason": "RuntimeError"
    }  # the earlier job's speed is dropped: this job measured none
