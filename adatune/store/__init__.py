"""The experiment store: every run, its epochs, its sampled steps and every step's LR.

    from adatune.store import open_store
    with open_store("adatune.db") as store:          # or any SQLAlchemy URL
        run_id = store.create_run(new_run)
        store.record_epoch(run_id, epoch_record, step_records, lrs=every_step_lr)
        store.finish_run(run_id, "completed", summary={"alpha": 1e-4})
        detail = store.get_run(run_id)
        lrs = store.get_step_lrs(run_id)                  # the LR of every step, per epoch

Rows come back as the frozen records of :mod:`adatune.store.records`. The
names below are imported on first use, so that the records (plain dataclasses)
can be imported without SQLAlchemy and Alembic.
"""

from adatune._lazy import lazy_exports as _lazy_exports

#: The store a run goes to unless told otherwise: a SQLite file in the current directory.
DEFAULT_STORE = "adatune.db"

_EXPORTS = {
    "RUN_KINDS": "adatune.store.records",
    "RUN_STATUSES": "adatune.store.records",
    "EpochLRs": "adatune.store.records",
    "EpochRecord": "adatune.store.records",
    "NewRun": "adatune.store.records",
    "RunDetail": "adatune.store.records",
    "RunRecord": "adatune.store.records",
    "StepRecord": "adatune.store.records",
    "resolve_url": "adatune.store.connection",
    "VERSION_TABLE": "adatune.store.migrate",
    "SchemaState": "adatune.store.migrate",
    "inspect_store": "adatune.store.migrate",
    "upgrade_store": "adatune.store.migrate",
    "STALE_AFTER_S": "adatune.store.repository",
    "Store": "adatune.store.repository",
    "open_store": "adatune.store.repository",
}

__all__ = ["DEFAULT_STORE", *_EXPORTS]
__getattr__, __dir__ = _lazy_exports(__name__, _EXPORTS)
