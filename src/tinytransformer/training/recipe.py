"""The training recipe: config -> data, model, callbacks, loggers, trainer -> fit -> test best -> summary."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Checkpoint, ModelCheckpoint, ProgressBar
from omegaconf import DictConfig

from tinytransformer import hparams
from tinytransformer.checkpoints import load_checkpoint
from tinytransformer.config import to_plain, validate
from tinytransformer.data.datamodule import DataConfig, TextDataModule
from tinytransformer.model import DEFAULT_MODEL
from tinytransformer.runs import FINISHED
from tinytransformer.specs import resolve
from tinytransformer.training.callbacks import RunSummary
from tinytransformer.training.callbacks.processes import log_lightning_via_root
from tinytransformer.training.callbacks.resume import AtomicCheckpointIO
from tinytransformer.training.callbacks.summary import stop_reason
from tinytransformer.training.ddp import launch_settings
from tinytransformer.training.launch import is_rank_zero
from tinytransformer.training.lightning_module import LanguageModel
from tinytransformer.training.optim import optimizer_class, resume_schedule
from tinytransformer.training.regularizers import build_regularizers
from tinytransformer.upgrades import upgrade

log = logging.getLogger(__name__)


class _DropAdverts(logging.Filter):
    """Lightning prints product tips on every run; they are not about the user's run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in str(record.msg)


logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DropAdverts())
log_lightning_via_root()
# Lightning 2.6 calls a torch API that torch 2.13 deprecates, once per run: not the user's concern.
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")


def build_datamodule(cfg: DictConfig, tokenizer_state: dict | None = None) -> TextDataModule:
    data = DataConfig(**to_plain(cfg.data))
    return TextDataModule(data, seed=cfg.seed, tokenizer_state=tokenizer_state)


def build_module(cfg: DictConfig, dm: TextDataModule, ckpt: dict[str, Any] | None = None) -> LanguageModel:
    """The LightningModule `cfg` describes; resuming from the checkpoint `ckpt`, if given."""
    model_cfg = to_plain(cfg.model)
    compile_model = model_cfg.pop("compile", False)
    model_cfg.update(vocab_size=dm.tokenizer.vocab_size, block_size=cfg.data.block_size)
    optimizer = to_plain(cfg.optimizer)
    if optimizer.get("fused"):
        optimizer["fused"] = _fused_supported(cfg.trainer.accelerator)
    schedule = to_plain(cfg.scheduler)
    on_resume = schedule.pop("on_resume", "keep")  # how a resumed run treats the schedule, not part of it
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
    hparams = ckpt["hyper_parameters"]
    schedule, line = resume_schedule(
        hparams["scheduler"], planned, on_resume, hparams["optimizer"]["lr"], ckpt["global_step"]
    )
    if is_rank_zero():
        log.info(line)
    return schedule


def check_components(cfg: DictConfig) -> None:
    """A UserError, before any work, for a model, optimizer or regularizer spec that cannot be built:
    the builders' own checks, with their fallbacks for configs saved before `_target_` keys."""
    model_spec = {k: v for k, v in to_plain(cfg.model).items() if k != "compile"}
    resolve(model_spec, "model", default=DEFAULT_MODEL)
    optimizer_class(to_plain(cfg.optimizer))
    build_regularizers(to_plain(cfg.regularizers) if cfg.get("regularizers") else {}, model=None)


def _fused_supported(accelerator: str) -> bool:
    return accelerator in ("cpu", "gpu", "cuda", "auto")


def build_callbacks(cfg: DictConfig) -> list[L.Callback]:
    """Every callback the config lists (conf/callbacks/default.yaml: a default run's), from its YAML."""
    hparams.register_resolver()  # conf/callbacks/hparams.yaml: `params: ${run_hparams:}`
    return [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]


def on_gpu(accelerator: str) -> bool:
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def auto_precision(accelerator: str) -> str:
    """`trainer.precision=auto`: bf16-mixed where the hardware multiplies bf16 natively, else 32-true.

    That is CUDA GPUs with bf16 (Ampere and later) and CPUs with AMX (Intel Xeon since Sapphire Rapids).
    On nanoGPT's CPU config (2 vCPUs with AMX, torch 2.13) bf16-mixed trains 1.3-1.4x the tokens/s of fp32
    and reaches the same val loss at step 2000 (1.8564, fp32 1.8563); CPUs without AMX would emulate bf16,
    slower.
    """
    if on_gpu(accelerator):
        return "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "32-true"
    return "bf16-mixed" if _cpu_has_amx() else "32-true"


def _cpu_has_amx() -> bool:
    is_supported = getattr(torch.cpu, "_is_amx_tile_supported", None)  # torch's own CPU feature check
    return bool(is_supported and is_supported())


def resolve_precision(cfg: DictConfig) -> None:
    """Replace `auto` by the precision this machine will run, so hparams and summaries name the real one."""
    if cfg.trainer.precision == "auto":
        cfg.trainer.precision = auto_precision(cfg.trainer.accelerator)


