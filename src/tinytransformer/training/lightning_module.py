"""The LightningModule: a language model (TinyTransformer by default), its cross-entropy loss, optimizer,
schedule and metrics."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from tinytransformer.data.batches import IGNORE_INDEX, mix_seed
from tinytransformer.data.tokenizers import tokenizer_from_dict
from tinytransformer.model import build_model
from tinytransformer.training.metrics import LanguageModelMetrics, ValHistory
from tinytransformer.training.optim import build_optimizer, build_scheduler, fast_forward, scheduler_spec
from tinytransformer.training.regularizers import build_regularizers

# What this module's checkpoints hold beyond Lightning's (val_history, train_steps_summed, the sum buffers):
# a run resumes only from a checkpoint of this layout (training.recipe.train refuses another in one line).
CHECKPOINT_LAYOUT = 3


class NonFiniteLoss(Exception):
    """The training loss became NaN or infinite: training stops, the last good checkpoint stays."""

    stop_reason = "non_finite_loss"

    def __init__(self, first_step: int, last_step: int, lr: float, loss: float):
        self.details = (first_step, last_step, lr, loss)
        steps = f"step {last_step}" if first_step >= last_step else f"a step in {first_step}..{last_step}"
        super().__init__(
            f"non-finite training loss ({loss}) at {steps} (lr {lr:.3g}); stopped, keeping the last good "
            "last.ckpt if one was written. Lower optimizer.lr, or clip gradients (trainer.gradient_clip_val)"
        )

    def __reduce__(self):  # pickled from a spawned DDP worker to the main process
        return type(self), self.details


class LanguageModel(L.LightningModule):
    """Next-token prediction. Hyperparameters are plain dicts, so checkpoints load with weights_only=True.

    What callbacks use of it, and nothing else: `model` (the nn.Module), `val_history` (every validation's
    loss: the run's best), `stop(reason)` (end the run after this step; `stop_reason` says why),
    `check_finite()` (raise NonFiniteLoss for a NaN or infinite train loss since the last check) and
    `hparams`.

    Args:
        model: the model's spec, `_target_` (its class) and its arguments, vocab_size and block_size
            included (model.build_model).
        optimizer: the optimizer's spec, `_target_` (its class) and its arguments (optim.build_optimizer).
        scheduler: the LR scheduler's spec, `_target_` (its class, called with the optimizer; None: a
            constant lr) and its arguments (optim.build_scheduler); stepped after every optimizer step.
        tokenizer: the tokenizer's `to_dict()`, so a checkpoint alone can generate text.
        data: the run's data config, so a checkpoint alone can be evaluated on the data it was trained on.
        seed: seeds dropout per training batch, making a resumed run's dropout masks those of an
            uninterrupted one.
        regularizers: specs of the regularizers that need code, by name (tinytransformer.training.regularizers).
    """

    _SUMS = ("_loss_sum", "_bits_sum", "_clipped_sum")  # the per-step sums since the last validation

    def __init__(
        self,
        model: dict[str, Any],
        optimizer: dict[str, Any],
        scheduler: dict[str, Any],
        tokenizer: dict[str, Any],
        token_char_lengths: list[int],
        data: dict[str, Any] | None = None,
        seed: int = 0,
        compile: bool = False,
        regularizers: dict[str, dict[str, Any]] | None = None,
    ):
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.model = build_model(model)
        regularizers = regularizers or {}
        vocabulary = tokenizer_from_dict(tokenizer) if regularizers else None  # for regularizers of ids
        self.regularizers = build_regularizers(regularizers, self.model, vocabulary)
        # Each training batch seeds its own dropout and regularizers' draws.
        self._random_per_batch = model.get("dropout", 0.0) > 0 or len(self.regularizers) > 0
        if compile:
            # In-place compile keeps parameter names (no `_orig_mod.`), so checkpoints load either way.
            self.model.compile()
        self.val_metrics = LanguageModelMetrics(token_char_lengths)
        self._one_char_per_token = all(length == 1 for length in token_char_lengths)
        self.test_metrics = LanguageModelMetrics(token_char_lengths)
        self.val_history = ValHistory()  # the one record of the best val loss; saved in checkpoints
        # The train loss and its bits/char (comparable with a corpus's entropy floor) summed on the device
        # since the last validation, so that their means are logged with no host sync per step. Buffers, so
        # checkpoints hold them (and on_save_checkpoint the count): a resumed run's means are an
        # uninterrupted one's. A NaN or infinite loss makes the loss sum non-finite: check_finite() reads it.
        self.register_buffer("_loss_sum", torch.zeros(()))
        self.register_buffer("_bits_sum", torch.zeros(()))  # tokens of several chars; else loss / ln 2
        self.register_buffer("_clipped_sum", torch.zeros(()))  # optimizer steps whose gradient was clipped
        self._steps_summed = 0
        # Each rank's own sums: DDP would copy rank 0's buffers over the others' before every forward.
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(self, list(self._SUMS))
        self._finite_until_step = 0  # the last step at which the loss sum was seen finite
        self.stop_reason: str | None = None  # set by stop(): why a callback ended the run

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.model(idx)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self._random_per_batch:  # seeded by the batch's index in the run's stream (the datamodule's)
            accumulate = self.trainer.accumulate_grad_batches
            # batch_idx % accumulate: Lightning's count of the micro-batch within the step (restored on resume)
            index = self.global_step * accumulate + batch_idx % accumulate
            torch.manual_seed(mix_seed(self.hparams.seed, self.global_rank, index, 1))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        for regularizer in self.regularizers:
            x, y = regularizer.inputs(x, y)
        logits = self(x)
        loss = self.loss(logits, y)
        for regularizer in self.regularizers:
            loss = regularizer.loss(logits, y, loss)
        self._loss_sum += loss.detach()
        if not self._one_char_per_token:  # else bits/char is the loss in bits
            chars = self.val_metrics.char_lengths[y].sum()  # training targets are never IGNORE_INDEX
            self._bits_sum += loss.detach() * y.numel() / (math.log(2) * chars.clamp_min(1))
        self._steps_summed += 1
        if self._logging_step():
            # Not prog_bar=True: Lightning would then call .item() on it after every step until the next
            # log, a host sync per step on a GPU.
            self.log("train/loss", loss)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.global_step % self.trainer.log_every_n_steps == 0:  # the finite-loss stop, on log steps
            self.check_finite()

    def _logging_step(self) -> bool:
        """Whether Lightning writes this step's logs: `self.log` has a real per-call cost (~50 us of Python),
        so step metrics are logged only on the steps that are written (every trainer.log_every_n_steps)."""
        return (self.global_step + 1) % self.trainer.log_every_n_steps == 0

    def configure_gradient_clipping(
        self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None
    ) -> None:
        """Lightning's gradient clipping (trainer.gradient_clip_val; by norm unless
        trainer.gradient_clip_algorithm=value), measured: by norm, the global norm before clipping is logged
        as `train/grad_norm` on log steps, and each validation logs `train/clip_fraction`, the share of the
        optimizer steps since the last one that were clipped. gradient_clip_val 0 measures without
        clipping; null (Lightning's default) does neither; by value, neither is measured. Gradients are unscaled
        here under 16-bit mixed precision (the recipe builds no fused optimizer there, whose gradients
        Lightning would leave scaled), and averaged across processes under DDP. Not `self.clip_gradients`:
        under bf16-mixed it refuses the fused AdamW, which only fp16's gradient scaler would need."""
        if gradient_clip_val is None:
            return
        parameters = [p for group in optimizer.param_groups for p in group["params"]]  # as Lightning clips
        if gradient_clip_algorithm == "value":
            if gradient_clip_val > 0:
                torch.nn.utils.clip_grad_value_(parameters, gradient_clip_val, foreach=True)
            return
        max_norm = gradient_clip_val or math.inf
        norm = torch.nn.utils.clip_grad_norm_(parameters, max_norm, foreach=True)
        self._clipped_sum += norm > max_norm
        if self._logging_step():
            self.log("train/grad_norm", norm)

    def check_finite(self) -> None:
        """Raise NonFiniteLoss if a training loss since the last check was NaN or infinite, on any process.

        Syncs once; with several processes, the loss sums are all-reduced first, so that every rank stops
        together (one that stopped alone would leave the others waiting at their next collective until
        the process group times out). Every rank calls this at the same steps.
        """
        loss_sum = float(self.trainer.strategy.reduce(self._loss_sum.clone(), reduce_op="sum"))
        if not math.isfinite(loss_sum):
            lr = self.trainer.optimizers[0].param_groups[0]["lr"]
            raise NonFiniteLoss(self._finite_until_step + 1, self.global_step, lr, loss_sum)
        self._finite_until_step = self.global_step

    def stop(self, reason: str) -> None:
        """End training after this step, for `reason` (metrics.json's stop_reason): how a callback stops a
        run (sample quality, an Optuna pruner). Lightning validates once more, so the results describe the
        final weights."""
        self.trainer.should_stop = True
        self.stop_reason = reason

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["layout"] = CHECKPOINT_LAYOUT
        checkpoint["val_history"] = [list(record) for record in self.val_history.records]
        checkpoint["train_steps_summed"] = self._steps_summed
        # Every rank saves (rank 0 writes): the sums are saved as the ranks' mean, so that a resume, which
        # restores them on every rank, logs the mean over ranks an uninterrupted run would.
        for name in self._SUMS:
            mean = self.trainer.strategy.reduce(getattr(self, name).clone(), reduce_op="mean")
            checkpoint["state_dict"][name] = mean

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.val_history = ValHistory(checkpoint["val_history"])
        self._steps_summed = checkpoint["train_steps_summed"]
        # A scheduler's state belongs to its schedule: a schedule rebuilt for this config
        # (scheduler.on_resume=rebuild) starts afresh instead, and continue_schedule steps it on.
        saved, planned = checkpoint["hyper_parameters"]["scheduler"], self.hparams.scheduler
        if scheduler_spec(saved) != scheduler_spec(planned):
            checkpoint["lr_schedulers"] = []

    def on_train_start(self) -> None:
        self._finite_until_step = self.global_step  # a resumed run's earlier steps were checked
        if self.global_step > 0:
            self.continue_schedule(self.global_step)

    def continue_schedule(self, step: int) -> None:
        """Set the lr of a run resumed at `step`. Lightning restores the checkpoint's optimizer and scheduler
        state, so a kept schedule goes on as it was. A schedule rebuilt for this config
        (scheduler.on_resume=rebuild) is stepped from its start to `step`, as if the run had followed it
        all along; a constant lr is the configured one, group by group. Both replace the restored lr from
        `step` on."""
        optimizer, scheduler = self.optimizers(use_pl_optimizer=False), self.lr_schedulers()
        if scheduler is None:  # a constant lr: each group's as a new optimizer of this spec sets it
            lrs = [group["lr"] for group in build_optimizer(self.model, self.hparams.optimizer).param_groups]
        elif scheduler.last_epoch == step:  # the checkpoint's own scheduler, restored: it goes on
            return
        else:  # rebuilt: from its lr at step 0 (the restored optimizer holds the checkpoint's lr)
            lrs = scheduler.get_last_lr()
        for group, lr in zip(optimizer.param_groups, lrs, strict=True):
            group["lr"] = lr
        if scheduler is not None:
            fast_forward(scheduler, step)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        with self.full_precision():
            self.val_metrics.update(self(x), y)

    def full_precision(self) -> torch.autocast:
        """Evaluation in fp32 whatever trainer.precision is: val and test metrics then compare across
        precisions and machines, and evaluate.py (fp32) reproduces them exactly."""
        return torch.autocast(self.device.type, enabled=False)

    def on_validation_epoch_end(self) -> None:
        values = self.val_metrics.compute()
        self.val_metrics.reset()
        if self.trainer.sanity_checking:  # a partial pass: only checks that validation runs
            return
        self.val_history.add(self.global_step, float(values["loss"]), float(values["bpc"]))
        self.log_dict({f"val/{k}": v for k, v in values.items()}, prog_bar=False, sync_dist=False)
        self.log("val/loss_best", self.val_history.best[1], prog_bar=True)  # the bar shows it till the next
        if self._steps_summed > 0:
            self.check_finite()  # before the sums restart
            bits_sum = self._loss_sum / math.log(2) if self._one_char_per_token else self._bits_sum
            self.log("train/loss_avg", self._loss_sum / self._steps_summed, sync_dist=True, prog_bar=True)
            self.log("train/bpc_avg", bits_sum / self._steps_summed, sync_dist=True)
            clip = (
                self.trainer.gradient_clip_val is not None and self.trainer.gradient_clip_algorithm != "value"
            )
            if clip:  # counted by norm only; every rank clipped the same averaged gradient
                steps = self._steps_summed / self.trainer.accumulate_grad_batches  # optimizer steps
                self.log("train/clip_fraction", self._clipped_sum / steps)
            for name in self._SUMS:
                getattr(self, name).zero_()
            self._steps_summed = 0

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        with self.full_precision():
            self.test_metrics.update(self(x), y)

    def on_test_epoch_end(self) -> None:
        values = self.test_metrics.compute()
        self.test_metrics.reset()
        self.log_dict({f"test/{k}": v for k, v in values.items()})

    def configure_optimizers(self):
        optimizer = build_optimizer(self.model, self.hparams.optimizer)
        scheduler = build_scheduler(optimizer, self.hparams.scheduler)
        if scheduler is None:  # a constant lr
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
