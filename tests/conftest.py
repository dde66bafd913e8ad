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
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
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
