"""The training recipe: config -> data, model, callbacks, loggers, trainer -> fit -> test best -> summary."""

from __future__ import annotations

import gc
import logging
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Checkpoint, ModelCheckpoint, ProgressBar
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig

from tinytransformer.data.datamodule import DataConfig, TextDataModule
from tinytransformer.errors import UserError
from tinytransformer.runtime import hparams
from tinytransformer.runtime.callbacks import RunSummary
from tinytransformer.runtime.callbacks.processes import log_lightning_via_root, quiet_lightning_notices
from tinytransformer.runtime.callbacks.summary import stop_reason
from tinytransformer.runtime.checkpoints import load_checkpoint
from tinytransformer.runtime.config import to_plain
from tinytransformer.runtime.ddp import launch_settings
from tinytransformer.runtime.launch import is_rank_zero
from tinytransformer.runtime.precision import on_gpu, resolve_precision
from tinytransformer.runtime.preflight import check
from tinytransformer.runtime.profiler import NullProfiler
from tinytransformer.runtime.report import format_summary
from tinytransformer.runtime.runs import FINISHED, clear_failure, record_latest_config
from tinytransformer.training.callbacks import LastCheckpoint
from tinytransformer.training.callbacks.resume import AtomicCheckpointIO
from tinytransformer.training.lightning_module import CHECKPOINT_LAYOUT, LanguageModel
from tinytransformer.training.optim import resume_schedule, scheduler_spec
from tinytransformer.training.regularizers import needs_mask_token

log = logging.getLogger(__name__)


quiet_lightning_notices()
log_lightning_via_root()


def train(cfg: DictConfig, output_dir: str | Path, ckpt_path: str | None = None) -> dict[str, Any]:
    """Train (or resume from `ckpt_path`) as `cfg` says, writing everything under `output_dir`."""
    check(cfg)  # a sweep's jobs have no command-line pre-flight: every run checks here, before any work
    resolve_precision(cfg)
    output_dir = Path(output_dir)
    L.seed_everything(cfg.seed, verbose=False)
    ckpt = load_checkpoint(ckpt_path, "resume") if ckpt_path else None
    if ckpt and ckpt.get("layout") != CHECKPOINT_LAYOUT:  # a sweep's re-run job too, whatever its config says
        raise UserError(
            f"resume={ckpt['path']}: written by another version of tinytransformer (checkpoint layout "
            f"{ckpt.get('layout')}; this one resumes {CHECKPOINT_LAYOUT}); continue it with the version that "
            "wrote it, or start a new run (the file was left as it is)"
        )
    # A resumed run keeps its checkpoint's vocabulary (and refuses data with characters outside it).
    dm = build_datamodule(cfg, ckpt["hyper_parameters"]["tokenizer"] if ckpt else None)
    dm.setup("fit")
    module = build_module(cfg, dm, ckpt)
    del ckpt  # fit() loads it again: no second copy of the weights is held while training
    if ckpt_path:  # past every refusal: a failed run continued (resumed, or requeued) is no longer failed
        clear_failure(output_dir)
        if cfg.get("resume"):  # and the next resume of it composes from this one's config
            record_latest_config(output_dir)
    trainer = build_trainer(cfg, output_dir, build_callbacks(cfg))
    with setup_objects_frozen():
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path, weights_only=True)
    best = best_checkpoint(trainer)
    summary = next((c for c in trainer.callbacks if isinstance(c, RunSummary)), None)
    # Without a RunSummary (callbacks=none) a run knows only where it stopped.
    results = (
        summary.summary() if summary else {"steps": trainer.global_step, "stop_reason": stop_reason(trainer)}
    )
    if best:
        results["best_ckpt_path"] = best
    if cfg.get("test") and best and cfg.data.test_fraction > 0:
        results.update(test_best(trainer, module, dm, best))
    results["status"] = FINISHED
    if summary:
        summary.static.update(
            {k: v for k, v in results.items() if k.startswith("test_") or k == "best_ckpt_path"}
        )
        summary.state["status"] = FINISHED
        summary.write(trainer)
    if trainer.is_global_zero:
        log.info(format_summary(results, output_dir))
    return results


@contextmanager
def setup_objects_frozen() -> Iterator[None]:
    """Leave the objects made before fit() out of Python's full garbage collections during it.

    ~440k objects (torch, Lightning, Hydra, the data) exist when a fit starts, and each full collection
    walks them all: 115 ms here, 7 times in a default run (0.8 s of its 134 s; 0.2 s frozen). Unfrozen after
    the fit, garbage among them is collected as before; a process that froze objects itself keeps them so.
    """
    frozen_before = gc.get_freeze_count()
    gc.freeze()
    try:
        yield
    finally:
        if not frozen_before:
            gc.unfreeze()


def build_datamodule(cfg: DictConfig, tokenizer_state: dict | None = None) -> TextDataModule:
    data = DataConfig(**to_plain(cfg.data))
    mask_token = needs_mask_token(to_plain(cfg.regularizers) if cfg.get("regularizers") else {})
    return TextDataModule(data, cfg.seed, tokenizer_state, mask_token)


