"""SQLAlchemy ORM models of the experiment store.

These classes never leave :mod:`adatune.store`: the repository converts every
row into a frozen record from :mod:`adatune.store.records`.

The schema itself is owned by the Alembic revisions in ``migrations/``; these
models must describe exactly what the newest revision creates (a test compares
the two).

Floats: SQL columns cannot hold NaN and +/-inf portably (SQLite turns NaN into
NULL). A non-finite value is therefore stored as NULL in its column and named
in the row's ``special_floats`` column (JSON, e.g. ``{"val_loss": "nan"}``),
which stays NULL for the usual all-finite row. Finite values stay ordinary
numbers, so the database can still sort and filter on them.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    BigInteger,
    Double,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import DateTime, TypeDecorator

TABLE_PREFIX = "adatune_"


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Aware UTC datetimes, stored as naive UTC (portable across backends)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"Invalid datetime (naive, expected aware UTC): {value!r}")
        return value.astimezone(dt.timezone.utc).replace(tzinfo=None)

    def process_result_value(
        self, value: dt.datetime | None, dialect: Dialect
    ) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_name)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class ExperimentRow(Base):
    __tablename__ = TABLE_PREFIX + "experiments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(255), nullable=False)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), nullable=False)

    __table_args__ = (UniqueConstraint("name"),)


class RunRow(Base):
    __tablename__ = TABLE_PREFIX + "runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    experiment_id: Mapped[int | None] = mapped_column(
        Integer, ForeignKey(ExperimentRow.id, ondelete="SET NULL"), nullable=True
    )
    parent_id: Mapped[int | None] = mapped_column(
        Integer, ForeignKey(TABLE_PREFIX + "runs.id", ondelete="CASCADE"), nullable=True
    )
    name: Mapped[str | None] = mapped_column(String(255), nullable=True)
    kind: Mapped[str] = mapped_column(String(32), nullable=False)
    method: Mapped[str] = mapped_column(String(64), nullable=False)
    optimizer: Mapped[str] = mapped_column(String(64), nullable=False)
    network: Mapped[str] = mapped_column(String(64), nullable=False)
    dataset: Mapped[str] = mapped_column(String(64), nullable=False)
    seed: Mapped[int] = mapped_column(BigInteger, nullable=False)
    config: Mapped[str] = mapped_column(Text, nullable=False)  # JSON text
    status: Mapped[str] = mapped_column(String(32), nullable=False)
    started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), nullable=False)
    ended_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    epochs: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    best_val_acc: Mapped[float | None] = mapped_column(Double(), nullable=True)
    best_epoch: Mapped[int | None] = mapped_column(Integer, nullable=True)
    test_acc: Mapped[float | None] = mapped_column(Double(), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    adatune_version: Mapped[str] = mapped_column(String(64), nullable=False)
    torch_version: Mapped[str] = mapped_column(String(64), nullable=False)
    device: Mapped[str | None] = mapped_column(String(64), nullable=True)
    host: Mapped[str | None] = mapped_column(String(255), nullable=True)
    summary: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON text
    special_floats: Mapped[str | None] = mapped_column(Text, nullable=True)

    __table_args__ = tuple(
        Index(None, column)
        for column in ("experiment_id", "parent_id", "status", "method", "dataset")
    )


class EpochRow(Base):
    __tablename__ = TABLE_PREFIX + "epochs"

    run_id: Mapped[int] = mapped_column(
        Integer, ForeignKey(RunRow.id, ondelete="CASCADE"), primary_key=True
    )
    epoch: Mapped[int] = mapped_column(Integer, primary_key=True)
    lr: Mapped[float | None] = mapped_column(Double(), nullable=True)
    lr_mean: Mapped[float | None] = mapped_column(Double(), nullable=True)
    mu: Mapped[float | None] = mapped_column(Double(), nullable=True)
    hyper_lr: Mapped[float | None] = mapped_column(Double(), nullable=True)
    train_loss: Mapped[float | None] = mapped_column(Double(), nullable=True)
    train_acc: Mapped[float | None] = mapped_column(Double(), nullable=True)
    val_loss: Mapped[float | None] = mapped_column(Double(), nullable=True)
    val_acc: Mapped[float | None] = mapped_column(Double(), nullable=True)
    test_loss: Mapped[float | None] = mapped_column(Double(), nullable=True)
    test_acc: Mapped[float | None] = mapped_column(Double(), nullable=True)
    elapsed_s: Mapped[float | None] = mapped_column(Double(), nullable=True)
    nonfinite_hypergradients: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    special_floats: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The LR of every step of the epoch, packed (see repository.pack_lrs); NULL in
    # rows written before revision 0002. Deferred: only get_step_lrs reads it.
    step_lrs: Mapped[bytes | None] = mapped_column(LargeBinary(), nullable=True, deferred=True)


class StepRow(Base):
    __tablename__ = TABLE_PREFIX + "steps"

    run_id: Mapped[int] = mapped_column(
        Integer, ForeignKey(RunRow.id, ondelete="CASCADE"), primary_key=True
    )
    step: Mapped[int] = mapped_column(Integer, primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer, nullable=False)
    lr: Mapped[float | None] = mapped_column(Double(), nullable=True)
    mu: Mapped[float | None] = mapped_column(Double(), nullable=True)
    hyper_lr: Mapped[float | None] = mapped_column(Double(), nullable=True)
    hypergradient: Mapped[float | None] = mapped_column(Double(), nullable=True)
    train_loss: Mapped[float | None] = mapped_column(Double(), nullable=True)
    special_floats: Mapped[str | None] = mapped_column(Text, nullable=True)


STORE_TABLES = tuple(Base.metadata.sorted_tables)
