"""`hydra/launcher=resumable_submitit_local | resumable_submitit_slurm`: hydra-submitit-launcher's launchers,
whose jobs skip themselves when a re-run of the sweep finds them done."""

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, run_job, setup_globals
from hydra_plugins.hydra_submitit_launcher.config import LocalQueueConf, SlurmQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher

from hydra_plugins.tinytransformer_launchers.resumable import job_config, register_launcher, skipped_job

log = logging.getLogger(__name__)
MODULE = "hydra_plugins.tinytransformer_launchers.submitit_launchers"


@dataclass
class ResumableLocalConf(LocalQueueConf):
    _target_: str = f"{MODULE}.ResumableLocalLauncher"
    skip_failed: bool = False  # true: a job whose dir has failed.json is not run again either


@dataclass
class ResumableSlurmConf(SlurmQueueConf):
    _target_: str = f"{MODULE}.ResumableSlurmLauncher"
    skip_failed: bool = False


register_launcher("resumable_submitit_local", ResumableLocalConf)
register_launcher("resumable_submitit_slurm", ResumableSlurmConf)


class ResumableSubmititLauncher(BaseSubmititLauncher):
    def __init__(self, skip_failed: bool = False, **params: Any) -> None:
        super().__init__(**params)  # every other key is submitit's
        self.skip_failed = skip_failed

    def __call__(
        self,
        sweep_overrides: list[str],
        job_dir_key: str,
        job_num: int,
        job_id: str,
        singleton_state: dict[type, Singleton],
    ) -> JobReturn:
        """BaseSubmititLauncher.__call__ (hydra-submitit-launcher 1.2), run inside the submitted job (a local
        process, or a SLURM job), but a job done before returns at once: on SLURM it starts, finds its dir
        finished and exits without touching it."""
        import submitit

        assert self.config is not None and self.hydra_context is not None and self.task_function is not None
        Singleton.set_state(singleton_state)
        setup_globals()
        sweep_config = job_config(self, sweep_overrides, job_num, submitit.JobEnvironment().job_id)
        skipped = skipped_job(sweep_config, self.skip_failed)
        return skipped or run_job(
            hydra_context=self.hydra_context,
            task_function=self.task_function,
            config=sweep_config,
            job_dir_key=job_dir_key,
            job_subdir_key="hydra.sweep.subdir",
        )

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        returns = super().launch(job_overrides, initial_job_idx)
        for job in returns:  # the jobs' own output goes to .submitit/: say here which were skipped
            if getattr(job, "line", None):  # a SkippedJob
                log.info(job.line)
        return returns


class ResumableLocalLauncher(ResumableSubmititLauncher):
    _EXECUTOR = "local"


class ResumableSlurmLauncher(ResumableSubmititLauncher):
    _EXECUTOR = "slurm"
