"""The training layer: the LightningModule, metrics, optimizers, regularizers, callbacks, the recipe and the
launch of several processes."""
