"""Waiting on events with generous bounds, never on tight deadlines.

The bound only catches a hang: on a slow, loaded machine everything takes
longer, and a test must still pass. Runs are watched through the store itself
(read-only, straight through sqlite3), so a wait ends when the event happens.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

#: The repository root: on the path of a spawned command (for tests.userpkg's factories).
REPO = Path(__file__).resolve().parents[1]

#: Upper bound of any one wait, in seconds (a hang, not slowness, ends a test).
WAIT_S = 1800.0

T = TypeVar("T")


def runs(store: Path) -> list[tuple[int, int, str]]:
    """(id, epochs, status) of every run in an SQLite store; [] while there is no store."""
    if not store.exists():
        return []
    try:
        conn = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=60)
    except sqlite3.OperationalError:
        return []
    try:
        return conn.execute("SELECT id, epochs, status FROM adatune_runs ORDER BY id").fetchall()
    except sqlite3.OperationalError:  # tables not there yet
        return []
    finally:
        conn.close()


def wait_for(predicate: Callable[[], T], *, what: str, proc: subprocess.Popen | None = None,
             timeout: float = WAIT_S) -> T:
    """Poll ``predicate`` until it returns something truthy, and return that.

    Fails at once if ``proc`` exits first, and after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    pause = 0.01
    while True:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise AssertionError(f"the process exited ({proc.returncode}) before {what}:\n"
                                 f"{stderr}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} after {timeout:.0f} s")
        time.sleep(pause)
        pause = min(pause * 2, 0.1)


def epoch_reached(store: Path, epochs: int, proc: subprocess.Popen) -> int:
    """Wait until the store's first run has ``epochs`` epochs; return its id."""
    def reached() -> int | None:
        found = runs(store)
        return found[0][0] if found and found[0][1] >= epochs else None

    return wait_for(reached, what=f"epoch {epochs} in {store}", proc=proc)


def finish(proc: subprocess.Popen, timeout: float = WAIT_S) -> int:
    """The exit code of ``proc``, however long it takes (within the bound)."""
    return proc.wait(timeout=timeout)


def spawn_cli(store: Path, *args: str, hold_after: int | None = None) -> subprocess.Popen:
    """``adatune ARGS`` in a subprocess on ``store`` (run in its folder; stderr kept).

    ``hold_after=N``: the process waits for ever once it has recorded N epochs
    (tests/_held.py), so that a SIGKILL lands after exactly N of them.
    """
    env = {**os.environ, "ADATUNE_STORE": str(store), "PYTHONPATH": str(REPO)}
    command = (["-m", "adatune_cli"] if hold_after is None
               else ["-m", "tests._held", str(hold_after)])
    return subprocess.Popen([sys.executable, *command, *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=store.parent)
