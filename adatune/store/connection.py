"""Where a store lives and how we connect to it.

* :func:`resolve_url` turns a file path or an SQLAlchemy URL into a URL.
* :func:`check_sqlite_file` refuses, before SQLite touches anything, a path
  that is a directory, cannot be written, or holds something that is not an
  SQLite database.
* :func:`make_engine` builds the engine. SQLite gets WAL mode, a busy timeout
  and ``BEGIN IMMEDIATE`` for write transactions, so several ``adatune``
  processes can write one file at once: a writer takes the write lock when its
  transaction starts and waits (up to the busy timeout) for another writer to
  finish, instead of failing with "database is locked" halfway through.
* :func:`store_error` turns a driver error into a one-line :class:`StoreError`.
"""

from __future__ import annotations

import os
import re
import sqlite3
from pathlib import Path
from urllib.parse import quote

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError
from sqlalchemy.pool import StaticPool

from adatune.errors import StoreError
from adatune.redact import mask_secrets

#: Seconds an SQLite writer waits for another process's write lock.
SQLITE_BUSY_TIMEOUT_S = 60.0
#: Execution option that marks a connection used for writing.
WRITE_OPTION = "adatune_write"

_SQLITE_MAGIC = b"SQLite format 3\x00"
_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")


def resolve_url(path_or_url: str | os.PathLike[str]) -> str:
    """Return the SQLAlchemy URL of a store given as a file path or a URL.

    ``"adatune.db"`` and ``"/abs/x.db"`` become ``sqlite:////abs/.../x.db``
    (relative paths resolved against the current directory, ``~`` expanded);
    anything that looks like ``dialect[+driver]://...`` is taken as a URL.
    """
    text = os.fspath(path_or_url).strip() if path_or_url is not None else ""
    if not text:
        raise StoreError("the store location is empty (give a file path or an SQLAlchemy URL)")
    if _URL_RE.match(text):
        try:
            url = make_url(text)
        except ArgumentError as exc:
            raise StoreError(f"invalid store URL {mask_secrets(text)!r}: {exc}") from None
        except ValueError:  # SQLAlchemy parses the port with int()
            raise StoreError(f"invalid store URL {mask_secrets(text)!r}: the port is not a "
                             "number (host:PORT, e.g. db.example.org:5432)") from None
        return url.render_as_string(hide_password=False)
    path = Path(text).expanduser().absolute()
    return URL.create("sqlite", database=str(path)).render_as_string(hide_password=False)


