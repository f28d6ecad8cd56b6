"""`hydra/sweeper=tinytransformer_optuna` (conf/hparams_search/optuna.yaml): an Optuna search whose study lives
in a database, so a killed search continues and several processes work on one study.

Hydra scans this package as it scans tinytransformer_launchers (see that package's docstring): no
`from __future__ import annotations`, no isinstance() with a class from here, and optuna is imported only
when a search runs (the scan runs at every start of train.py).
"""
