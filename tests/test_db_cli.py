"""``adatune db current`` / ``adatune db upgrade``, and store errors at the command line."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from adatune.store import VERSION_TABLE, migrate, open_store
from adatune.store.connection import describe
from tests._wait import WAIT_S

ReadOnly = Callable[[Path], contextlib.AbstractContextManager[None]]
_MAIN = "import sys; from adatune_cli.main import main; main(sys.argv[1:])"


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """The real command in a fresh process: exit code, stdout, stderr."""
    full_env = {k: v for k, v in os.environ.items() if k != "ADATUNE_STORE"}
    full_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-c", _MAIN, *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=WAIT_S,
    )
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
    """The command in this process (so tests can monkeypatch): exit code, stdout, stderr."""
    from adatune_cli.main import main

    monkeypatch.delenv("ADATUNE_STORE", raising=False)

    def call(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        with pytest.raises(SystemExit) as info:
            main(list(args))
        out, err = capsys.readouterr()
        return info.value.code, out, err

    return call


def assert_one_error_line(code: int, out: str, err: str, *fragments: str) -> None:
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("adatune: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0]


def test_store_error_in_a_real_process_is_one_line_and_exit_2(tmp_path: Path) -> None:
    folder = tmp_path / "a-folder"
    folder.mkdir()
    code, out, err = run_cli("db", "upgrade", "--store", str(folder), cwd=tmp_path)
    assert_one_error_line(code, out, err, "is a directory")
    assert out == ""
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize("command", ["current", "upgrade"])
def test_file_that_is_not_a_database(tmp_path: Path, cli, command: str) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"\x00\x01 not a database" * 100)
    code, out, err = cli("db", command, "--store", str(junk))
    assert_one_error_line(code, out, err, "not an SQLite database")
    assert junk.read_bytes() == b"\x00\x01 not a database" * 100
    assert [p.name for p in tmp_path.iterdir()] == ["junk.db"]


def test_unwritable_location(tmp_path: Path, cli, read_only: ReadOnly) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    with read_only(locked):
        code, out, err = cli("db", "upgrade", "--store", str(locked / "x.db"))
    assert_one_error_line(code, out, err, "cannot", "writable")
    assert list(locked.iterdir()) == []


def test_env_store_is_used_and_option_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli
) -> None:
    monkeypatch.chdir(tmp_path)
    env_store = tmp_path / "from-env.db"
    monkeypatch.setenv("ADATUNE_STORE", str(env_store))
    code, out, err = cli("db", "upgrade")
    assert code == 0, err
    assert f"created the store schema in {env_store} at revision" in out
    assert env_store.is_file() and not (tmp_path / "adatune.db").exists()

    option_store = tmp_path / "from-option.db"
    code, out, err = cli("db", "current", "--store", str(option_store))
    assert_one_error_line(code, out, err, "no store at", str(option_store))


def test_default_store_is_adatune_db_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = cli("db", "current")
    assert_one_error_line(code, out, err, f"no store at {tmp_path / 'adatune.db'}")
    assert not (tmp_path / "adatune.db").exists()  # `current` creates nothing
    code, out, err = cli("db", "upgrade")
    assert code == 0, err
    assert (tmp_path / "adatune.db").is_file()


def test_upgrade_then_current(store_url: str, cli) -> None:
    head = migrate.head_revision()
    code, out, err = cli("db", "upgrade", "--store", store_url)
    assert code == 0, err
    assert f"at revision {head}" in out
    code, out, err = cli("db", "upgrade", "--store", store_url)
    assert code == 0 and f"already at revision {head} (head)" in out
    code, out, err = cli("db", "current", "--store", store_url)
    assert code == 0, err
    assert out.splitlines()[1] == f"revision: {head} (head, up to date)"
    with open_store(store_url) as store:  # the CLI made a usable store
        assert store.list_runs() == []


def test_current_on_an_empty_database(postgres_url: str, cli) -> None:
    code, out, err = cli("db", "current", "--store", postgres_url)
    assert code == 0, err
    assert out.splitlines()[0] == f"store: {describe(postgres_url)}"  # no password shown
    assert out.splitlines()[1].startswith("revision: none (no adatune tables yet")


def test_newer_store(store_url: str, cli) -> None:
    with open_store(store_url):
        pass
    engine = create_engine(store_url)
    with engine.begin() as conn:
        conn.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = 'f00d'"))
    engine.dispose()
    code, out, err = cli("db", "current", "--store", store_url)
    assert code == 0, err
    assert "revision: f00d (newer than this adatune" in out and "upgrade adatune" in out
    code, out, err = cli("db", "upgrade", "--store", store_url)
    assert_one_error_line(code, out, err, "newer adatune", "upgrade adatune")


def test_older_store(store_url: str, cli, later_release: Callable[[], str]) -> None:
    with open_store(store_url):
        pass
    old = migrate.head_revision()
    new = later_release()
    code, out, err = cli("db", "current", "--store", store_url)
    assert code == 0, err
    assert f"revision: {old} (older than head {new}" in out and "adatune db upgrade" in out
    code, out, err = cli("db", "upgrade", "--store", store_url)
    assert code == 0, err
    assert f"from revision {old} to {new}" in out
    code, out, err = cli("db", "current", "--store", store_url)
    assert f"revision: {new} (head, up to date)" in out


def test_help_has_examples(cli) -> None:
    for command in ("current", "upgrade"):
        code, out, _ = cli("db", command, "--help")
        assert code == 0
        assert "Example: adatune db " in out and "--store" in out
