"""What code that reads or records runs needs of a store, as typing Protocols.

:class:`~adatune.store.Store` satisfies each of them; they say which part of
it a function uses, so that a stand-in can take its place: the training loop
on a rank other than 0 records into one that writes nothing
(``adatune.running.distributed``), and tests pass their own. Like the
records, this module needs neither SQLAlchemy nor Alembic.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from adatune.store.records import EpochLRs, EpochRecord, RunDetail, RunRecord, StepRecord

__all__ = ["RunCatalog", "RunLog", "RunSource"]


class RunSource(Protocol):
    """Reads a recorded run: what a learned schedule is read from."""

    def get_run(self, run_id: int, *, steps: bool = True) -> RunDetail: ...

    def get_step_lrs(self, run_id: int) -> Sequence[EpochLRs]: ...


class RunLog(Protocol):
    """Where a training run is recorded while it trains."""

    def record_epoch(self, run_id: int, epoch: EpochRecord, steps: Sequence[StepRecord] = (),
                     *, best: bool | None = None,
                     lrs: Sequence[float] | None = None) -> None: ...

    def heartbeat(self, run_id: int) -> None: ...

    def finish_run(self, run_id: int, status: str, *, error: str | None = None,
                   summary: Mapping[str, Any] | None = None) -> None: ...


class RunCatalog(Protocol):
    """Finds runs and their children, and deletes them (``runs delete``)."""

    @property
    def location(self) -> str: ...

    def get_run(self, run_id: int, *, steps: bool = True) -> RunDetail: ...

    def list_runs(self, *, parent_id: int | None = None,
                  ids: Iterable[int] | None = None) -> list[RunRecord]: ...

    def delete_run(self, run_id: int) -> list[RunRecord]: ...