def sqlite_path(url: str) -> Path | None:
    """The file behind an SQLite URL; None for other backends and in-memory SQLite."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    database = parsed.database or ""
    if database in ("", ":memory:") or database.startswith("file:") or parsed.query.get("uri"):
        return None
    return Path(database)


def describe(url: str) -> str:
    """How messages name a store: the file for SQLite, else the URL without password.

    The password is masked both where SQLAlchemy keeps it (the user part) and
    where a driver also accepts one (``?password=`` in the query).
    """
    path = sqlite_path(url)
    if path is not None:
        return str(path)
    parsed = make_url(url)
    return mask_secrets(parsed.render_as_string(hide_password=True), _secrets(parsed))


def _secrets(url: URL) -> list[str]:
    """The passwords a URL carries: its own and any given in its query."""
    found = [url.password] if url.password else []
    for key, value in url.query.items():
        if any(word in key.lower() for word in ("pass", "pwd", "secret", "token")):
            found += [value] if isinstance(value, str) else list(value)
    return found


def url_secrets(url: str) -> list[str]:
    """The passwords in a store URL (to mask them in any text that might quote them)."""
    try:
        return _secrets(make_url(url))
    except (ArgumentError, ValueError):
        return []


def check_sqlite_file(path: Path, *, create: bool, write: bool = True) -> None:
    """Refuse an SQLite path we must not or cannot use, without writing anything.

    With ``create=False`` a missing file is an error too; ``write=False`` only
    asks for a readable file (for commands that change nothing).
    """
    if path.is_dir():
        raise StoreError(
            f"the store path {path} is a directory (give a file such as {path}/adatune.db)"
        )
    if path.exists():
        if not path.is_file():
            raise StoreError(f"the store path {path} is not a regular file")
        try:
            fd = os.open(path, os.O_RDWR if write else os.O_RDONLY)  # this changes nothing
        except OSError as exc:
            doing = "write to" if write else "read"
            raise StoreError(f"cannot {doing} the store {path}: {exc.strerror}") from None
        try:
            header = os.read(fd, len(_SQLITE_MAGIC))
        finally:
            os.close(fd)
        if header and header != _SQLITE_MAGIC:
            raise StoreError(
                f"{path} is not an SQLite database (refusing to use it as a store; "
                "nothing was changed)"
            )
        return
    if not create:
        raise StoreError(f"no store at {path} (`adatune db upgrade` creates one)")
    parent = path.parent
    if not parent.is_dir():
        raise StoreError(f"cannot create the store {path}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise StoreError(f"cannot create the store {path}: the folder {parent} is not writable")


def make_engine(url: str, *, write: bool = True) -> Engine:
    """An engine for ``url``; SQLite is set up for several concurrent writers.

    ``write=False`` opens an SQLite file read-only (``mode=ro``) and leaves its
    journal mode alone: commands that only read work on a store they cannot
    write (:func:`read_only_connection`).
    """
    parsed = make_url(url)
    try:
        if parsed.get_backend_name() == "sqlite":
            return _sqlite_engine(parsed, wal=write, read_only=not write)
        return create_engine(parsed, pool_pre_ping=True)
    except NoSuchModuleError:
        raise StoreError(f"unknown database kind in the store URL {describe(url)}") from None
    except ModuleNotFoundError as exc:
        raise StoreError(
            f"the database driver {exc.name!r} for the store {describe(url)} is not installed "
            "(for PostgreSQL: pip install 'adatune[postgres]')"
        ) from None


def read_only_connection(path: Path) -> sqlite3.Connection:
    """A connection to the SQLite file ``path`` that cannot change it.

    Where this user may write the store (and its folder), an ordinary connection
    with ``PRAGMA query_only``: SQLite then tidies the store's write-ahead log
    and index away on close as usual. Otherwise a read-only one (``mode=ro``).
    A store in WAL mode is read through its shared-memory index, which SQLite
    must create beside the file when it is not there; where it cannot (a store
    file and folder this user may not write) and there is no write-ahead log
    to read, the file is opened as ``immutable``: every commit is then in the
    file itself (a writer that starts meanwhile can make this reader fail).
    """
    if os.access(path, os.R_OK | os.W_OK) and os.access(path.parent, os.W_OK | os.X_OK):
        conn = sqlite3.connect(str(path), timeout=SQLITE_BUSY_TIMEOUT_S,
                               check_same_thread=False)
        conn.execute("PRAGMA query_only = ON")
        return conn
    uri = f"file:{quote(str(path))}?mode=ro"
    conn = sqlite3.connect(uri, uri=True, timeout=SQLITE_BUSY_TIMEOUT_S,
                           check_same_thread=False)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchall()
        return conn
    except sqlite3.OperationalError:
        conn.close()
        wal = path.with_name(path.name + "-wal")
        try:
            logged = wal.stat().st_size > 0
        except OSError:
            logged = False
        if logged:
            raise
    return sqlite3.connect(uri + "&immutable=1", uri=True, timeout=SQLITE_BUSY_TIMEOUT_S,
                           check_same_thread=False)


def _sqlite_engine(url: URL, *, wal: bool, read_only: bool = False) -> Engine:
    kwargs: dict = {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}
    path = sqlite_path(url.render_as_string(hide_password=False))
    if path is None:  # in-memory
        kwargs.update(poolclass=StaticPool, connect_args={"check_same_thread": False})
    elif read_only:
        kwargs = {"creator": lambda: read_only_connection(path)}
    engine = create_engine(url, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, connection_record) -> None:  # noqa: ANN001
        # Let us issue BEGIN ourselves (pysqlite's own BEGIN is deferred and
        # would also commit before DDL).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
            cursor.execute("PRAGMA foreign_keys = ON")
            if wal:
                cursor.execute("PRAGMA journal_mode = WAL")
                # In WAL mode NORMAL loses nothing when a process dies; only an
                # OS crash or power cut can undo the last commits.
                cursor.execute("PRAGMA synchronous = NORMAL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:  # noqa: ANN001
        # A writer takes the lock up front: a deferred transaction that reads
        # and then writes fails at once (SQLITE_BUSY_SNAPSHOT) when another
        # process committed in between; the busy timeout cannot help it.
        immediate = conn.get_execution_options().get(WRITE_OPTION, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def store_error(exc: DBAPIError, location: str, doing: str = "use",
                secrets: list[str] | None = None) -> StoreError:
    """One line for a driver error: what failed, where, and the driver's reason.

    The reason is masked as every message is (:func:`adatune.redact.mask_secrets`),
    and so is each of ``secrets`` (the store's passwords), wherever a driver
    quoted one.
    """
    orig = getattr(exc, "orig", None) or exc
    reason = mask_secrets(" ".join(str(orig).split()) or type(orig).__name__, secrets or ())
    lowered = reason.lower()
    if "file is not a database" in lowered:
        return StoreError(f"{location} is not an SQLite database (nothing was changed)")
    if "unable to open database file" in lowered:
        return StoreError(
            f"cannot {doing} the store {location}: SQLite cannot open it; the file and its "
            "folder must be writable (SQLite keeps -wal and -shm files beside it)"
        )
    if "database or disk is full" in lowered:
        return StoreError(f"cannot {doing} the store {location}: no space left on its disk")
    if "readonly database" in lowered or "read-only" in lowered:
        return StoreError(f"cannot {doing} the store {location}: it is read-only")
    if "database is locked" in lowered:
        return StoreError(
            f"cannot {doing} the store {location}: it stayed locked by another process "
            f"(gave up after waiting up to {SQLITE_BUSY_TIMEOUT_S:.0f} s)"
        )
    return StoreError(f"cannot {doing} the store {location}: {reason}")
