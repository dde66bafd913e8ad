"""Checkpoints: loading runs no code, bad files are one line, and a run stopped at any step
(SIGTERM, SIGUSR1 then a crash, a second SIGTERM) resumes to the same result."""

from __future__ import annotations

import dataclasses
import os
import pickle
import shutil
import signal
from pathlib import Path

import pytest
import torch

from adatune.errors import CheckpointError
from adatune.running import checkpoint, signals
from adatune.running.config import TrainConfig
from adatune.running.engine import resume, train
from adatune.running.runtypes import Events
from adatune.store import open_store
from tests._cli import cli

METRICS = ("epoch", "lr", "lr_mean", "mu", "hyper_lr", "train_loss", "train_acc", "val_loss",
           "val_acc", "test_loss", "test_acc", "nonfinite_hypergradients")


def trajectory(store, run_id: int) -> tuple[list[dict], list[dict], list]:
    """Every epoch's metrics, the sampled steps and the LR of every step."""
    detail = store.get_run(run_id)
    epochs = [{k: getattr(e, k) for k in METRICS} for e in detail.epochs]
    return epochs, [dataclasses.asdict(s) for s in detail.steps], list(store.get_step_lrs(run_id))


def config(method: str = "marthe", **kw) -> TrainConfig:
    base = {"method": method, "epochs": 3, "batch_size": 64, "seed": 3, "log_every": 3,
            "mu": 0.9, "checkpoint_dir": "ckpt", "device": "cpu"}
    if method in ("cosine", "staircase"):
        base.update(t_0=1, step_size=1)
    return TrainConfig(**{**base, **kw})


class At(Events):
    """Calls ``action`` once, right after step ``batch`` of ``epoch``."""

    def __init__(self, epoch: int, batch: int, action) -> None:
        self.epoch, self.batch, self.action, self.done = epoch, batch, action, False

    def step_done(self, epoch, batch, loss, lr, mu) -> None:
        if not self.done and (epoch, batch) == (self.epoch, self.batch):
            self.done = True
            self.action()


def send(signum: int):
    return lambda: os.kill(os.getpid(), signum)


class Crash(Exception):
    pass


@pytest.fixture
def store(workdir):
    with open_store(workdir / "adatune.db") as db:
        yield db


@pytest.fixture
def reference(store):
    """Straight runs, one per configuration, to compare the interrupted ones with."""
    cache = {}

    def get(cfg: TrainConfig):
        key = repr(cfg)
        if key not in cache:
            result = train(cfg, store)
            assert result.status == "completed"
            cache[key] = trajectory(store, result.run_id)
        return cache[key]

    return get


# ----------------------------------------------------------------- preemption
@pytest.mark.parametrize("method", [pytest.param("marthe", marks=pytest.mark.slow), "hd",
                                    pytest.param("cosine", marks=pytest.mark.slow)])
def test_sigterm_mid_epoch_checkpoints_and_resumes_to_the_same_result(store, reference,
                                                                     method) -> None:
    cfg = config(method)
    with signals.handle_preemption():
        result = train(cfg, store, events=At(2, 7, send(signal.SIGTERM)))
        assert signals.exit_code() == 143
    assert result.status == "interrupted"
    assert result.reason.startswith("stopped by SIGTERM in epoch 2 after step 7 of ")
    run = store.get_run(result.run_id).run
    assert run.status == "interrupted" and run.error == result.reason and run.epochs == 1
    state = checkpoint.load(Path(result.checkpoint_dir) / "last.pt")
    assert state["epoch"] == 1 and state["partial"]["batches"] == 7
    assert state["partial"]["n_steps"] == 7 and state["partial"]["steps"]
    assert not (Path(result.checkpoint_dir) / "owner.json").exists()
    resumed = resume(store, result.run_id)
    assert resumed.status == "completed"
    assert trajectory(store, result.run_id) == reference(cfg)


