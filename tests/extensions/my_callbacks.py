"""A callback from outside src/: any Lightning callback, plus one YAML
(tests/extensions/conf/callbacks/val_loss_file.yaml)."""

import json
from pathlib import Path

import lightning as L


class ValLossFile(L.Callback):
    """Appends each validation's step and val loss to a JSON-lines file."""

    def __init__(self, path: str):
        self.path = Path(path)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        record = {"step": trainer.global_step, "val_loss": float(trainer.callback_metrics["val/loss"])}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
