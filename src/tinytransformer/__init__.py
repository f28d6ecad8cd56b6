"""tinytransformer: train small character-level Transformer language models with Lightning + Hydra.

Two rooms:
- the core, what a researcher reads and changes: `model/` (pure PyTorch), `data/` (corpus, tokenizers,
  windows) and `training/` (the LightningModule, its loss and metrics, regularizers, optimizers and
  schedules, the training callbacks);
- `runtime/`, the machinery around a run (config, command line, run dirs, launch and DDP, hparams, MFU):
  ignore it to change the model.
Both use `errors`, `checks`, `specs` and `files`, small leaves that import nothing else of ours; the core
imports nothing from the runtime (tests/test_layers.py). `comparison/` reads finished runs.
"""

__version__ = "0.1.0"
