"""Schema versions of the store, managed by Alembic.

The revisions live in the top-level ``migrations/`` folder, which ships as the
package ``adatune.migrations``; Alembic is configured here in code, so no
``alembic.ini`` is needed at run time. Our version table is
``adatune_alembic_version`` so that other tools keeping their own Alembic
history in the same database (Optuna does) never see ours.

A store is classified by comparing its revision with this adatune's head:

* ``new``: no revision (no store yet, or a database without our tables):
  :func:`ensure_current` creates it at head;
* ``current``: at head;
* ``older``: a revision this adatune knows, below head: the user must back up
  and run ``adatune db upgrade``;
* ``newer``: a revision this adatune does not know: the user must upgrade
  adatune;
* ``unversioned``: adatune's tables are there but the version row is not (a
  damaged store, or one half-restored from a backup): refused, with a pointer
  to ``adatune db check``.

A new SQLite file is built under a temporary name beside its final one and
linked into place only once its schema is complete (:func:`create_sqlite_store`):
a failed creation (a full disk, say) leaves nothing behind, and two processes
creating the same store at once end up sharing one of the two.

Opening a store (:func:`ensure_current`) needs no Alembic, which takes a third
of a store command's start: the revisions and the head are read from the
revision files (their ``revision``/``down_revision`` assignments) and the
store's revision with one query. A new store, a damaged version table or
revision files this reading cannot follow go through Alembic, which also does
every migration and ``adatune db``'s reports.

To write a new revision (developers)::

    from alembic import command
    from adatune.store.migrate import alembic_config
    command.revision(alembic_config("sqlite:///dev.db"), message="...", autogenerate=True)
"""

from __future__ import annotations

import ast
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, inspect, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError

from adatune._durable import fsync_path
from adatune.errors import StoreError
from adatune.store.connection import (
    WRITE_OPTION,
    check_sqlite_file,
    describe,
    make_engine,
    resolve_url,
    sqlite_path,
    store_error,
    url_secrets,
)

if TYPE_CHECKING:  # Alembic is imported where it is used (see the module doc)
    from alembic.config import Config
    from alembic.script import ScriptDirectory

VERSION_TABLE = "adatune_alembic_version"
#: Key of the PostgreSQL advisory lock that serialises schema changes.
_PG_LOCK_KEY = 0x61646174756E65  # "adatune"


@dataclass(frozen=True)
class SchemaState:
    """Where a store's schema stands relative to this adatune."""

    location: str
    current: str | None
    head: str
    state: str  # "new", "current", "older", "newer" or "unversioned"


def migrations_location() -> str:
    """The folder holding ``env.py`` and ``versions/`` (inside the installed package)."""
    return str(files("adatune.migrations"))


def alembic_config(url: str | None = None, connection: Connection | None = None) -> Config:
    """An Alembic config for our revisions; ``connection`` (if any) is used as is."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", migrations_location())
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["connection"] = connection
    return cfg


def _script() -> ScriptDirectory:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config())


def head_revision(script: ScriptDirectory | None = None) -> str:
    heads = (script or _script()).get_heads()
    if len(heads) != 1:  # a packaging bug, not a user problem
        raise RuntimeError(f"adatune migrations must have exactly one head, found {heads}")
    return heads[0]


def current_revision(connection: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    heads = context.get_current_heads()
    if len(heads) > 1:
        raise StoreError(f"the store has several schema revisions {heads}; it is damaged")
    return heads[0] if heads else None


def classify(connection: Connection, location: str) -> SchemaState:
    script = _script()
    head = head_revision(script)
    current = current_revision(connection)
    if current is None:
        state = "unversioned" if _has_store_tables(connection) else "new"
    elif current == head:
        state = "current"
    elif _known(script, current):
        state = "older"
    else:
        state = "newer"
    return SchemaState(location=location, current=current, head=head, state=state)


def _has_store_tables(connection: Connection) -> bool:
    from adatune.store.orm import STORE_TABLES

    names = set(inspect(connection).get_table_names())
    return any(table.name in names for table in STORE_TABLES)


def _known(script: ScriptDirectory, revision: str) -> bool:
    try:
        return script.get_revision(revision) is not None
    except Exception:  # alembic raises several kinds for an unknown id
        return False


def mismatch_error(state: SchemaState) -> StoreError:
    if state.state == "unversioned":
        return StoreError(
            f"the store {state.location} has adatune's tables but no schema revision (the row "
            f"of {VERSION_TABLE} is missing): it is damaged or half-restored; nothing was "
            f"changed. Check it with `adatune db check --store {state.location}` and restore "
            "it from a backup"
        )
    if state.state == "older":
        return StoreError(
            f"the store {state.location} has an older schema (revision {state.current}; "
            f"this adatune needs {state.head}): back it up, then run "
            f"`adatune db upgrade --store {state.location}`"
        )
    return StoreError(
        f"the store {state.location} was written by a newer adatune (schema revision "
        f"{state.current}; this adatune knows up to {state.head}): upgrade adatune "
        "(pip install -U adatune)"
    )


@contextmanager
def _locked(engine: Engine) -> Iterator[Connection]:
    """A write transaction that holds the store's schema lock until it ends."""
    with engine.execution_options(**{WRITE_OPTION: True}).begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_KEY})
        yield conn


def _upgrade(conn: Connection, target: str = "head") -> None:
    from alembic import command  # its autogenerate machinery: only when the schema changes

    command.upgrade(alembic_config(connection=conn), target)


