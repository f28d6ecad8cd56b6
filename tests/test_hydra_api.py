"""The Hydra internals the resumable launchers rely on are as they expect; pyproject.toml pins hydra-core's
and hydra-submitit-launcher's minor versions for them. A failure names the changed call."""

import inspect
import re
from importlib.metadata import version

from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra.core.utils import run_job
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher
from packaging.requirements import Requirement
from packaging.version import Version

from tinytransformer.runtime.cli import ROOT

USED_BY = "src/hydra_plugins/tinytransformer_launchers/ uses it"


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
