"""Shared fixtures.

PostgreSQL: ``postgres_server`` (session) starts a throwaway server from the
PostgreSQL binaries (``pg_ctl`` on PATH or Debian's /usr/lib/postgresql/*/bin)
on 127.0.0.1, a free port, trust authentication, fsync off; it is stopped and
deleted at the end of the session. PostgreSQL refuses to run as root, so as
root the server runs as the ``postgres`` user. Where the binaries are absent,
tests that need it are skipped with a visible reason.

* ``postgres_url``: a fresh, empty database on that server, as a
  ``postgresql+psycopg://`` URL (dropped after the test).
* ``store_url``: parametrised over ``sqlite`` (a file in ``tmp_path``) and
  ``postgresql`` (``postgres_url``); give it to ``open_store``.

Store helpers: ``read_only`` (a context manager that makes a path unwritable,
even for root) and ``later_release`` (pretend this adatune's migrations have
one more revision, to test version mismatches).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import textwrap
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import pytest


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    user: str
    bindir: Path

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{database}"

    def conninfo(self, database: str = "postgres") -> str:
        return f"host={self.host} port={self.port} user={self.user} dbname={database}"


def _pg_bindir() -> Path | None:
    on_path = shutil.which("pg_ctl")
    if on_path:
        return Path(on_path).parent
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    bindir = _pg_bindir()
    if bindir is None:
        pytest.skip(
            "PostgreSQL binaries not found (no pg_ctl on PATH or in /usr/lib/postgresql/*/bin; "
            "install Debian's postgresql package)"
        )
    as_user: list[str] = []
    workdir = Path(tempfile.mkdtemp(prefix="adatune-pg-"))
    if os.geteuid() == 0:  # postgres will not run as root
        shutil.chown(workdir, user="postgres", group="postgres")
        runuser = shutil.which("runuser")
        as_user = [runuser, "-u", "postgres", "--"] if runuser else ["sudo", "-u", "postgres"]
    data = workdir / "data"
    log = workdir / "server.log"

    def pg(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*as_user, *args], capture_output=True, text=True, check=check, timeout=120
        )

    port = _free_port()
    try:
        initdb = str(bindir / "initdb")
        pg(initdb, "-D", str(data), *"-U postgres -A trust -E UTF8 --locale=C --no-sync".split())
        options = f"-h 127.0.0.1 -p {port} -k {workdir} -F -c full_page_writes=off"
        pg_ctl = str(bindir / "pg_ctl")
        pg(pg_ctl, "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o", options, "start")
    except subprocess.CalledProcessError as exc:
        text = log.read_text() if log.exists() else ""
        shutil.rmtree(workdir, ignore_errors=True)
        raise RuntimeError(
            f"could not start PostgreSQL from {bindir}: {exc.stderr}\n{exc.stdout}\n{text}"
        ) from exc
    try:
        yield PostgresServer(host="127.0.0.1", port=port, user="postgres", bindir=bindir)
    finally:
        pg(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty PostgreSQL database (SQLAlchemy URL), dropped afterwards."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(postgres_server.conninfo(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield postgres_server.url(name)
    finally:
        with psycopg.connect(postgres_server.conninfo(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store location on each backend: an SQLite file URL, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'adatune.db'}"
    return request.getfixturevalue("postgres_url")


@contextlib.contextmanager
def _read_only(path: Path) -> Iterator[None]:
    if os.geteuid() != 0:
        mode = path.stat().st_mode
        path.chmod(0o555 if path.is_dir() else 0o444)
        try:
            yield
        finally:
            path.chmod(mode)
        return
    chattr = shutil.which("chattr")  # root ignores permissions, not the immutable flag
    if chattr is None or subprocess.run([chattr, "+i", str(path)], capture_output=True).returncode:
        pytest.skip("running as root and cannot make a path immutable (chattr +i)")
    try:
        yield
    finally:
        subprocess.run([chattr, "-i", str(path)], check=True)


@pytest.fixture
def read_only() -> Callable[[Path], contextlib.AbstractContextManager[None]]:
    """``with read_only(path):`` makes a file or folder unwritable, even for root."""
    return _read_only


@pytest.fixture
def later_release(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[], str]:
    """Call it to pretend this adatune is a later release whose head adds revision "9000"."""
    from adatune.store import migrate

    head = migrate.head_revision()
    later = tmp_path / "later_migrations"
    shutil.copytree(
        str(files("adatune.migrations")), later, ignore=shutil.ignore_patterns("__pycache__")
    )
    (later / "versions" / "9000_add_note.py").write_text(
        textwrap.dedent(
            f'''
            """Test-only revision: add a column."""
            import sqlalchemy as sa
            from alembic import op

            revision = "9000"
            down_revision = {head!r}
            branch_labels = None
            depends_on = None

            def upgrade():
                with op.batch_alter_table("adatune_runs") as batch:
                    batch.add_column(sa.Column("note", sa.Text(), nullable=True))

            def downgrade():
                with op.batch_alter_table("adatune_runs") as batch:
                    batch.drop_column("note")
            '''
        )
    )

    def activate() -> str:
        monkeypatch.setattr(migrate, "migrations_location", lambda: str(later))
        return "9000"

    return activate


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh working directory (default store, checkpoints) and no ADATUNE_STORE."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ADATUNE_STORE", raising=False)
    return tmp_path
