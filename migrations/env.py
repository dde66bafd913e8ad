"""Alembic environment of the adatune store.

adatune configures Alembic in code (``adatune.store.migrate.alembic_config``)
and usually hands over an open connection inside a transaction that holds the
store's lock; a bare ``sqlalchemy.url`` works too. Our version table is
``adatune_alembic_version``, never Alembic's default, which other tools in the
same database (Optuna) use for their own history.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine
from sqlalchemy.pool import NullPool

from adatune.store.migrate import VERSION_TABLE
from adatune.store.orm import Base

config = context.config
target_metadata = Base.metadata


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        version_table=VERSION_TABLE,
        # SQLite cannot ALTER most things; batch mode copies the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        # Only compare our own tables when autogenerating (Optuna's live beside them).
        include_name=lambda name, type_, parent: (
            type_ != "table" or name in target_metadata.tables or name == VERSION_TABLE
        ),
    )
    with context.begin_transaction():
        context.run_migrations()


def run_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        version_table=VERSION_TABLE,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        return
    engine = create_engine(config.get_main_option("sqlalchemy.url"), poolclass=NullPool)
    try:
        with engine.connect() as conn:
            _configure(conn)
            conn.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
