"""A quiet progress bar: one bar over optimizer steps toward max_steps; no bars for validation or test."""

from __future__ import annotations

from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm


class StepProgressBar(TQDMProgressBar):
    """TQDM bar over `max_steps` (the training stream has no epochs), refreshed every `refresh_rate` steps
    (default: about 20 times per run, at most every 50 steps).

    Validation and test passes are short and print their results elsewhere, so they get no bar.
    """

    def __init__(self, refresh_rate: int | None = None):
        super().__init__()
        self.steps_per_refresh = refresh_rate

    def setup(self, trainer, pl_module, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if self.steps_per_refresh is None:
            self.steps_per_refresh = max(1, min(50, trainer.max_steps // 20))

    def _hidden(self) -> Tqdm:
        return Tqdm(disable=True)

    init_sanity_tqdm = init_validation_tqdm = init_test_tqdm = _hidden

    def on_train_epoch_start(self, trainer, *args) -> None:
        self.train_progress_bar.reset(total=trainer.max_steps if trainer.max_steps > 0 else None)
        self.train_progress_bar.initial = trainer.global_step
        self.train_progress_bar.set_description("train")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step % self.steps_per_refresh == 0 or step == trainer.max_steps:
            self.train_progress_bar.n = step
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)
            self.train_progress_bar.refresh()

    def get_metrics(self, trainer, pl_module) -> dict:
        """Lightning's bar metrics plus the last logged train loss, read (one host sync) per refresh."""
        metrics = super().get_metrics(trainer, pl_module)
        loss = trainer.callback_metrics.get("train/loss")
        if loss is not None:
            metrics["train/loss"] = float(loss)
        return metrics

    def on_validation_batch_end(self, *args, **kwargs) -> None:
        pass

    def on_validation_end(self, trainer, pl_module) -> None:
        pass

    def on_test_batch_end(self, *args, **kwargs) -> None:
        pass
