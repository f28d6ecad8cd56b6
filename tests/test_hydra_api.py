"""The Hydra internals the resumable launchers rely on are as they expect; pyproject.toml pins hydra-core's
and hydra-submitit-launcher's minor versions for them. A failure names the changed call."""

import inspect
import json
import pickle
import re
import sys
from importlib.metadata import version
from types import SimpleNamespace

from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra._internal.hydra import Hydra
from hydra._internal.utils import _run_hydra, create_config_search_path
from hydra.core.utils import run_job
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, RunMode
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher
from packaging.requirements import Requirement
from packaging.version import Version

from hydra_plugins.tinytransformer_launchers.resumable import compose_once
from tinytransformer.runtime import cli
from tinytransformer.runtime.cli import CONFIG_DIR, ROOT, project_env

USED_BY = "src/hydra_plugins/tinytransformer_launchers/ uses it"
USED_BY_CLI = "runtime/cli.py:known_mode relies on it"


def parameters(function) -> list[str]:
    return list(inspect.signature(function).parameters)


def test_the_installed_versions_are_the_pinned_minors():
    text = (ROOT / "pyproject.toml").read_text()
    for package in ("hydra-core", "hydra-submitit-launcher"):
        (spec,) = re.findall(rf'^\s*"({package}[<>=~!][^"]*)"', text, flags=re.M)
        assert Version(version(package)) in Requirement(spec).specifier, f"{package}: {USED_BY}; check it"


def test_basic_launcher_launch_is_the_one_basic_py_copies():
    source = "".join(inspect.getsource(BasicLauncher.launch).split())  # whitespace aside
    steps = (
        "load_sweep_config(self.config,list(overrides))",
        "sweep_config.hydra.job.num=idx",
        "ret=run_job(",
    )
    for step in steps:
        assert step in source, f"BasicLauncher.launch changed ({step!r} is gone): {USED_BY}"
    assert parameters(run_job) == [
        "task_function", "config", "job_dir_key", "job_subdir_key", "hydra_context", "configure_logging"
    ], f"hydra.core.utils.run_job changed: {USED_BY}"  # fmt: skip


def test_submitit_launcher_runs_each_job_through_call_as_submitit_launchers_copies_it():
    assert parameters(BaseSubmititLauncher.__call__) == [
        "self", "sweep_overrides", "job_dir_key", "job_num", "job_id", "singleton_state"
    ], f"BaseSubmititLauncher.__call__ changed: {USED_BY}"  # fmt: skip
    source = "".join(
        inspect.getsource(BaseSubmititLauncher.__call__).split()
    )  # what submitit_launchers copies
    for step in (
        "load_sweep_config(self.config,sweep_overrides)",
        "job.id=submitit.JobEnvironment().job_id",
        "sweep_config.hydra.job.num=job_num",
        'job_subdir_key="hydra.sweep.subdir"',
    ):
        assert step in source, f"BaseSubmititLauncher.__call__ changed ({step!r} is gone): {USED_BY}"
    assert "map_array(self," in inspect.getsource(BaseSubmititLauncher.launch), USED_BY


def test_a_job_the_sweeper_checked_is_composed_once_and_each_launch_gets_its_own_copy(monkeypatch):
    """compose_once: Hydra's sweepers check each job through hydra_context.config_loader, and the launcher's
    compose of that job reuses the check's config."""
    project_env()
    loader = ConfigLoaderImpl(config_search_path=create_config_search_path(str(CONFIG_DIR)))
    master = loader.load_configuration("train", ["model=tiny"], run_mode=RunMode.MULTIRUN)
    composes = []
    load = ConfigLoaderImpl.load_configuration
    monkeypatch.setattr(
        ConfigLoaderImpl,
        "load_configuration",
        lambda *a, **k: composes.append(a) or load(*a, **k),
    )
    context = HydraContext(loader, callbacks=None)
    compose_once(context)
    sweeper = SimpleNamespace(hydra_context=context, config=master)  # what the check reads of a sweeper
    batch = [["model.dropout=0.1", "seed=1"], ["model.dropout=0.2", "seed=1"]]
    Sweeper.validate_batch_is_legal(sweeper, batch)  # as Hydra's BasicSweeper.sweep does before launching
    assert len(composes) == 2
    launched = [loader.load_sweep_config(master, overrides) for overrides in batch]  # as job_config does
    assert len(composes) == 2 and [c.model.dropout for c in launched] == [0.1, 0.2]
    assert loader.load_sweep_config(master, batch[0]).model.dropout == 0.1  # taken once: composed anew
    assert len(composes) == 3
    Sweeper.validate_batch_is_legal(sweeper, [batch[1]])
    other = loader.load_configuration("train", ["model=small"], run_mode=RunMode.MULTIRUN)
    assert loader.load_sweep_config(other, batch[1]).model.d_model == 128  # another master: its own
    assert len(composes) == 6  # the check, the other master, and the other master's job
    assert pickle.loads(pickle.dumps(loader)).load_sweep_config(master, batch[1]).model.dropout == 0.2


def test_hydra_reads_the_mode_through_get_mode_which_a_run_answers_from_its_preflight(tmp_path, monkeypatch):
    """cli.known_mode: Hydra's main asks Hydra.get_mode, which composes the config only to read hydra.mode;
    a run tells it the mode its preflight composed, so a run composes twice, not three times."""
    source = "".join(inspect.getsource(_run_hydra).split())
    assert "run_mode=hydra.get_mode(config_name=config_name,overrides=overrides)" in source, USED_BY_CLI
    assert "returncfg.hydra.mode" in "".join(inspect.getsource(Hydra.get_mode).split()), USED_BY_CLI
    composes = []
    load = ConfigLoaderImpl.load_configuration
    monkeypatch.setattr(
        ConfigLoaderImpl, "load_configuration", lambda *a, **k: composes.append(a) or load(*a, **k)
    )
    get_mode = Hydra.get_mode
    tiny = ["model=tiny", "data.num_chars=3000", "trainer.max_steps=2", "test=false"]
    monkeypatch.setattr(sys, "argv", ["train.py", *tiny, f"paths.log_dir={tmp_path}"])
    cli.train_main()
    assert len(composes) == 2 and Hydra.get_mode is get_mode  # preflight's and the run's; restored
    (run_dir,) = tmp_path.glob("train/runs/*/*")
    assert json.loads((run_dir / "metrics.json").read_text())["steps"] == 2
