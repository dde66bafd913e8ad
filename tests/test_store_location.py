"""Where a store lives: paths and URLs, and locations that must be refused untouched."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from adatune.errors import StoreError
from adatune.store import NewRun, inspect_store, open_store, resolve_url, upgrade_store
from adatune.store.connection import describe

ReadOnly = Callable[[Path], contextlib.AbstractContextManager[None]]


def test_paths_become_absolute_sqlite_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_url("adatune.db") == f"sqlite:///{tmp_path}/adatune.db"
    assert resolve_url("sub/x.db") == f"sqlite:///{tmp_path}/sub/x.db"
    assert resolve_url(tmp_path / "y.db") == f"sqlite:///{tmp_path}/y.db"
    assert resolve_url("/abs/z.db") == "sqlite:////abs/z.db"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_url("~/h.db") == f"sqlite:///{tmp_path}/home/h.db"
    odd = resolve_url("odd name #1?.db")  # URL-escaped, but names the same file
    assert make_url(odd).database == f"{tmp_path}/odd name #1?.db"
    with open_store("odd name #1?.db") as store:
        assert store.url == odd
    assert (tmp_path / "odd name #1?.db").is_file()


def test_urls_are_kept(tmp_path: Path) -> None:
    assert resolve_url("sqlite:///rel.db") == "sqlite:///rel.db"
    assert resolve_url("sqlite:////abs/x.db") == "sqlite:////abs/x.db"
    url = "postgresql+psycopg://user:s3cret@db.example:5432/runs"
    assert resolve_url(url) == url  # the password stays (Optuna needs the full URL)
    assert "s3cret" not in describe(url) and "***" in describe(url)
    assert describe(resolve_url(tmp_path / "a.db")) == str(tmp_path / "a.db")


@pytest.mark.parametrize("bad", ["", "   "])
def test_empty_location_is_refused(bad: str) -> None:
    with pytest.raises(StoreError, match="empty"):
        resolve_url(bad)


def test_relative_path_store_is_created_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with open_store("adatune.db") as store:
        assert store.url == f"sqlite:///{tmp_path}/adatune.db"
        assert store.location == str(tmp_path / "adatune.db")
    assert (tmp_path / "adatune.db").is_file()
    with sqlite3.connect(tmp_path / "adatune.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_empty_file_becomes_a_store(tmp_path: Path) -> None:
    (tmp_path / "empty.db").touch()
    with open_store(tmp_path / "empty.db") as store:
        assert store.list_runs() == []


def test_unknown_backend_and_missing_driver() -> None:
    with pytest.raises(StoreError, match="unknown database kind"):
        open_store("nosuchdb://u@h/x")
    with pytest.raises(StoreError, match="driver .* not installed"):
        open_store("mysql+mysqldb://u:pw@127.0.0.1/x")


def test_unreachable_server_is_one_line_without_password() -> None:
    with socket_port() as port:  # a port nothing listens on
        url = f"postgresql+psycopg://u:s3cret@127.0.0.1:{port}/x?connect_timeout=5"
    with pytest.raises(StoreError) as info:
        open_store(url)
    message = str(info.value)
    assert message.startswith("cannot open the store postgresql+psycopg://u:***@127.0.0.1")
    assert "\n" not in message and "s3cret" not in message


@contextlib.contextmanager
def socket_port() -> Iterator[int]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


# -- locations that must be refused, with nothing changed ----------------------------


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def one_line(exc: pytest.ExceptionInfo[StoreError]) -> str:
    message = str(exc.value)
    assert message and "\n" not in message
    return message


OPENERS = [open_store, upgrade_store, inspect_store]


@pytest.mark.parametrize("opener", OPENERS, ids=lambda f: f.__name__)
def test_directory_is_refused(tmp_path: Path, opener: Callable[[Path], object]) -> None:
    folder = tmp_path / "runs"
    folder.mkdir()
    with pytest.raises(StoreError) as info:
        opener(folder)
    assert "is a directory" in one_line(info)
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize("opener", OPENERS, ids=lambda f: f.__name__)
@pytest.mark.parametrize(
    "content",
    [
        b"hello, this is a text file\n" * 10,
        bytes(range(256)) * 64,
        b"SQLite format 2\x00" + b"x" * 100,
    ],
    ids=["text", "binary", "almost-sqlite"],
)
def test_file_that_is_not_a_database_is_untouched(
    tmp_path: Path,
    opener: Callable[[Path], object],
    content: bytes,
) -> None:
    path = tmp_path / "notes.db"
    path.write_bytes(content)
    before = snapshot(tmp_path)
    with pytest.raises(StoreError) as info:
        opener(path)
    assert "not an SQLite database" in one_line(info)
    assert snapshot(tmp_path) == before  # same bytes, and no -wal/-shm beside it


def test_missing_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StoreError) as info:
        open_store(tmp_path / "no" / "such" / "x.db")
    assert "does not exist" in one_line(info)
    assert list(tmp_path.iterdir()) == []


def test_unwritable_folder_for_a_new_store(tmp_path: Path, read_only: ReadOnly) -> None:
    folder = tmp_path / "locked"
    folder.mkdir()
    with read_only(folder):
        with pytest.raises(StoreError) as info:
            open_store(folder / "adatune.db")
        message = one_line(info)
        assert "cannot" in message and "writable" in message
        assert list(folder.iterdir()) == []


def test_unwritable_store_file(tmp_path: Path, read_only: ReadOnly) -> None:
    path = tmp_path / "adatune.db"
    with open_store(path) as store:
        store.create_run(
            NewRun(
                kind="train",
                method="hd",
                optimizer="sgd",
                network="mlp",
                dataset="digits",
                seed=0,
                config={},
            )
        )
    before = path.read_bytes()
    with read_only(path):
        with pytest.raises(StoreError) as info:
            open_store(path)
        assert "cannot write to the store" in one_line(info)
    assert path.read_bytes() == before


def test_an_immediate_lock_error_while_opening_sqlite_is_retried(tmp_path, monkeypatch):
    """SQLite may refuse a lock without waiting while others create the same file."""
    import sqlite3

    from sqlalchemy.exc import OperationalError

    from adatune.store import repository

    real = repository.ensure_current
    calls = []

    def flaky(engine, location, **kw):
        calls.append(1)
        if len(calls) == 1:
            raise OperationalError("PRAGMA journal_mode = WAL", {},
                                   sqlite3.OperationalError("database is locked"))
        return real(engine, location, **kw)

    monkeypatch.setattr(repository, "ensure_current", flaky)
    with repository.open_store(tmp_path / "race.db") as store:
        assert store.list_runs() == []
    assert len(calls) == 2
    # A lock that never clears still ends in the one-line error once the budget is spent.
    monkeypatch.setattr(repository, "SQLITE_BUSY_TIMEOUT_S", 0.2)

    def always(engine, location, **kw):
        raise OperationalError("BEGIN", {}, sqlite3.OperationalError("database is locked"))

    monkeypatch.setattr(repository, "ensure_current", always)
    with pytest.raises(StoreError, match="stayed locked"):
        repository.open_store(tmp_path / "race.db")
