"""The runtime: config and its checks, the command line, run dirs and their locks, the recipe that builds a
run, launch and DDP, hparams, MFU, sweeps. You may ignore this package to change the model, the data, the
loss, a regularizer, an optimizer or a callback: those are the core (model/, data/, training/)."""
