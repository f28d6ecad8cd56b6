"""Optuna studies in a database (hparams_search=optuna): the storage that a search's workers and its
trials' training jobs share, and a trial found by its number. Optuna is imported only when called."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from tinytransformer.errors import UserError

if TYPE_CHECKING:
    import optuna

SCHEMA_ATTEMPTS = 5  # workers started together all create the tables of a new database: all but one retry
SQLITE_TIMEOUT_S = 60  # several processes on one sqlite file wait this long for its write lock
PRUNED_AT = "pruned_at_step"  # a trial's user attr: set by the job's pruning callback, read by the sweeper


def open_storage(
    url: str, heartbeat_interval: int | None = None, grace_period: int | None = None, on_stale=None
):
    """Optuna's RDBStorage at a SQLAlchemy URL; a sqlite file's dir is made first.

    With `heartbeat_interval`, a running trial whose heartbeat is older than `grace_period` seconds is
    stale (its process is gone: the search was killed): optuna fails it, then calls `on_stale(study, trial)`.
    """
    import optuna
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError

    try:
        parsed = make_url(url)
    except ArgumentError as err:
        raise UserError(f"hydra.sweeper.storage={url}: not a SQLAlchemy URL ({err})") from None
    engine_kwargs = {}
    if parsed.get_backend_name() == "sqlite":
        if parsed.database:
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}}
    for attempt in range(SCHEMA_ATTEMPTS):
        try:
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat_interval,
                grace_period=grace_period,
                heartbeat_stale_trial_callback=on_stale,
            )
        except (IntegrityError, OperationalError):  # another worker is making the tables: they exist soon
            if attempt == SCHEMA_ATTEMPTS - 1:
                raise
            time.sleep(1)


def trial_id(storage, study_name: str, number: int) -> int:
    """The storage's id of trial `number` of the study."""
    study_id = storage.get_study_id_from_name(study_name)
    return storage.get_trial_id_from_study_id_trial_number(study_id, number)


def trial_of(study: optuna.Study, storage, number: int) -> optuna.Trial:
    """Trial `number` of `study`, to report to and to ask whether to prune, from any process."""
    import optuna

    return optuna.trial.Trial(study, trial_id(storage, study.study_name, number))