def build_trainer(cfg: DictConfig, output_dir: Path, callbacks: list[L.Callback]) -> L.Trainer:
    kwargs = to_plain(cfg.trainer)
    kwargs.pop("checkpoint_every_n_steps")
    if isinstance(kwargs.get("val_check_interval"), int):  # Lightning counts micro-batches; we count steps
        kwargs["val_check_interval"] *= kwargs.get("accumulate_grad_batches", 1)
    threads = kwargs.pop("threads_per_process", None)
    if threads:
        torch.set_num_threads(threads)  # this process; ProcessSetup sets it in every other rank
    loggers = [instantiate(lg) for lg in (cfg.get("logger") or {}).values() if lg is not None]
    # Lightning adds a checkpoint callback and a progress bar of its own unless told not to: a run without
    # ours (`~callbacks.last_checkpoint`, callbacks=none) gets none.
    kwargs.setdefault("enable_checkpointing", any(isinstance(c, Checkpoint) for c in callbacks))
    kwargs.setdefault("enable_progress_bar", any(isinstance(c, ProgressBar) for c in callbacks))
    if on_gpu(kwargs["accelerator"]):
        torch.set_float32_matmul_precision("high")  # TF32 for whatever runs outside bf16 autocast
    launch = launch_settings(kwargs)
    launch["plugins"] = [*launch.get("plugins", []), AtomicCheckpointIO()]
    return L.Trainer(default_root_dir=str(output_dir), callbacks=callbacks, logger=loggers or False, **launch)


def train(cfg: DictConfig, output_dir: str | Path, ckpt_path: str | None = None) -> dict[str, Any]:
    """Train (or resume from `ckpt_path`) as `cfg` says, writing everything under `output_dir`."""
    upgrade(cfg)  # a resumed run dir's config may be older than this code
    validate(cfg)
    resolve_precision(cfg)
    output_dir = Path(output_dir)
    L.seed_everything(cfg.seed, verbose=False)
    # A resumed run keeps its checkpoint's vocabulary (and refuses data with characters outside it).
    ckpt = load_checkpoint(ckpt_path, "resume") if ckpt_path else None
    dm = build_datamodule(cfg, ckpt["hyper_parameters"]["tokenizer"] if ckpt else None)
    dm.setup("fit")
    module = build_module(cfg, dm, ckpt)
    del ckpt  # fit() loads it again: no second copy of the weights is held while training
    trainer = build_trainer(cfg, output_dir, build_callbacks(cfg))
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


def test_best(trainer: L.Trainer, module: LanguageModel, dm: TextDataModule, best: str) -> dict[str, float]:
    """Test the best weights. Loaded by hand: `test(ckpt_path=...)` would also roll back callback state."""
    state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
    module.load_state_dict(state)
    tested = trainer.test(module, datamodule=dm, verbose=False)
    return {k.replace("/", "_"): float(v) for k, v in tested[0].items()}


def best_checkpoint(trainer: L.Trainer) -> str | None:
    best = [
        c.best_model_path for c in trainer.callbacks if isinstance(c, ModelCheckpoint) and c.best_model_path
    ]
    return best[0] if best else None


def format_summary(r: dict[str, Any], output_dir: Path) -> str:
    """The one summary a run ends with."""
    lines = [f"run dir: {output_dir}"]
    if r.get("best_val_loss") is not None:
        line = f"best val loss {r['best_val_loss']:.4f} ({r['best_val_bpc']:.4f} bits/char) at step {r['best_step']}"
        if "entropy_floor_bpc" in r:
            gap = 100 * (r["best_val_bpc"] / r["entropy_floor_bpc"] - 1)
            line += f"; entropy floor {r['entropy_floor_bpc']:.4f} bits/char (+{gap:.1f} %)"
        lines.append(line)
        lines += overfitting_lines(r)
    lines.append(
        f"stopped: {r.get('stop_reason', 'unknown')} after {r.get('steps', 0)} steps"
        + (f", {r['tokens_per_s']:,.0f} tokens/s" if "tokens_per_s" in r else "")
    )
    if r.get("world_size", 1) > 1:
        world, batch = r["world_size"], r["effective_batch_size"]
        lines.append(f"batch: {batch // world} windows per process x {world} processes = {batch} per step")
    if "best_ckpt_path" in r:
        lines.append(f"best checkpoint: {r['best_ckpt_path']}")
    lines.append(f"tensorboard --logdir {output_dir}")
    return "\n".join(lines)


def overfitting_lines(r: dict[str, Any]) -> list[str]:
    """Signs of overfitting: val loss rose after its best step; train text predicted below the entropy floor."""
    lines = []
    best, final = r["best_val_loss"], r.get("final_val_loss")
    # More than 2 %: not the noise of a converged run's val loss.
    if final is not None and r.get("steps", 0) > r["best_step"] and final - best > 0.02 * best:
        line = f"val loss rose {final - best:.2f} after its best step {r['best_step']} ({best:.4f} -> {final:.4f})"
        if "final_train_loss" in r:
            line += f" while train loss fell to {r['final_train_loss']:.4f}"
        lines.append(line + " (overfitting)")
    floor, train_bpc = r.get("entropy_floor_bpc"), r.get("final_train_bpc")
    if floor is not None and train_bpc is not None and train_bpc < floor:
        lines.append(
            f"train {train_bpc:.4f} bits/char is below the entropy floor, which no model reaches on unseen "
            "text: the model memorized its training text"
        )
    return lines
