"""`hydra/launcher=resumable_basic`: Hydra's basic launcher (jobs one after another in this process), which
skips the jobs a re-run of the sweep finds done."""

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra.core.utils import JobReturn, configure_log, filter_overrides, run_job, setup_globals

from hydra_plugins.tinytransformer_launchers.resumable import (
    compose_once,
    job_config,
    register_launcher,
    skipped_job,
)

log = logging.getLogger(__name__)


@dataclass
class ResumableBasicLauncherConf:
    _target_: str = "hydra_plugins.tinytransformer_launchers.basic.ResumableBasicLauncher"
    skip_failed: bool = False  # true: a job whose dir has failed.json is not run again either


register_launcher("resumable_basic", ResumableBasicLauncherConf)


class ResumableBasicLauncher(BasicLauncher):
    def __init__(self, skip_failed: bool = False) -> None:
        super().__init__()
        self.skip_failed = skip_failed

    def setup(self, *, hydra_context, task_function, config) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        compose_once(hydra_context)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        """BasicLauncher.launch (hydra-core 1.3), but a job done before is skipped before run_job, which
        would rewrite its .hydra/ files and open its log."""
        assert self.config is not None and self.hydra_context is not None and self.task_function is not None
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        log.info(f"Launching {len(job_overrides)} jobs locally")
        returns: list[JobReturn] = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            sweep_config = job_config(self, overrides, idx)
            skipped = skipped_job(sweep_config, self.skip_failed)
            if skipped:
                log.info(skipped.line)
                returns.append(skipped)
                continue
            returns.append(
                run_job(
                    hydra_context=self.hydra_context,
                    task_function=self.task_function,
                    config=sweep_config,
                    job_dir_key="hydra.sweep.dir",
                    job_subdir_key="hydra.sweep.subdir",
                )
            )
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return returns