def build_module(cfg: DictConfig, dm: TextDataModule, ckpt: dict[str, Any] | None = None) -> LanguageModel:
    """The LightningModule `cfg` describes; resuming from the checkpoint `ckpt`, if given."""
    model_cfg = to_plain(cfg.model)
    compile_model = model_cfg.pop("compile", False)
    model_cfg.update(vocab_size=dm.tokenizer.vocab_size, block_size=cfg.data.block_size)
    optimizer = to_plain(cfg.optimizer)
    if optimizer.get("fused"):
        # Not under fp16's GradScaler: Lightning leaves a fused optimizer's gradients scaled for clipping.
        fp16 = str(cfg.trainer.precision) in ("16", "16-mixed")
        optimizer["fused"] = cfg.trainer.accelerator in ("cpu", "gpu", "cuda", "auto") and not fp16
    schedule = scheduler_spec(to_plain(cfg.scheduler))
    on_resume = cfg.scheduler.get("on_resume", "keep")  # how a resumed run treats the schedule
    return LanguageModel(
        model=model_cfg,
        optimizer=optimizer,
        scheduler=resumed_schedule(ckpt, schedule, on_resume) if ckpt else schedule,
        tokenizer=dm.tokenizer.to_dict(),
        token_char_lengths=dm.tokenizer.token_char_lengths(),
        data=to_plain(cfg.data),
        seed=cfg.seed,
        compile=compile_model,
        regularizers=to_plain(cfg.regularizers) if cfg.get("regularizers") else {},
    )


def resumed_schedule(ckpt: dict[str, Any], planned: dict[str, Any], on_resume: str) -> dict[str, Any]:
    """The checkpoint's schedule or the `planned` one, as `scheduler.on_resume` says; the run logs which."""
    saved = ckpt["hyper_parameters"]
    schedule, line = resume_schedule(
        saved["scheduler"], planned, on_resume, saved["optimizer"]["lr"], ckpt["global_step"]
    )
    if is_rank_zero():
        log.info(line)
    return schedule


def build_callbacks(cfg: DictConfig) -> list[L.Callback]:
    """Every callback the config lists (conf/callbacks/default.yaml: a default run's), from its YAML.

    LastCheckpoint goes last: Lightning runs checkpoint callbacks after the others, in this order, and
    last.ckpt must hold the other checkpoints' state after a validation (the best file they just wrote).
    """
    hparams.register_resolver()  # conf/callbacks/hparams.yaml: `params: ${run_hparams:}`
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    return sorted(callbacks, key=lambda c: isinstance(c, LastCheckpoint))


def build_trainer(cfg: DictConfig, output_dir: Path, callbacks: list[L.Callback]) -> L.Trainer:
    kwargs = to_plain(cfg.trainer)
    kwargs.pop("checkpoint_every_n_steps")
    if isinstance(kwargs.get("val_check_interval"), int):  # Lightning counts micro-batches; we count steps
        kwargs["val_check_interval"] *= kwargs.get("accumulate_grad_batches", 1)
    threads = kwargs.pop("threads_per_process", None)
    if threads:
        torch.set_num_threads(threads)  # this process; ProcessSetup sets it in every other rank
    _finish_wandb_run()
    loggers = [instantiate(lg) for lg in (cfg.get("logger") or {}).values() if lg is not None]
    # Lightning adds a checkpoint callback and a progress bar of its own unless told not to: a run without
    # ours (`~callbacks.last_checkpoint`, callbacks=none) gets none.
    kwargs.setdefault("enable_checkpointing", any(isinstance(c, Checkpoint) for c in callbacks))
    kwargs.setdefault("enable_progress_bar", any(isinstance(c, ProgressBar) for c in callbacks))
    if not kwargs.get("profiler"):  # none asked for (null, false): Lightning's no-op one, at no cost
        kwargs["profiler"] = NullProfiler()
    if on_gpu(kwargs["accelerator"]):
        torch.set_float32_matmul_precision("high")  # TF32 for whatever runs outside bf16 autocast
    launch = launch_settings(kwargs)
    launch["plugins"] = [*launch.get("plugins", []), AtomicCheckpointIO()]
    return L.Trainer(default_root_dir=str(output_dir), callbacks=callbacks, logger=loggers or False, **launch)


def _finish_wandb_run() -> None:
    """End the W&B run an earlier sweep job of this process left open (Lightning's WandbLogger never does),
    so that this job gets a run of its own, not that one."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish()


class StoppedWhileTesting(Exception):
    """SIGTERM or Ctrl-C during the final test: training had ended and last.ckpt was written, so a resume
    tests again."""

    def __init__(self, signal_name: str):
        super().__init__(f"{signal_name} while testing the best checkpoint")
        self.exit_code = 128 + signal.Signals[signal_name].value


def test_best(trainer: L.Trainer, module: LanguageModel, dm: TextDataModule, best: str) -> dict[str, float]:
    """Test the best weights. Loaded by hand: `test(ckpt_path=...)` would also roll back callback state."""
    state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
    module.load_state_dict(state)
    try:
        tested = trainer.test(module, datamodule=dm, verbose=False)
    except SIGTERMException as err:
        raise StoppedWhileTesting("SIGTERM") from err
    except SystemExit as err:  # how Lightning ends on Ctrl-C: inside its `except KeyboardInterrupt`
        if isinstance(err.__context__, KeyboardInterrupt):
            raise StoppedWhileTesting("SIGINT") from err
        raise
    return {k.replace("/", "_"): float(v) for k, v in tested[0].items()}


def best_checkpoint(trainer: L.Trainer) -> str | None:
    """The file of the lowest val loss (conf/callbacks/best_checkpoint.yaml), if one was written."""
    best = [
        c.best_model_path
        for c in trainer.callbacks
        if isinstance(c, ModelCheckpoint)
        and c.monitor == "val/loss"
        and c.mode == "min"
        and c.best_model_path
    ]
    return best[0] if best else None