def revisions_from_files() -> tuple[str, frozenset[str]] | None:
    """``(head, every revision)`` read from the revision files without Alembic; None if unsure.

    Each file's top-level ``revision`` and ``down_revision`` literals make the
    graph; the head is the one revision no other revises. Any file this cannot
    read, or a graph without exactly one head, gives None (ask Alembic).
    """
    revisions: set[str] = set()
    revised: set[str] = set()
    try:
        paths = sorted(Path(migrations_location(), "versions").glob("*.py"))
        for path in paths:
            if path.name.startswith(("__", ".#")):
                continue
            found: dict[str, object] = {}
            for node in ast.parse(path.read_text(encoding="utf-8")).body:
                target = (node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1
                          else node.target if isinstance(node, ast.AnnAssign) else None)
                if isinstance(target, ast.Name) and target.id in ("revision", "down_revision"):
                    found[target.id] = ast.literal_eval(node.value)
            revision, down = found.get("revision"), found.get("down_revision")
            if not isinstance(revision, str) or revision in revisions:
                return None
            revisions.add(revision)
            downs = (down,) if isinstance(down, str) else down or ()
            if not isinstance(downs, (tuple, list)) or not all(isinstance(d, str) for d in downs):
                return None
            revised.update(downs)
    except (OSError, SyntaxError, ValueError, UnicodeDecodeError):
        return None
    heads = revisions - revised
    if len(heads) != 1 or not revised <= revisions:
        return None
    return heads.pop(), frozenset(revisions)


def _classify_from_files(connection: Connection, location: str) -> SchemaState | None:
    """``current``, ``older`` or ``newer`` for a store with one revision; else None (Alembic)."""
    read = revisions_from_files()
    if read is None or not inspect(connection).has_table(VERSION_TABLE):
        return None
    rows = connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).all()
    if len(rows) != 1 or not isinstance(rows[0][0], str):
        return None
    (current,), (head, known) = rows[0], read
    state = "current" if current == head else "older" if current in known else "newer"
    return SchemaState(location=location, current=current, head=head, state=state)


def ensure_current(engine: Engine, location: str, *, create: bool = True) -> SchemaState:
    """Create a new store at head (unless ``create=False``); refuse any other version."""
    with engine.connect() as conn:
        state = _classify_from_files(conn, location) or classify(conn, location)
    if state.state == "new" and not create:
        raise StoreError(f"no adatune store in {location} yet (`adatune db upgrade` creates "
                         "one; so does the first `adatune train`)")
    if state.state == "new":
        with _locked(engine) as conn:  # another process may be creating it right now
            state = classify(conn, location)
            if state.state == "new":
                _upgrade(conn)
                state = classify(conn, location)
    if state.state != "current":
        raise mismatch_error(state)
    return state


def create_sqlite_store(path: Path, location: str) -> bool:
    """Create a new SQLite store at ``path``; False when another process created it first.

    The schema is built in a temporary file in the same folder, flushed to disk,
    and hard-linked to ``path``, which fails if ``path`` exists meanwhile: a
    store is never visible half-made, and nothing is left behind on failure.
    Where the file system has no hard links, the store is built in place.
    """
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.creating")
    url = URL.create("sqlite", database=str(tmp)).render_as_string(hide_password=False)
    try:
        engine = make_engine(url)
        try:
            ensure_current(engine, location)
            with engine.connect() as conn:  # everything into the main file, -wal emptied
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            engine.dispose()
        wal = tmp.with_name(tmp.name + "-wal")
        if wal.exists() and wal.stat().st_size:
            raise StoreError(f"cannot create the store {location}: its write-ahead log could "
                             "not be merged into it")
        fsync_path(tmp)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError:  # no hard links here (some network or FAT file systems)
            if path.exists():
                return False
            os.replace(tmp, path)
        fsync_path(path.parent)
        return True
    except DBAPIError as exc:
        raise store_error(exc, location, "create") from None
    except OSError as exc:
        raise StoreError(f"cannot create the store {location}: {exc.strerror or exc}") from None
    finally:
        for leftover in (tmp, *(tmp.with_name(tmp.name + s) for s in ("-wal", "-shm",
                                                                       "-journal"))):
            try:
                leftover.unlink()
            except FileNotFoundError:
                pass
            except OSError:  # pragma: no cover - best effort
                pass


def inspect_store(path_or_url: str | os.PathLike[str]) -> SchemaState:
    """The schema state of a store, changing nothing (a missing SQLite file is an error)."""
    url = resolve_url(path_or_url)
    location = describe(url)
    path = sqlite_path(url)
    if path is not None:
        check_sqlite_file(path, create=False, write=False)
    engine = make_engine(url, write=False)
    try:
        with engine.connect() as conn:
            return classify(conn, location)
    except DBAPIError as exc:
        raise store_error(exc, location, "read", url_secrets(url)) from None
    finally:
        engine.dispose()


def upgrade_store(path_or_url: str | os.PathLike[str]) -> tuple[SchemaState, SchemaState]:
    """Migrate a store (creating it if missing) to head; returns (before, after)."""
    url = resolve_url(path_or_url)
    location = describe(url)
    path = sqlite_path(url)
    created = False
    if path is not None:
        check_sqlite_file(path, create=True)
        if not path.exists():
            created = create_sqlite_store(path, location)
    engine = make_engine(url)
    try:
        with _locked(engine) as conn:
            before = classify(conn, location)
            if before.state in ("newer", "unversioned"):
                raise mismatch_error(before)
            if before.state != "current":
                _upgrade(conn)
            after = classify(conn, location)
        if created:  # made just now, at head
            before = SchemaState(location, None, after.head, "new")
        return before, after
    except DBAPIError as exc:
        raise store_error(exc, location, "upgrade", url_secrets(url)) from None
    finally:
        engine.dispose()
