"""A run in a real `adatune` process, stopped every way it can be: SIGKILL, Ctrl-C, SIGTERM,
SIGUSR1 then SIGKILL, a power cut that takes back the store's last commits, and two
processes resuming it at once. Every time, `--resume` ends where an uninterrupted run ends
(its epochs, its sampled steps, and the LR of every step).

Waits are on the store reaching an epoch (see tests/_wait.py), with generous bounds.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import signal
import sqlite3
from pathlib import Path

import pytest

from adatune.errors import CheckpointError
from adatune.running import checkpoint
from adatune.running.folder import run_dir
from adatune.store import open_store
from tests._wait import WAIT_S, epoch_reached, finish, runs, wait_for
from tests._wait import spawn_cli as spawn

EPOCHS = 5
RUN = ["train", "--tuner", "marthe", "--epochs", str(EPOCHS), "--batch-size", "16", "--mu",
       "0.9", "--seed", "5", "--log-every", "7"]
METRICS = ("epoch", "lr", "lr_mean", "mu", "hyper_lr", "train_loss", "train_acc", "val_loss",
           "val_acc", "test_loss", "test_acc", "nonfinite_hypergradients")

# Each test trains in subprocesses that are killed and resumed: the slow selection.
pytestmark = [pytest.mark.timeout(2 * WAIT_S), pytest.mark.slow]


def trajectory(store: Path, run_id: int) -> tuple[list[dict], list[dict], list]:
    with open_store(store, create=False) as db:
        detail = db.get_run(run_id)
        lrs = list(db.get_step_lrs(run_id))
    return ([{k: getattr(e, k) for k in METRICS} for e in detail.epochs],
            [dataclasses.asdict(s) for s in detail.steps], lrs)


def status(store: Path, run_id: int):
    with open_store(store, create=False) as db:
        return db.get_run(run_id, steps=False).run


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> tuple[list[dict], list[dict], list]:
    """The uninterrupted run, in its own process."""
    store = tmp_path_factory.mktemp("straight") / "straight.db"
    proc = spawn(store, *RUN)
    assert finish(proc) == 0, proc.stderr.read().decode()
    found = trajectory(store, 1)
    assert [len(e.lrs) for e in found[2]] == [len(found[2][0].lrs)] * EPOCHS  # every step
    return found


def resume_to_the_end(store: Path, run_id: int, straight) -> None:
    proc = spawn(store, "train", "--resume", str(run_id))
    assert finish(proc) == 0, proc.stderr.read().decode()
    assert status(store, run_id).status == "completed"
    assert trajectory(store, run_id) == straight


@pytest.mark.parametrize("sig, code", [(signal.SIGKILL, -signal.SIGKILL),
                                       (signal.SIGINT, 130)], ids=["SIGKILL", "Ctrl-C"])
def test_killed_run_keeps_its_epochs_and_resumes_to_the_same_result(tmp_path, straight, sig,
                                                                    code) -> None:
    store = tmp_path / "killed.db"
    proc = spawn(store, *RUN, hold_after=1 if sig == signal.SIGKILL else None)
    run_id = epoch_reached(store, 1, proc)
    proc.send_signal(sig)
    assert finish(proc) == code
    kept = trajectory(store, run_id)[0]
    assert 1 <= len(kept) < EPOCHS
    assert kept == straight[0][: len(kept)]  # nothing finished was lost
    if sig == signal.SIGINT:
        assert status(store, run_id).status == "interrupted"
    resume_to_the_end(store, run_id, straight)


def test_sigterm_checkpoints_marks_the_run_interrupted_and_exits_143(tmp_path, straight):
    store = tmp_path / "term.db"
    proc = spawn(store, *RUN)
    run_id = epoch_reached(store, 1, proc)
    proc.send_signal(signal.SIGTERM)
    assert finish(proc) == 143, proc.stderr.read().decode()
    run = status(store, run_id)
    assert run.status == "interrupted"  # at once, not after the 300 s staleness cutoff
    assert re.fullmatch(r"stopped by SIGTERM (in epoch \d+ after step \d+ of \d+|after epoch "
                        r"\d+); checkpointed there, a resume continues from it",
                        run.error), run.error
    folder = run_dir(run.config["checkpoint_dir"], run_id)
    state = checkpoint.load(folder / "last.pt")
    assert (state["partial"] is None) == ("after epoch" in run.error)
    resume_to_the_end(store, run_id, straight)


def _partial_checkpoint(folder: Path):
    try:
        state = checkpoint.load(folder / "last.pt")
    except CheckpointError:  # not written yet
        return None
    return state if state.get("partial") else None


def test_sigusr1_checkpoints_mid_epoch_and_goes_on(tmp_path, straight) -> None:
    store = tmp_path / "usr1.db"
    proc = spawn(store, *RUN)
    run_id = epoch_reached(store, 1, proc)
    folder = run_dir(status(store, run_id).config["checkpoint_dir"], run_id)
    for _ in range(EPOCHS):  # if the epoch ended before the checkpoint was seen, ask again
        epochs = runs(store)[0][1]
        assert epochs < EPOCHS, "the run ended before a mid-epoch checkpoint was seen"
        proc.send_signal(signal.SIGUSR1)
        seen = wait_for(lambda e=epochs: _partial_checkpoint(folder)
                        or (runs(store)[0][1] > e and "the epoch ended"),
                        what="a mid-epoch checkpoint", proc=proc)
        if isinstance(seen, dict):
            state = seen
            break
    else:
        raise AssertionError("no mid-epoch checkpoint after SIGUSR1")
    assert proc.poll() is None  # SIGUSR1 did not stop the run
    assert 1 <= state["partial"]["batches"] and state["epoch"] >= 1
    proc.send_signal(signal.SIGKILL)  # the job's time is up
    assert finish(proc) == -signal.SIGKILL
    resume_to_the_end(store, run_id, straight)


def test_a_power_cut_that_takes_back_the_stores_last_commits_loses_nothing(tmp_path,
                                                                          straight) -> None:
    store = tmp_path / "power.db"
    proc = spawn(store, *RUN)
    run_id = epoch_reached(store, 1, proc)
    snapshot = tmp_path / "snapshot.db"  # the store as the disk held it before the cut
    with sqlite3.connect(store, timeout=60) as live, sqlite3.connect(snapshot) as copy:
        live.backup(copy)
    saved = runs(snapshot)[0][1]
    epoch_reached(store, saved + 2, proc)
    proc.send_signal(signal.SIGKILL)
    assert finish(proc) == -signal.SIGKILL
    for suffix in ("", "-wal", "-shm"):
        Path(f"{store}{suffix}").unlink(missing_ok=True)
    shutil.copy(snapshot, store)
    assert runs(store)[0][1:] == (saved, "running")  # two epochs and more are gone
    resume_to_the_end(store, run_id, straight)  # the checkpoint carried them


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_two_processes_resuming_one_run_at_once_one_goes_on(tmp_path, straight, stop) -> None:
    store = tmp_path / "race.db"
    proc = spawn(store, *RUN, hold_after=1 if stop == signal.SIGKILL else None)
    run_id = epoch_reached(store, 1, proc)
    proc.send_signal(stop)
    finish(proc)
    racers = [spawn(store, "train", "--resume", str(run_id)) for _ in range(2)]
    codes = [finish(p) for p in racers]
    errors = [p.stderr.read().decode() for p in racers]
    assert sorted(codes) == [0, 2], (codes, errors)
    loser = errors[codes.index(2)]
    lines = [line for line in loser.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in loser, loser
    # "still running" names the process once its owner.json is written (not yet, early on)
    assert re.search(rf"run {run_id} (is still running( \(pid \d+ on .+\))?|was resumed|"
                     r"already completed)", lines[0]), lines[0]
    assert status(store, run_id).status == "completed"
    assert trajectory(store, run_id) == straight