@pytest.mark.slow
def test_sigusr1_checkpoints_and_goes_on_and_a_crash_after_it_resumes_from_there(
        store, reference) -> None:
    cfg = config("marthe")
    saved = {}

    def crash() -> None:
        saved.update(checkpoint.load(Path("ckpt") / f"run-{run_ids[0]}" / "last.pt"))
        raise Crash("the machine went away")

    run_ids = []

    class Ids(At):
        def run_started(self, run_id, config, **kw) -> None:
            run_ids.append(run_id)

    events = Ids(2, 5, send(signal.SIGUSR1))
    late = At(2, 9, crash)
    original_step_done = events.step_done

    def both(*args) -> None:
        original_step_done(*args)
        late.step_done(*args)

    events.step_done = both
    with signals.handle_preemption(), pytest.raises(Crash):
        train(cfg, store, events=events)
    assert saved["epoch"] == 1 and saved["partial"]["batches"] == 5  # written after step 5
    assert store.get_run(run_ids[0]).run.status == "failed"
    assert resume(store, run_ids[0]).status == "completed"
    assert trajectory(store, run_ids[0]) == reference(cfg)


def test_sigusr1_does_not_change_the_run(store, reference) -> None:
    cfg = config("hd")
    with signals.handle_preemption():
        result = train(cfg, store, events=At(1, 3, send(signal.SIGUSR1)))
    assert result.status == "completed" and signals.exit_code() == 130
    assert trajectory(store, result.run_id) == reference(cfg)


@pytest.mark.slow
def test_a_second_sigterm_abandons_the_step(store, reference) -> None:
    cfg = config("marthe")

    def twice() -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)  # does not wait for the step to end

    with signals.handle_preemption():
        result = train(cfg, store, events=At(2, 4, twice))
    assert result.status == "interrupted" and "SIGTERM" in result.reason
    state = checkpoint.load(Path(result.checkpoint_dir) / "last.pt")
    assert state["epoch"] == 1 and state["partial"] is None  # back to the end of epoch 1
    assert resume(store, result.run_id).status == "completed"
    assert trajectory(store, result.run_id) == reference(cfg)


def test_a_stop_asked_for_after_the_last_epoch_lets_the_run_complete_and_starts_no_other(
        store) -> None:
    cfg = config("hd", epochs=1)

    class AfterLastEpoch(Events):
        def epoch_done(self, record) -> None:
            os.kill(os.getpid(), signal.SIGTERM)  # during the run's last moments

    with signals.handle_preemption():
        first = train(cfg, store, events=AfterLastEpoch())
        assert first.status == "completed"  # nothing was left to do
        with pytest.raises(signals.Terminated, match="before the next run"):
            train(cfg, store)
        with pytest.raises(signals.Terminated):
            os.kill(os.getpid(), signal.SIGTERM)  # outside a run: at once
    assert [r.id for r in store.list_runs()] == [first.run_id]


def test_sigterm_during_find_alpha_exits_143_and_starts_no_more_probes(workdir, capsys,
                                                                      monkeypatch) -> None:
    from adatune_cli import findalpha

    sent = []

    def step_done(self, epoch, batch, *rest) -> None:
        if not sent:
            sent.append(1)
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(findalpha._SearchProgress, "step_done", step_done)
    code, out, err = cli(capsys, "find-alpha", "--probe-epochs", "1", "--epochs", "1")
    assert code == 143, err
    with open_store("adatune.db") as db:
        runs = db.list_runs()
    assert [(r.kind, r.status) for r in runs] == [("find-alpha", "interrupted"),
                                                 ("probe", "interrupted")]
    assert "SIGTERM" in runs[1].error


def test_sigterm_during_a_sweep_exits_143(workdir, capsys, monkeypatch) -> None:
    from adatune_cli import sweep

    sent = []

    def step_done(self, epoch, batch, *rest) -> None:
        if not sent:
            sent.append(1)
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(sweep._SweepProgress, "step_done", step_done)
    code, out, err = cli(capsys, "sweep", "--method", "constant", "--trials", "3",
                         "--seeds", "1", "--epochs", "1")
    assert code == 143, err
    with open_store("adatune.db") as db:
        runs = db.list_runs()
    assert [r.status for r in runs] == ["interrupted"]


# --------------------------------------------------------- reading checkpoints
def _finished_run(store, **kw) -> tuple[int, Path]:
    result = train(config("hd", epochs=1, **kw), store)
    folder = Path(result.checkpoint_dir)
    store.finish_run(result.run_id, "interrupted", error="test")  # make it resumable
    return result.run_id, folder


