"""The experiment store: every run, its epochs, its sampled steps and every step's LR.

    from adatune.store import open_store
    with open_store("adatune.db") as store:          # or any SQLAlchemy URL
        run_id = store.create_run(new_run)
        store.record_epoch(run_id, epoch_record, step_records, lrs=every_step_lr)
        store.finish_run(run_id, "completed", summary={"alpha": 1e-4})
        detail = store.get_run(run_id)
        lrs = store.get_step_lrs(run_id)                  # the LR of every step, per epoch

Rows come back as the frozen records of :mod:`adatune.store.records`.
"""

from adatune.store.connection import resolve_url
from adatune.store.migrate import VERSION_TABLE, SchemaState, inspect_store, upgrade_store
from adatune.store.records import (
    RUN_KINDS,
    RUN_STATUSES,
    EpochLRs,
    EpochRecord,
    NewRun,
    RunDetail,
    RunRecord,
    StepRecord,
)
from adatune.store.repository import STALE_AFTER_S, Store, open_store

__all__ = [
    "RUN_KINDS",
    "RUN_STATUSES",
    "STALE_AFTER_S",
    "VERSION_TABLE",
    "EpochLRs",
    "EpochRecord",
    "NewRun",
    "RunDetail",
    "RunRecord",
    "SchemaState",
    "StepRecord",
    "Store",
    "inspect_store",
    "open_store",
    "resolve_url",
    "upgrade_store",
]
