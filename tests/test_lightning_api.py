"""The Lightning internals training/ddp.py relies on (no public API does the job) are still there and behave as
it expects; pyproject.toml pins Lightning's minor version for them. A failure names the changed call."""

import inspect
import re
from importlib.metadata import version

import lightning as L
import pytest
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.strategies.launchers import _MultiProcessingLauncher
from packaging.requirements import Requirement
from packaging.version import Version

from tinytransformer.runtime.cli import ROOT
from tinytransformer.runtime.ddp import SpawnDDPStrategy, _CallbackStateLauncher

USED_BY = "tinytransformer/runtime/ddp.py (SpawnDDPStrategy, _CallbackStateLauncher) uses it"


def signature(function) -> str:
    """`function`'s parameters as written, without annotations: `(self, trainer, extra)`."""
    params = [
        p.replace(annotation=inspect.Parameter.empty) for p in inspect.signature(function).parameters.values()
    ]
    return str(inspect.Signature(params))


def pinned_lightning() -> Requirement:
    (spec,) = re.findall(r'^\s*"(lightning[<>=~!][^"]*)"', (ROOT / "pyproject.toml").read_text(), flags=re.M)
    return Requirement(spec)


def quiet_trainer(**kwargs) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


class CountsBatches(L.Callback):
    """A callback with state: the training batches it saw."""

    def __init__(self):
        self.batches = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.batches += 1

    def state_dict(self):
        return {"batches": self.batches}

    def load_state_dict(self, state_dict):
        self.batches = state_dict["batches"]


def test_the_installed_lightning_is_in_the_minor_version_pyproject_pins():
    pin, installed = pinned_lightning(), Version(version("lightning"))
    assert installed in pin.specifier, f"lightning {installed} is installed, pyproject.toml pins {pin}"
    next_minor = Version(f"{installed.major}.{installed.minor + 1}")
    assert next_minor not in pin.specifier, (
        f"pyproject.toml's {pin} lets Lightning {next_minor} in: pin the minor version, since {USED_BY}"
    )


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        ("__init__", "(self, strategy, start_method='spawn')"),
        ("launch", "(self, function, *args, trainer=None, **kwargs)"),
        ("get_extra_results", "(self, trainer)"),
        ("update_main_process_results", "(self, trainer, extra)"),
    ],
)
def test_the_multiprocessing_launcher_methods_we_override_keep_their_arguments(method, expected):
    seen = signature(getattr(_MultiProcessingLauncher, method))
    assert seen == expected, (
        f"Lightning's _MultiProcessingLauncher.{method} changed from {expected} to {seen}: {USED_BY}"
    )


def test_the_multiprocessing_launcher_sends_back_a_dict_we_can_add_to():
    trainer = quiet_trainer(devices=1, strategy=SpawnDDPStrategy())
    extra = _MultiProcessingLauncher.get_extra_results(trainer.strategy.launcher, trainer)
    assert isinstance(extra, dict) and "callback_metrics_bytes" in extra, (
        f"Lightning's _MultiProcessingLauncher.get_extra_results returned {extra!r}, not a dict of its own "
        f"results: {USED_BY}"
    )


def test_lightning_takes_the_launcher_that_spawn_ddp_strategy_configures():
    assert "_configure_launcher" in vars(DDPStrategy), (
        f"Lightning's DDPStrategy._configure_launcher is gone: {USED_BY} (overrides it)"
    )
    launcher = quiet_trainer(devices=2, strategy=SpawnDDPStrategy()).strategy.launcher
    assert isinstance(launcher, _CallbackStateLauncher), (
        f"Lightning no longer takes its launcher from DDPStrategy._configure_launcher setting "
        f"Strategy._launcher (it took {launcher!r}): {USED_BY}"
    )
    assert getattr(launcher, "procs", None) == [], (
        f"Lightning's _MultiProcessingLauncher.procs is gone (the workers Ctrl-C is handed on to): {USED_BY}"
    )


def test_spawned_workers_send_the_callbacks_state_back_to_the_main_process():
    counter = CountsBatches()
    trainer = quiet_trainer(devices=1, strategy=SpawnDDPStrategy(), max_steps=3, callbacks=[counter])
    trainer.fit(BoringModel())
    assert counter.batches == 3, (
        f"after 3 steps in a spawned worker the main process's callback saw {counter.batches} batches: "
        f"_MultiProcessingLauncher no longer calls get_extra_results in the worker or "
        f"update_main_process_results here. {USED_BY}"
    )
