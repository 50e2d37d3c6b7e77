"""Optuna storages from a settings URL: ``journal:<file>`` (local workers) or an RDB URL (PostgreSQL)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import optuna

#: called with (study, frozen trial) for each trial whose worker stopped sending heartbeats
StaleTrialCallback = Callable[[optuna.Study, optuna.trial.FrozenTrial], None]


def is_server_database(url: str) -> bool:
    """A database server shared by many machines (PostgreSQL, MySQL), as opposed to a local file."""
    return url.startswith(("postgresql", "mysql"))


def make_storage(
    url: str,
    *,
    pool_size: int = 2,
    max_overflow: int = 2,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    stale_trial_callback: StaleTrialCallback | None = None,
) -> optuna.storages.BaseStorage:
    """Open the storage at ``url``.

    For a database server, ``pool_size`` + ``max_overflow`` bound this process's connections (each
    worker holds its own pool, so the server sees workers x that) and ``pool_pre_ping`` replaces
    connections the server or a proxy dropped. With ``heartbeat_interval`` (seconds) each running
    trial records a heartbeat; one silent for ``grace_period`` is failed by the next worker that looks
    and handed to ``stale_trial_callback`` (e.g. to retry it). Heartbeats are only enabled for server
    databases: SQLite and journal files serve local workers, whose coordinator fails their leftovers.
    """
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = Path(url.removeprefix("journal:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    engine_kwargs = {"pool_pre_ping": True}
    heartbeat: dict = {}
    if is_server_database(url):
        engine_kwargs |= {"pool_size": pool_size, "max_overflow": max_overflow}
        if heartbeat_interval:
            heartbeat = {"heartbeat_interval": heartbeat_interval, "grace_period": grace_period}
            if stale_trial_callback is not None:
                heartbeat[_STALE_CALLBACK_ARG] = stale_trial_callback
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **heartbeat)
    except Exception as exc:
        raise ConnectionError(
            f"cannot open the Optuna storage {url!r}: {exc}. Check MLOPS_OPTUNA_STORAGE and that the "
            "database server is running."
        ) from exc


def dashboard_storage(url: str) -> str:
    """What ``optuna-dashboard`` takes to open the storage at ``url``: a journal's bare file path (the dashboard opens
    an existing file as a journal; it does not know this platform's ``journal:`` prefix), an RDB URL as it is."""
    return url.removeprefix("journal:") if url.startswith("journal:") else url


def retry_callback(max_retry: int | None) -> StaleTrialCallback:
    """Optuna's retry of a stale trial: a WAITING copy (same params, intermediate values kept).

    Optuna 4.9 renamed ``RetryFailedTrialCallback`` to ``RetryHeartbeatStaleTrialCallback`` (the old
    name is a deprecated alias until 6.0); both record the original trial in ``failed_trial``.
    """
    cls = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) or optuna.storages.RetryFailedTrialCallback
    return cls(max_retry=max_retry, inherit_intermediate_values=True)


def retried_trial_number(trial: optuna.trial.FrozenTrial) -> int | None:
    """Number of the first trial of a retry series (``None`` for a trial that is not a retry).

    The key ``RetryHeartbeatStaleTrialCallback.retried_trial_number`` reads, without its warning.
    """
    return trial.system_attrs.get("failed_trial")


def retry_history(trial: optuna.trial.FrozenTrial) -> list[int]:
    """Numbers of the earlier attempts of this trial, oldest first (empty for a first attempt)."""
    return list(trial.system_attrs.get("retry_history", []))


# The RDBStorage keyword for the callback: renamed in Optuna 4.9 (the old one warns until 6.0).
_STALE_CALLBACK_ARG = (
    "heartbeat_stale_trial_callback"
    if hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback")
    else "failed_trial_callback"
)
