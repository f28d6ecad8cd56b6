"""Hydra launchers that continue a sweep: re-run in its sweep dir, a sweep skips the jobs that finished.

Hydra instantiates launchers from the `hydra_plugins` namespace package only, and registers their configs
when it scans it: `hydra/launcher=resumable_parallel` (the default, conf/hydra/default.yaml: jobs side by
side), `resumable_basic` (one after another), `resumable_submitit_local` and `resumable_submitit_slurm`
(conf/hydra/launcher/slurm.yaml).

That scan runs every module here: one not imported yet outside sys.modules, one imported already a second
time. So no `from __future__ import annotations` (dataclasses look string annotations up in sys.modules), and
no isinstance() with a class from here (the second run makes new classes).
"""
