"""The per-epoch write path: Core statements compiled once, run on one DBAPI connection.

``Store.record_epoch`` runs after every epoch of every run, so its cost is
part of training. Going through a SQLAlchemy ``Connection`` costs about a
millisecond of Python per epoch in a training process (result objects, events,
parameter processing, pool checkout), a few percent of a short epoch. Here
each statement is compiled once for the store's dialect (so the SQL is still
SQLAlchemy's, for SQLite and PostgreSQL alike), its type bind processors are
looked up once, and it runs on a DBAPI connection held for the store's
lifetime. The transaction semantics are the engine's: ``BEGIN IMMEDIATE`` on
SQLite, the driver's implicit transaction elsewhere; commit or roll back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.sql import ClauseElement


class Prepared:
    """One Core statement compiled for a dialect, with its parameter order and processors."""

    def __init__(self, statement: ClauseElement, engine: Engine,
                 column_keys: Sequence[str] | None = None) -> None:
        dialect = engine.dialect
        compiled = statement.compile(dialect=dialect, column_keys=list(column_keys or ()))
        self.sql = compiled.string
        self._names: tuple[str, ...] = tuple(compiled.positiontup or ()) if dialect.positional \
            else tuple(compiled.binds)
        self._positional = dialect.positional
        self._keys = {name: compiled.binds[name].key for name in self._names}
        self._processors: dict[str, Callable[[Any], Any]] = {}
        for name in self._names:
            bind_type = compiled.binds[name].type.dialect_impl(dialect)
            processor = bind_type.bind_processor(dialect)
            if processor is not None:
                self._processors[name] = processor

    def params(self, values: Mapping[str, Any]) -> tuple[Any, ...] | dict[str, Any]:
        """DBAPI parameters for ``values`` (keyed by bind/column name)."""
        out = {}
        for name in self._names:
            value = values[self._keys[name]]
            processor = self._processors.get(name)
            out[name] = value if processor is None else processor(value)
        return tuple(out.values()) if self._positional else out


class RawWriter:
    """A DBAPI connection kept open for the hot write path."""

    def __init__(self, engine: Engine, *, begin_sql: str | None) -> None:
        self._engine = engine
        self._begin_sql = begin_sql
        self._connection = None

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        """A cursor inside one transaction: committed on success, rolled back on error.

        Driver errors are re-raised as they come (the caller turns them into
        one line).
        """
        if self._connection is None:
            self._connection = self._engine.raw_connection()
        connection = self._connection
        try:
            cursor = connection.cursor()
            try:
                if self._begin_sql is not None:
                    cursor.execute(self._begin_sql)
                yield cursor
            finally:
                cursor.close()
            connection.commit()
        except BaseException:
            self._abandon()
            raise

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _abandon(self) -> None:
        """Roll back after an error; a connection that cannot even do that is dropped."""
        connection = self._connection
        try:
            connection.rollback()
        except Exception:  # noqa: BLE001 - the original error is the one to report
            self._connection = None
            connection.invalidate()
