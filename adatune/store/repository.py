"""The store's repository: writes runs and reads them back as frozen records.

Every public method runs in one transaction (:meth:`Store._session`); ORM rows
are converted to records from :mod:`adatune.store.records` before they leave.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import socket
import sys
import time
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Engine,
    and_,
    bindparam,
    case,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from adatune._version import __version__
from adatune.checks import bounded_text
from adatune.errors import ConfigError, RunBusy, RunNotFound
from adatune.store._prepared import Prepared, RawWriter
from adatune.store.connection import (
    SQLITE_BUSY_TIMEOUT_S,
    WRITE_OPTION,
    check_sqlite_file,
    describe,
    make_engine,
    resolve_url,
    sqlite_path,
    store_error,
    url_secrets,
)
from adatune.store.health import quick_check
from adatune.store.migrate import create_sqlite_store, ensure_current
from adatune.store.orm import EpochRow, ExperimentRow, RunRow, StepRow
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

#: A "running" run whose last heartbeat is older than this is shown as interrupted.
STALE_AFTER_S = 300.0

_EPOCH_FLOATS = (
    "lr",
    "lr_mean",
    "mu",
    "hyper_lr",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "test_loss",
    "test_acc",
    "elapsed_s",
)
_STEP_FLOATS = ("lr", "mu", "hyper_lr", "hypergradient", "train_loss")
_RUN_FLOATS = ("best_val_acc", "test_acc")
_FINAL_STATUSES = tuple(s for s in RUN_STATUSES if s != "running")
#: Run ids are positive 64-bit integers; any other id names no run.
MAX_RUN_ID = 2**63 - 1
#: Statuses a run can be reopened from (``adatune train --resume``).
REOPENABLE = ("interrupted", "failed", "running", "completed")


def open_store(path_or_url: str | os.PathLike[str], *, create: bool = True,
               write: bool = True) -> Store:
    """Open the store at a file path or SQLAlchemy URL, creating it at head if new.

    With ``create=False`` (commands that only read, or delete) a missing store
    is a :class:`StoreError` and nothing is created. ``write=False`` (commands
    that only read) opens an SQLite store read-only, so that a store this user
    cannot write can still be read; it implies ``create=False``. An SQLite store up to
    :data:`~adatune.store.health.QUICK_CHECK_MAX_BYTES` is checked with
    ``PRAGMA quick_check`` first, and a damaged one refused.

    Raises :class:`StoreError` (one line) when the location is a directory, is
    not writable, is not a database, is damaged, or holds a store of another
    schema version.
    """
    url = resolve_url(path_or_url)
    location = describe(url)
    secrets = url_secrets(url)
    path = sqlite_path(url)
    create = create and write
    if path is not None:
        check_sqlite_file(path, create=create, write=write)
        if not path.exists():
            create_sqlite_store(path, location)  # complete, or nothing at all
    engine = make_engine(url, write=write)
    # SQLite can refuse a lock at once, without calling the busy handler, while
    # other processes are creating the same new file (journal-mode switch, lock
    # upgrades). Opening is idempotent, so retry within the busy-timeout budget.
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_S
    try:
        while True:
            try:
                ensure_current(engine, location, create=create)
                break
            except DBAPIError as exc:
                locked = "database is locked" in str(getattr(exc, "orig", exc)).lower()
                if path is None or not locked or time.monotonic() > deadline:
                    raise store_error(exc, location, "open", secrets) from None
                time.sleep(0.05)
        if path is not None:
            quick_check(engine, path, location)
    except BaseException:
        engine.dispose()
        raise
    return Store(engine, url, location)


def _check_id(run_id: int, location: str) -> int:
    """A run id the database can hold; any other is a run that does not exist."""
    if isinstance(run_id, bool) or not isinstance(run_id, int) or not 1 <= run_id <= MAX_RUN_ID:
        raise RunNotFound(f"no run with id {run_id} in {location}")
    return run_id


class Store:
    """A connection to one experiment store. Use :func:`open_store` to get one."""

    def __init__(self, engine: Engine, url: str, location: str) -> None:
        self._engine = engine
        self._url = url
        self._location = location
        self._read = sessionmaker(engine, expire_on_commit=False)
        self._write_engine = engine.execution_options(**{WRITE_OPTION: True})
        self._write = sessionmaker(self._write_engine, expire_on_commit=False)
        self._hot: _HotPath | None = None
        self._secrets = url_secrets(url)

    @property
    def url(self) -> str:
        """The SQLAlchemy URL (with password), e.g. for Optuna's storage."""
        return self._url

    @property
    def location(self) -> str:
        """How messages name this store: the file path, or the URL without password."""
        return self._location

    def __repr__(self) -> str:
        return f"Store({self._location!r})"

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self._hot is not None:
            self._hot.writer.close()
        self._engine.dispose()

    @contextmanager
    def _session(self, *, write: bool) -> Iterator[Session]:
        """The transaction helper: commit on success, roll back on error."""
        maker = self._write if write else self._read
        with self._errors(write), maker() as session, session.begin():
            yield session

    @contextmanager
    def _errors(self, write: bool) -> Iterator[None]:
        try:
            yield
        except IntegrityError:
            raise
        except DBAPIError as exc:
            raise store_error(exc, self._location, "write to" if write else "read",
                              self._secrets) from None
        except self._engine.dialect.loaded_dbapi.Error as exc:  # the raw hot path
            if isinstance(exc, self._engine.dialect.loaded_dbapi.IntegrityError):
                raise IntegrityError(None, None, exc) from None
            raise store_error(exc, self._location, "write to" if write else "read",
                              self._secrets) from None

    # -- writing ---------------------------------------------------------------

    def create_run(self, new_run: NewRun) -> int:
        """Record a new run (status running) and return its id.

        Its names must fit their columns (a name or an experiment up to
        :data:`~adatune.checks.MAX_NAME` characters; a ConfigError naming the
        argument otherwise, before anything is written), and each string of its
        configuration is kept to :data:`~adatune.checks.MAX_TEXT` characters.
        """
        if new_run.kind not in RUN_KINDS:
            raise ValueError(f"Invalid run kind: {new_run.kind!r} (expected one of {RUN_KINDS})")
        _check_names(new_run)
        now = _now()
        with self._session(write=True) as s:
            experiment_id = None
            if new_run.experiment is not None:
                experiment_id = self._experiment_id(s, new_run.experiment, now)
            if new_run.parent_id is not None and s.get(
                    RunRow, _check_id(new_run.parent_id, self._location)) is None:
                raise RunNotFound(f"no run with id {new_run.parent_id} in {self._location}")
            row = RunRow(
                experiment_id=experiment_id,
                parent_id=new_run.parent_id,
                name=new_run.name,
                kind=new_run.kind,
                method=new_run.method,
                optimizer=new_run.optimizer,
                network=new_run.network,
                dataset=new_run.dataset,
                seed=int(new_run.seed),
                config=_dump_json(new_run.config),
                status="running",
                started_at=now,
                heartbeat_at=now,
                epochs=0,
                adatune_version=__version__,
                torch_version=_torch_version(),
                device=new_run.device,
                host=socket.gethostname(),
            )
            s.add(row)
            s.flush()
            return row.id

    @staticmethod
    def _experiment_id(s: Session, name: str, now: dt.datetime) -> int:
        found = s.scalar(select(ExperimentRow.id).where(ExperimentRow.name == name))
        if found is not None:
            return found
        try:
            with s.begin_nested():  # another process may add the same name meanwhile
                row = ExperimentRow(name=name, created_at=now)
                s.add(row)
            return row.id
        except IntegrityError:
            return s.scalar(select(ExperimentRow.id).where(ExperimentRow.name == name))

    def record_epoch(
        self, run_id: int, epoch: EpochRecord, steps: Sequence[StepRecord] = (),
        *, best: bool | None = None, lrs: Sequence[float] | None = None,
    ) -> None:
        """Store one finished epoch and its sampled steps in one transaction.

        Also bumps the heartbeat and updates the epoch count, the best
        validation accuracy, its epoch and the test accuracy at that epoch.
        ``best`` says whether this epoch is the run's best so far (the loop
        decides: by validation loss when there is no accuracy); None judges by
        validation accuracy. ``lrs`` is the LR used at every step of the epoch,
        in order (stored packed, 8 bytes a step; read back with
        :meth:`get_step_lrs`).
        """
        _check_id(run_id, self._location)
        now = _now()
        values, special = _pack(epoch, _EPOCH_FLOATS)
        epoch_row = {"run_id": run_id, "epoch": epoch.epoch, "special_floats": special,
                     "nonfinite_hypergradients": int(epoch.nonfinite_hypergradients),
                     "step_lrs": None if lrs is None else pack_lrs(lrs), **values}
        step_rows = []
        for step in steps:
            values, special = _pack(step, _STEP_FLOATS)
            step_rows.append({"run_id": run_id, "step": step.step, "epoch": step.epoch,
                              "special_floats": special, **values})
        hot = self._hot_path()
        with self._errors(True), hot.writer.transaction() as cursor:
            cursor.execute(hot.select_run.sql, hot.select_run.params({"run_id": run_id}))
            run = cursor.fetchone()
            if run is None:
                raise RunNotFound(f"no run with id {run_id} in {self._location}")
            epochs, best_val_acc, special_floats = run
            cursor.execute(hot.insert_epoch.sql, hot.insert_epoch.params(epoch_row))
            if step_rows:
                cursor.executemany(hot.insert_step.sql,
                                   [hot.insert_step.params(row) for row in step_rows])
            changes: dict[str, Any] = {"run_id": run_id, "epochs": max(epochs, epoch.epoch),
                                       "heartbeat_at": now}
            update_run = hot.touch_run
            val_acc = epoch.val_acc
            if best is None:
                best = (val_acc is not None and math.isfinite(val_acc)
                        and (best_val_acc is None or val_acc > best_val_acc))
            if best:
                test_acc = epoch.test_acc
                floats = _unpack_special(special_floats)
                floats.pop("test_acc", None)
                if test_acc is not None and not math.isfinite(test_acc):
                    floats["test_acc"] = repr(float(test_acc))
                    test_acc = None
                changes.update(
                    best_val_acc=None if val_acc is None else float(val_acc),
                    best_epoch=epoch.epoch,
                    test_acc=None if test_acc is None else float(test_acc),
                    special_floats=json.dumps(floats) if floats else None,
                )
                update_run = hot.improve_run
            cursor.execute(update_run.sql, update_run.params(changes))

    def _hot_path(self) -> _HotPath:
        if self._hot is None:
            self._hot = _HotPath(self._engine)
        return self._hot

    def heartbeat(self, run_id: int) -> None:
        """Tell readers the run is still alive."""
        _check_id(run_id, self._location)
        with self._session(write=True) as s:
            run = s.get(RunRow, run_id)
            if run is None:
                raise RunNotFound(f"no run with id {run_id} in {self._location}")
            run.heartbeat_at = _now()

    def reopen_run(
        self,
        run_id: int,
        *,
        seen: RunRecord | None = None,
        config: Mapping[str, Any] | None = None,
        device: str | None = None,
    ) -> None:
        """Mark a stopped run as running again (``adatune train --resume``).

        With ``seen`` (the run as the caller read it) this is a compare-and-set:
        the run is reopened only if no other process changed it since, judged by
        its heartbeat, which every change of a run stamps anew. Otherwise
        :class:`RunBusy` is raised and nothing changes, so of two processes
        resuming the same run at once exactly one goes on. ``config`` and
        ``device`` replace the recorded ones (options applied on resume).
        """
        _check_id(run_id, self._location)
        now = _now()
        values: dict[str, Any] = {"status": "running", "ended_at": None, "error": None,
                                  "heartbeat_at": now}
        if config is not None:
            values["config"] = _dump_json(dict(config))
        if device is not None:
            values["device"] = device
        query = update(RunRow).where(RunRow.id == run_id).values(**values)
        if seen is not None:
            query = query.where(RunRow.status.in_(REOPENABLE))
            beat = seen.heartbeat_at
            query = query.where(RunRow.heartbeat_at.is_(None) if beat is None
                                else RunRow.heartbeat_at == beat)
        with self._session(write=True) as s:
            if s.execute(query.execution_options(synchronize_session=False)).rowcount == 1:
                return
            if s.get(RunRow, run_id) is None:
                raise RunNotFound(f"no run with id {run_id} in {self._location}")
        raise RunBusy(f"run {run_id} was resumed (or changed) by another process just now; "
                      f"see `adatune runs show {run_id}`")

    def finish_run(
        self,
        run_id: int,
        status: str,
        *,
        error: str | None = None,
        summary: Mapping[str, Any] | None = None,
    ) -> None:
        """Close a run with a final status; ``summary`` (if given) replaces the old one."""
        if status not in _FINAL_STATUSES:
            raise ValueError(
                f"Invalid final status: {status!r} (expected one of {_FINAL_STATUSES})"
            )
        _check_id(run_id, self._location)
        now = _now()
        with self._session(write=True) as s:
            run = s.get(RunRow, run_id)
            if run is None:
                raise RunNotFound(f"no run with id {run_id} in {self._location}")
            run.status = status
            run.ended_at = now
            run.heartbeat_at = now
            run.error = None if error is None else bounded_text(str(error))
            if summary is not None:
                run.summary = _dump_json(dict(summary))

    def delete_run(self, run_id: int) -> list[RunRecord]:
        """Delete a run with its epochs, its steps and its child runs (probes).

        Returns the deleted runs as they were (the run first, then its
        descendants), e.g. to remove their checkpoint folders.
        """
        _check_id(run_id, self._location)
        with self._session(write=True) as s:
            if s.get(RunRow, run_id) is None:
                raise RunNotFound(f"no run with id {run_id} in {self._location}")
            ids = [run_id]
            frontier = [run_id]
            while frontier:
                frontier = list(s.scalars(select(RunRow.id).where(RunRow.parent_id.in_(frontier))))
                ids.extend(frontier)
            rows = {row.id: row for row in s.scalars(select(RunRow).where(RunRow.id.in_(ids)))}
            deleted = [_run_record(rows[i], None, rows[i].status) for i in ids]
            s.execute(delete(StepRow).where(StepRow.run_id.in_(ids)))
            s.execute(delete(EpochRow).where(EpochRow.run_id.in_(ids)))
            for run in reversed(ids):  # children first
                s.execute(delete(RunRow).where(RunRow.id == run))
        return deleted

    # -- reading ---------------------------------------------------------------

    def list_runs(
        self,
        *,
        experiment: str | Iterable[str] | None = None,
        method: str | Iterable[str] | None = None,
        dataset: str | Iterable[str] | None = None,
        status: str | Iterable[str] | None = None,
        kind: str | Iterable[str] | None = None,
        parent_id: int | None = None,
        ids: Iterable[int] | None = None,
    ) -> list[RunRecord]:
        """Runs ordered by id; each filter takes one value or several.

        A running run whose heartbeat is stale is shown (and filtered) as
        "interrupted".
        """
        for name, wanted, allowed in (("status", status, RUN_STATUSES), ("kind", kind, RUN_KINDS)):
            unknown = set() if wanted is None else set(_as_list(wanted)) - set(allowed)
            if unknown:  # ConfigError is a ValueError: one line on the command line
                raise ConfigError(f"unknown {name} {', '.join(map(repr, sorted(unknown)))} "
                                  f"(choose from: {', '.join(allowed)})")
        shown = _shown_status()
        query = (
            select(RunRow, ExperimentRow.name, shown)
            .outerjoin(ExperimentRow, RunRow.experiment_id == ExperimentRow.id)
            .order_by(RunRow.id)
        )
        for column, wanted in (
            (ExperimentRow.name, experiment),
            (RunRow.method, method),
            (RunRow.dataset, dataset),
            (RunRow.kind, kind),
            (shown, status),
        ):
            if wanted is not None:
                query = query.where(column.in_(_as_list(wanted)))
        if parent_id is not None:
            query = query.where(RunRow.parent_id == _in_range(parent_id))
        if ids is not None:  # an id out of range matches no run
            query = query.where(RunRow.id.in_([_in_range(i) for i in ids]))
        with self._session(write=False) as s:
            return [_run_record(row, name, status) for row, name, status in s.execute(query)]

    def get_run(self, run_id: int, *, steps: bool = True) -> RunDetail:
        """One run with its epochs (and its sampled steps unless ``steps=False``)."""
        _check_id(run_id, self._location)
        with self._session(write=False) as s:
            found = s.execute(
                select(RunRow, ExperimentRow.name, _shown_status())
                .outerjoin(ExperimentRow, RunRow.experiment_id == ExperimentRow.id)
                .where(RunRow.id == run_id)
            ).first()
            if found is None:
                raise RunNotFound(f"no run with id {run_id} in {self._location}")
            epochs = tuple(
                _epoch_record(e)
                for e in s.scalars(
                    select(EpochRow).where(EpochRow.run_id == run_id).order_by(EpochRow.epoch)
                )
            )
            step_records: tuple[StepRecord, ...] = ()
            if steps:
                step_records = tuple(
                    _step_record(t)
                    for t in s.scalars(
                        select(StepRow).where(StepRow.run_id == run_id).order_by(StepRow.step)
                    )
                )
            return RunDetail(run=_run_record(*found), epochs=epochs, steps=step_records)

    def get_step_lrs(self, run_id: int) -> tuple[EpochLRs, ...]:
        """The LR of every training step, per recorded epoch, in epoch order.

        An epoch written before per-step LRs were recorded (schema revision
        0002) has ``lrs=None``.
        """
        with self._session(write=False) as s:
            if s.get(RunRow, run_id) is None:
                raise RunNotFound(f"no run with id {run_id} in {self._location}")
            rows = s.execute(
                select(EpochRow.epoch, EpochRow.step_lrs)
                .where(EpochRow.run_id == run_id)
                .order_by(EpochRow.epoch)
            )
            return tuple(EpochLRs(epoch, None if blob is None else unpack_lrs(blob))
                         for epoch, blob in rows)

    def has_runs(self) -> bool:
        """Whether the store holds any run at all (an empty store is not a filter's miss)."""
        with self._session(write=False) as s:
            return s.execute(select(RunRow.id).limit(1)).first() is not None

    def list_experiments(self) -> list[str]:
        """Names of all experiments, sorted."""
        with self._session(write=False) as s:
            return list(s.scalars(select(ExperimentRow.name).order_by(ExperimentRow.name)))


