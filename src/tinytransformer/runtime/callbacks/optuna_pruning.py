"""`OptunaPruning`: an Optuna trial's job reports its val loss at each validation and stops when the
study's pruner says the trial is bad (hparams_search=optuna adds it: conf/callbacks/optuna_pruning.yaml)."""

from __future__ import annotations

import logging
from typing import Any

import lightning as L

from tinytransformer.runtime.studies import PRUNED_AT, open_storage, trial_of

log = logging.getLogger("tinytransformer")


class OptunaPruning(L.Callback):
    """Reports to trial `trial_number` of the study `study_name` in `storage` (a SQLAlchemy URL)."""

    def __init__(self, storage: str, study_name: str, trial_number: int, pruner: Any = None):
        self.storage_url, self.study_name, self.trial_number = storage, study_name, int(trial_number)
        self.pruner = pruner
        self.trial = None
        self.reported: set[int] = set()

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and trainer.is_global_zero:
            import optuna

            storage = open_storage(self.storage_url)
            pruner = self.pruner or optuna.pruners.NopPruner()  # none: val losses are still reported
            study = optuna.load_study(study_name=self.study_name, storage=storage, pruner=pruner)
            self.trial = trial_of(study, storage, self.trial_number)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        step = trainer.global_step
        if trainer.sanity_checking or step in self.reported:  # the run's final validation may repeat one
            return
        self.reported.add(step)
        prune = False
        if self.trial is not None:  # rank 0
            self.trial.report(float(trainer.callback_metrics["val/loss"]), step)
            prune = trainer.state.fn == "fit" and not trainer.should_stop and self.trial.should_prune()
        if trainer.strategy.broadcast(prune, src=0):
            pl_module.stop("pruned")
            if self.trial is not None:
                self.trial.set_user_attr(PRUNED_AT, step)  # the sweeper tells the trial PRUNED
                log.info(f"trial {self.trial_number} pruned at step {step} by {type(self.pruner).__name__}")
