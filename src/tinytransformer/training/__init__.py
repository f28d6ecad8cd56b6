"""Training, the core a researcher reads: the LightningModule (step, loss, regularizer hooks, metrics),
regularizers, optimizers and schedules, and the callbacks of the training itself."""