# -- conversions -----------------------------------------------------------------


def _in_range(run_id: int) -> int:
    """``run_id`` if the database can hold it, else 0 (which no run has)."""
    run_id = int(run_id)
    return run_id if 1 <= run_id <= MAX_RUN_ID else 0


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _shown_status() -> ColumnElement[str]:
    cutoff = _now() - dt.timedelta(seconds=STALE_AFTER_S)
    last_seen = func.coalesce(RunRow.heartbeat_at, RunRow.started_at)
    stale = and_(RunRow.status == "running", or_(last_seen < cutoff, last_seen.is_(None)))
    return case((stale, "interrupted"), else_=RunRow.status).label("shown_status")


def _as_list(value: str | Iterable[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _torch_version() -> str:
    try:
        return version("torch")
    except PackageNotFoundError:
        return "unknown"


def _dump_json(value: Mapping[str, Any]) -> str:
    # Text, not a JSON column: Python's JSON keeps NaN/Infinity, which
    # PostgreSQL's json type would reject. Unknown objects are stored as text.
    return json.dumps(_bounded(value), default=lambda v: bounded_text(str(v)), allow_nan=True,
                      sort_keys=True)


def _bounded(value: Any) -> Any:
    """``value`` (JSON-like) with every string kept to :data:`MAX_TEXT` characters."""
    if isinstance(value, str):
        return bounded_text(value)
    if isinstance(value, Mapping):
        return {k if not isinstance(k, str) else bounded_text(k): _bounded(v)
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_bounded(v) for v in value]
    return value


def _check_names(new_run: NewRun) -> None:
    """Each name of a new run fits its column (SQLite would store it whole regardless)."""
    for argument in ("name", "experiment", "kind", "method", "optimizer", "network", "dataset",
                     "device"):
        value = getattr(new_run, argument)
        column = ExperimentRow.name if argument == "experiment" else getattr(RunRow, argument)
        limit = column.type.length
        if value is not None and (not isinstance(value, str) or len(value) > limit):
            shown = f"{len(value)} characters" if isinstance(value, str) \
                else type(value).__name__
            raise ConfigError(f"invalid {argument}: {shown} (a string of at most {limit} "
                              "characters)")


def _load_json(text: str | None) -> dict[str, Any]:
    return json.loads(text) if text else {}


def _pack(record: object, fields: Sequence[str]) -> tuple[dict[str, float | None], str | None]:
    """Column values, with floats SQL cannot keep moved to the ``special_floats`` JSON."""
    values: dict[str, float | None] = {}
    special: dict[str, str] = {}
    for name in fields:
        value = getattr(record, name)
        if value is None:
            values[name] = None
            continue
        value = float(value)
        if math.isfinite(value) and (value != 0.0 or math.copysign(1.0, value) > 0):
            values[name] = value
        else:  # NaN, +/-inf, and -0.0 (which SQLite turns into 0)
            values[name] = None
            special[name] = repr(value)  # "nan", "inf", "-inf", "-0.0"
    return values, (json.dumps(special) if special else None)


def pack_lrs(values: Sequence[float]) -> bytes:
    """Little-endian IEEE-754 doubles, 8 bytes a value (the ``step_lrs`` column)."""
    packed = values if isinstance(values, array) and values.typecode == "d" \
        and sys.byteorder == "little" else array("d", values)
    if sys.byteorder != "little":
        packed.byteswap()
    return packed.tobytes()


def unpack_lrs(blob: bytes) -> tuple[float, ...]:
    """The inverse of :func:`pack_lrs`."""
    if len(blob) % 8:
        raise ValueError(f"Invalid packed LRs: {len(blob)} bytes is not a whole number of doubles")
    values = array("d")
    values.frombytes(bytes(blob))
    if sys.byteorder != "little":
        values.byteswap()
    return tuple(values)


def _unpack_special(text: str | None) -> dict[str, str]:
    return json.loads(text) if text else {}


def _unpack(row: object, fields: Sequence[str]) -> dict[str, float | None]:
    special = _unpack_special(row.special_floats)  # type: ignore[attr-defined]
    return {
        name: float(special[name]) if name in special else getattr(row, name) for name in fields
    }


def _run_record(row: RunRow, experiment: str | None, status: str) -> RunRecord:
    floats = _unpack(row, _RUN_FLOATS)
    return RunRecord(
        id=row.id,
        name=row.name,
        experiment=experiment,
        kind=row.kind,
        method=row.method,
        optimizer=row.optimizer,
        network=row.network,
        dataset=row.dataset,
        seed=row.seed,
        config=_load_json(row.config),
        status=status,
        started_at=row.started_at,
        ended_at=row.ended_at,
        heartbeat_at=row.heartbeat_at,
        epochs=row.epochs,
        best_val_acc=floats["best_val_acc"],
        best_epoch=row.best_epoch,
        test_acc=floats["test_acc"],
        error=row.error,
        adatune_version=row.adatune_version,
        torch_version=row.torch_version,
        device=row.device,
        host=row.host,
        parent_id=row.parent_id,
        summary=_load_json(row.summary),
    )


def _epoch_record(row: EpochRow) -> EpochRecord:
    return EpochRecord(
        epoch=row.epoch,
        nonfinite_hypergradients=row.nonfinite_hypergradients,
        **_unpack(row, _EPOCH_FLOATS),
    )


def _step_record(row: StepRow) -> StepRecord:
    return StepRecord(step=row.step, epoch=row.epoch, **_unpack(row, _STEP_FLOATS))


class _HotPath:
    """``record_epoch``'s statements, compiled once (see :mod:`adatune.store._prepared`)."""

    def __init__(self, engine: Engine) -> None:
        runs, epochs, steps = RunRow.__table__, EpochRow.__table__, StepRow.__table__
        sqlite = engine.dialect.name == "sqlite"
        self.writer = RawWriter(engine, begin_sql="BEGIN IMMEDIATE" if sqlite else None)
        self.select_run = Prepared(
            select(runs.c.epochs, runs.c.best_val_acc, runs.c.special_floats)
            .where(runs.c.id == bindparam("run_id"))
            .with_for_update(),
            engine,
        )
        epoch_keys = ("run_id", "epoch", "special_floats", "nonfinite_hypergradients",
                      "step_lrs", *_EPOCH_FLOATS)
        self.insert_epoch = Prepared(insert(epochs), engine, epoch_keys)
        step_keys = ("run_id", "step", "epoch", "special_floats", *_STEP_FLOATS)
        self.insert_step = Prepared(insert(steps), engine, step_keys)
        where_run = runs.c.id == bindparam("run_id")
        self.touch_run = Prepared(update(runs).where(where_run), engine,
                                  ("epochs", "heartbeat_at"))
        self.improve_run = Prepared(
            update(runs).where(where_run), engine,
            ("epochs", "heartbeat_at", "best_val_acc", "best_epoch", "test_acc",
             "special_floats"),
        )


__all__ = ["MAX_RUN_ID", "STALE_AFTER_S", "Store", "open_store"]

