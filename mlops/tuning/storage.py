"""Optuna storages from a settings URL: ``journal:<file>`` (local workers) or an RDB URL (PostgreSQL)."""

from __future__ import annotations

from pathlib import Path

import optuna


def make_storage(url: str) -> optuna.storages.BaseStorage:
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = Path(url.removeprefix("journal:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    engine_kwargs = {"pool_pre_ping": True}
    if url.startswith("postgresql"):
        engine_kwargs |= {"pool_size": 2, "max_overflow": 2}
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
    except Exception as exc:
        raise ConnectionError(
            f"cannot open the Optuna storage {url!r}: {exc}. Check MLOPS_OPTUNA_STORAGE and that the "
            "database server is running."
        ) from exc
