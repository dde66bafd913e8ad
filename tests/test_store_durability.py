"""Real processes writing one store: concurrent SQLite writers, and SIGKILL mid-run."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from sqlalchemy import create_engine, update

from adatune.store import open_store
from adatune.store.orm import RunRow
from tests._wait import WAIT_S, wait_for

RUNS, EPOCHS, STEPS = 3, 25, 20

_COMMON = """
import sys, time
from pathlib import Path
from adatune.store import EpochRecord, NewRun, StepRecord, open_store

def new_run(name):
    return NewRun(kind="train", method="marthe", optimizer="sgd", network="mlp",
                  dataset="digits", seed=1, config={"worker": name},
                  name=name, experiment="shared")

def epoch(e):
    return EpochRecord(epoch=e, lr=0.1 / e, lr_mean=0.1, mu=0.99, hyper_lr=1e-4,
                       train_loss=1.0 / e, train_acc=0.5, val_loss=1.1 / e,
                       val_acc=0.01 * e, test_loss=1.2, test_acc=0.4, elapsed_s=0.5 * e)

def steps(e, n):
    return [StepRecord(step=(e - 1) * n + k, epoch=e, lr=0.1, mu=0.99, hyper_lr=1e-4,
                       hypergradient=1e-6 * k, train_loss=1.0) for k in range(n)]
"""

WRITER = (
    _COMMON
    + """
url, workdir, worker = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
RUNS, EPOCHS, STEPS = (int(a) for a in sys.argv[4:7])
(workdir / f"ready-{worker}").touch()
while not (workdir / "go").exists():   # start together, after the slow imports
    time.sleep(0.002)
store = open_store(url)                 # all four may be creating the store right now
for r in range(RUNS):
    run_id = store.create_run(new_run(f"w{worker}-r{r}"))
    for e in range(1, EPOCHS + 1):
        store.record_epoch(run_id, epoch(e), steps(e, STEPS))
        store.heartbeat(run_id)
    store.finish_run(run_id, "completed", summary={"worker": worker})
store.close()
"""
)

KILLED = (
    _COMMON
    + """
url, pause = sys.argv[1], float(sys.argv[2])
store = open_store(url)
run_id = store.create_run(new_run("victim"))
print("run", run_id, flush=True)
for e in range(1, 100000):
    store.record_epoch(run_id, epoch(e), steps(e, 20))
    print("committed", e, flush=True)
    time.sleep(pause)
"""
)


def _write_script(tmp_path: Path, name: str, source: str) -> Path:
    script = tmp_path / name
    script.write_text(textwrap.dedent(source))
    return script


@pytest.mark.slow
def test_four_processes_write_one_sqlite_file_at_once(tmp_path: Path) -> None:
    db = tmp_path / "shared.db"  # does not exist yet: the writers race to create it
    script = _write_script(tmp_path, "writer.py", WRITER)
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(script),
                str(db),
                str(tmp_path),
                str(w),
                str(RUNS),
                str(EPOCHS),
                str(STEPS),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(4)
    ]
    def started() -> bool:
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        return all((tmp_path / f"ready-{w}").exists() for w in range(4))

    wait_for(started, what="the writers to start")
    (tmp_path / "go").touch()
    results = [p.communicate(timeout=WAIT_S) for p in procs]
    for proc, (_out, err) in zip(procs, results):
        assert "locked" not in err.lower() and "busy" not in err.lower(), err
        assert proc.returncode == 0, err

    with open_store(db) as store:
        runs = store.list_runs()
        assert sorted(r.name for r in runs) == sorted(
            f"w{w}-r{r}" for w in range(4) for r in range(RUNS)
        )
        assert {r.status for r in runs} == {"completed"}
        assert store.list_experiments() == ["shared"]
        for run in runs:
            detail = store.get_run(run.id)
            assert [e.epoch for e in detail.epochs] == list(range(1, EPOCHS + 1))
            assert len(detail.steps) == EPOCHS * STEPS
            assert run.epochs == EPOCHS and run.best_epoch == EPOCHS
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("SELECT count(*) FROM adatune_steps").fetchone() == (
            4 * RUNS * EPOCHS * STEPS,
        )


@pytest.mark.parametrize("pause", [0.05, 0.0], ids=["between-epochs", "mid-write"])
def test_sigkilled_writer_keeps_every_committed_epoch(
    store_url: str, tmp_path: Path, pause: float
) -> None:
    """Killed while idle between epochs, or at any moment while writing the next one."""
    script = _write_script(tmp_path, "killed.py", KILLED)
    proc = subprocess.Popen(
        [sys.executable, str(script), store_url, str(pause)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    committed = 0
    run_id = None
    try:
        for line in proc.stdout:
            word, value = line.split()
            if word == "run":
                run_id = int(value)
            else:
                committed = int(value)
            if committed >= 8:
                break
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=WAIT_S)
        # the rest of stdout: what this reader had buffered, then what was in the pipe
        rest, err = proc.stdout.read(), proc.stderr.read()
    assert proc.returncode == -signal.SIGKILL, err
    assert run_id is not None and committed >= 8, err
    # Without a pause the writer runs ahead of this reader: what it reported before the
    # kill but this reader had not read yet counts as committed too.
    committed = max([committed, *(int(line.split()[1]) for line in rest.splitlines()
                                  if line.startswith("committed "))])

    with open_store(store_url) as store:
        detail = store.get_run(run_id)
        stored = [e.epoch for e in detail.epochs]
        # every epoch reported as committed is there, in order, with nothing half-written
        assert stored == list(range(1, len(stored) + 1))
        assert len(stored) >= committed
        assert len(stored) <= committed + 1  # at most the one in flight also made it
        assert sorted({s.epoch for s in detail.steps}) == stored
        assert len(detail.steps) == 20 * len(stored)
        assert detail.run.epochs == len(stored)
        assert detail.run.status == "running"  # its heartbeat is still fresh

        # once the heartbeat is stale the dead run is shown as interrupted
        engine = create_engine(store.url)
        try:
            with engine.begin() as conn:
                conn.execute(
                    update(RunRow)
                    .where(RunRow.id == run_id)
                    .values(heartbeat_at=detail.run.heartbeat_at.replace(year=2000))
                )
        finally:
            engine.dispose()
        assert store.get_run(run_id).run.status == "interrupted"
        assert [r.id for r in store.list_runs(status="interrupted")] == [run_id]
    if store_url.startswith("sqlite:"):
        path = store_url.removeprefix("sqlite:///")
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