class Exploit:
    """Unpickling this runs a shell command that creates a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("how", ["torch.save", "pickle-2", "pickle-5"])
def test_a_malicious_checkpoint_runs_no_code(workdir, store, capsys, how) -> None:
    run_id, folder = _finished_run(store)
    marker = workdir / "PWNED"
    last = folder / "last.pt"
    state = torch.load(last, weights_only=True)
    state["elapsed"] = Exploit(marker)
    if how == "torch.save":
        torch.save(state, last)
    else:
        with open(last, "wb") as f:
            pickle.dump(state, f, protocol=int(how[-1]))
    for args in (["train", "--resume", str(run_id)],):
        code, out, err = cli(capsys, *args)
        assert code == 2, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(
            f"adatune: error: cannot read checkpoint {last}: it holds Python objects"), err
        assert "weights_only=True" in lines[0]
    assert not marker.exists()
    with pytest.raises(CheckpointError):
        checkpoint.load(last, kind="best")
    assert not marker.exists()
    assert store.get_run(run_id).run.status == "interrupted"  # nothing was reopened


def _one_line(capsys, run_id: int, *fragments: str) -> None:
    code, out, err = cli(capsys, "train", "--resume", str(run_id))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("adatune: error: cannot read checkpoint "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_best_copied_over_last_is_one_line(store, capsys) -> None:
    run_id, folder = _finished_run(store)
    shutil.copy(folder / "best.pt", folder / "last.pt")
    _one_line(capsys, run_id, "it is a 'best' checkpoint")
    best = torch.load(folder / "best.pt", weights_only=True)  # an older best.pt: no kind
    torch.save({k: v for k, v in best.items() if k not in ("kind", "format", "version")},
               folder / "last.pt")
    _one_line(capsys, run_id, "it has no 'step'")


@pytest.mark.parametrize("content", [b"", b"not a checkpoint", b"PK\x03\x04 truncated zip"])
def test_a_damaged_checkpoint_is_one_line(store, capsys, content: bytes) -> None:
    run_id, folder = _finished_run(store)
    (folder / "last.pt").write_bytes(content)
    _one_line(capsys, run_id)


def test_a_checkpoint_of_another_model_is_one_line(store, capsys) -> None:
    run_id, folder = _finished_run(store)
    state = torch.load(folder / "last.pt", weights_only=True)
    first = next(iter(state["model"]))
    state["model"][first] = torch.zeros(3, 3)  # another network's layer
    torch.save(state, folder / "last.pt")
    _one_line(capsys, run_id, "it does not fit this run", "size mismatch")
    state["model"] = {"nonsense": torch.zeros(2)}
    torch.save(state, folder / "last.pt")
    _one_line(capsys, run_id, "it does not fit this run")


def test_written_checkpoints_are_plain_data_and_written_whole(store) -> None:
    run_id, folder = _finished_run(store)
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["best.pt", "last.pt", "owner.lock", "run.json"]  # no temporary files
    for name in ("last.pt", "best.pt"):
        state = torch.load(folder / name, weights_only=True)
        assert state["format"] == checkpoint.FORMAT and state["kind"] == name[:-3]
    last = checkpoint.load(folder / "last.pt")
    assert [e["epoch"] for e in last["history"]["epochs"]] == [1]
    assert last["history"]["steps"] and last["partial"] is None
    assert checkpoint.load(folder / "best.pt", kind="best")["config"]["method"] == "hd"


@pytest.mark.slow
def test_a_checkpoint_of_an_older_adatune_still_resumes(store, reference) -> None:
    # adatune 0.1.0 had only the online tuners (a horizon run is stretched when extended)
    result = train(config("marthe", epochs=2, online=True), store)
    last = Path(result.checkpoint_dir) / "last.pt"
    state = torch.load(last, weights_only=True)
    # what adatune 0.1.0 wrote: the last epoch's records under "pending", no marker
    history = state.pop("history")
    state["pending"] = {"epoch": history["epochs"][-1],
                        "steps": [s for s in history["steps"] if s["epoch"] == 2]}
    for key in ("partial", "format", "version", "kind"):
        state.pop(key)
    torch.save(state, last)
    assert resume(store, result.run_id, epochs=3).status == "completed"
    assert trajectory(store, result.run_id) == reference(config("marthe", epochs=3, online=True))
