"""`adatune sweep`: trials as runs of the store, the shared Optuna study, Ctrl-C, workers.

Runs are tiny (the embedded digits, 2 epochs, batch 128, the constant schedule
unless the test needs another method). The multi-process tests start real
``python -m adatune_cli sweep`` workers on one SQLite file and on the real
PostgreSQL server of the store tests.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from adatune.errors import ConfigError
from adatune.running.config import TrainConfig
from adatune.search.space import parse_space
from adatune.search.sweep import SweepConfig, SweepEvents, run_sweep
from adatune.store import open_store
from adatune.store.records import NewRun
from tests._cli import cli
from tests._wait import WAIT_S, wait_for
from tests._wait import runs as runs_in

optuna.logging.set_verbosity(optuna.logging.WARNING)
TrialState = optuna.trial.TrialState
FAST = ["--epochs", "2", "--batch-size", "128"]
SAFE = {"lr": {"type": "float", "low": 0.01, "high": 0.1, "log": True}}  # never diverges here
SAFE_SPACE = parse_space(SAFE, method="constant")
DIVERGING = parse_space({"lr": {"type": "float", "low": 50.0, "high": 100.0, "log": True}},
                        method="constant")


def base(tmp_path: Path, method: str = "constant", **kw) -> TrainConfig:
    values = {"epochs": 2, "batch_size": 128, "patience": 10,
              "checkpoint_dir": str(tmp_path / "ckpt"), **kw}
    return TrainConfig(method=method, **values)


def trials_of(url: str, study: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=study, storage=url).get_trials()


def sweep_meta(run) -> dict:
    return run.config["extra"]["sweep"]


# ------------------------------------------------------------------ the library


def test_every_trial_is_runs_of_the_store_linked_to_its_optuna_trial(tmp_path):
    with open_store(tmp_path / "s.db") as store:
        result = run_sweep(base(tmp_path), SweepConfig("constant", trials=2, seeds=2,
                                                       study="s1", space=SAFE_SPACE), store)
        runs = store.list_runs()
        url = store.url
    assert result.stopped == "done" and [t.number for t in result.trials] == [0, 1]
    assert len(runs) == 4
    assert {(r.kind, r.experiment, r.status) for r in runs} == {("sweep", "s1", "completed")}
    assert sorted((sweep_meta(r)["trial"], r.seed) for r in runs) == [(0, 0), (0, 1), (1, 0),
                                                                      (1, 1)]
    trials = trials_of(url, "s1")
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    for t in trials:
        mine = [r for r in runs if sweep_meta(r)["trial"] == t.number]
        assert t.user_attrs["adatune_runs"] == [r.id for r in mine]
        assert t.value == pytest.approx(sum(r.best_val_acc for r in mine) / 2)  # the objective
        for r in mine:
            assert r.name == f"s1/trial-{t.number}"
            assert r.config["lr"] == t.params["lr"] == sweep_meta(r)["params"]["lr"]
            assert sweep_meta(r)["seed_index"] == r.seed and sweep_meta(r)["study"] == "s1"
            assert r.config["patience"] == 10 and r.config["epochs"] == 2
    assert result.status.counted == 2 and result.status.complete == 2
    best = max(trials, key=lambda t: t.value)
    assert (result.status.best.number, result.status.best.value) == (best.number, best.value)
    assert result.status.best.values == {"lr": best.params["lr"]}

    # The study goes on where it stopped: --trials counts the whole study.
    with open_store(tmp_path / "s.db") as store:
        more = run_sweep(base(tmp_path), SweepConfig("constant", trials=3, seeds=2,
                                                     study="s1", space=SAFE_SPACE), store)
        assert [t.number for t in more.trials] == [2]
        again = run_sweep(base(tmp_path), SweepConfig("constant", trials=3, seeds=2,
                                                      study="s1", space=SAFE_SPACE), store)
        assert again.trials == () and again.stopped == "done"
        assert len(store.list_runs()) == 6


def test_diverged_trials_are_recorded_final_and_counted(tmp_path):
    with open_store(tmp_path / "s.db") as store:
        result = run_sweep(base(tmp_path), SweepConfig("constant", trials=2, seeds=1,
                                                       study="d", space=DIVERGING), store)
        runs = store.list_runs()
        url = store.url
    assert [t.state for t in result.trials] == ["diverged", "diverged"]
    assert all(t.reason for t in result.trials)
    assert [r.status for r in runs] == ["diverged", "diverged"]
    assert [t.state for t in trials_of(url, "d")] == [TrialState.PRUNED] * 2  # not retried
    assert result.status.pruned == 2 and result.status.best is None


def test_joining_a_study_needs_the_same_sweep(tmp_path):
    with open_store(tmp_path / "s.db") as store:
        sweep = SweepConfig("constant", trials=1, seeds=1, study="j", space=DIVERGING)
        run_sweep(base(tmp_path), sweep, store)
        for config, other, problem in [
            (base(tmp_path, epochs=3), sweep, "started with epochs = 2 (this command: 3)"),
            (base(tmp_path), SweepConfig("constant", trials=1, seeds=2, study="j",
                                         space=DIVERGING), "started with seeds 1"),
            (base(tmp_path), SweepConfig("constant", trials=1, seeds=1, study="j"),
             "another search space"),
            (base(tmp_path, "cosine"), SweepConfig("cosine", trials=1, seeds=1, study="j"),
             "started with method 'constant'"),
        ]:
            with pytest.raises(ConfigError, match=re.escape(problem)):
                run_sweep(config, other, store)
        # Where runs go and how they are checkpointed may differ between workers.
        local = base(tmp_path).replace(device="cpu", checkpoint_dir=str(tmp_path / "elsewhere"),
                                       log_every=3)
        assert run_sweep(local, SweepConfig("constant", trials=2, seeds=1, study="j",
                                            space=DIVERGING), store).trials[0].number == 1
        assert len(store.list_runs()) == 2


def test_a_worker_joining_as_another_writes_its_marker_and_first_trial(tmp_path, monkeypatch):
    """The interleaving of two workers starting one study at once.

    Worker B created the study; just as this worker looks, B writes its marker and
    asks for its first trial. This worker must join, not call the study foreign.
    """
    from adatune.search import sweep as sweep_mod

    sweep = SweepConfig("constant", trials=2, seeds=1, study="race", space=DIVERGING)
    config = base(tmp_path)
    with open_store(tmp_path / "s.db") as store:
        url = store.url
        optuna.create_study(study_name="race", storage=url, direction="maximize")
        real = optuna.study.Study.get_trials
        other_done = []

        def get_trials(self, *args, **kwargs):
            if not other_done:  # worker B, between this worker's reads
                other_done.append(True)
                theirs = optuna.load_study(study_name="race", storage=url)
                theirs.set_user_attr(sweep_mod.STUDY_ATTR,
                                     sweep_mod._definition(config, sweep, DIVERGING))
                theirs.ask()
            return real(self, *args, **kwargs)

        monkeypatch.setattr(optuna.study.Study, "get_trials", get_trials)
        result = run_sweep(config, sweep, store)
    assert other_done and result.stopped == "done"
    assert [t.number for t in result.trials] == [1]  # B's trial 0 is B's (or failed as stale)


class _CtrlC(SweepEvents):
    """Ctrl-C during the first step of trial ``at`` (or as the trial starts)."""

    def __init__(self, at: int, where: str) -> None:
        self.at, self.where, self.trial = at, where, None

    def trial_started(self, number, values, seeds) -> None:
        self.trial = number
        if number == self.at and self.where == "trial":
            raise KeyboardInterrupt

    def step_done(self, epoch, batch, loss, lr, mu) -> None:
        if self.trial == self.at and self.where == "step":
            raise KeyboardInterrupt


def test_ctrl_c_fails_the_trial_and_the_same_sweep_fills_its_place(tmp_path):
    sweep = SweepConfig("constant", trials=3, seeds=1, study="c", space=SAFE_SPACE)
    with open_store(tmp_path / "s.db") as store:
        result = run_sweep(base(tmp_path), sweep, store, events=_CtrlC(1, "step"))
        assert result.stopped == "interrupted"
        assert [(t.number, t.state) for t in result.trials] == [(0, "complete"),
                                                                (1, "interrupted")]
        assert [r.status for r in store.list_runs()] == ["completed", "interrupted"]
        states = [t.state for t in trials_of(store.url, "c")]
        assert states == [TrialState.COMPLETE, TrialState.FAIL]  # nothing left RUNNING
        # Ctrl-C outside a run (here as the trial starts): its trial fails, no run is left.
        result = run_sweep(base(tmp_path), sweep, store, events=_CtrlC(2, "trial"))
        assert result.stopped == "interrupted" and result.trials == ()
        assert len(store.list_runs()) == 2
        assert trials_of(store.url, "c")[2].state == TrialState.FAIL
        # Failed trials do not count: the same command runs two more.
        result = run_sweep(base(tmp_path), sweep, store)
        assert [t.number for t in result.trials] == [3, 4]
        assert result.status.complete == 3 and result.status.failed == 2
        assert [r.status for r in store.list_runs()] == ["completed", "interrupted",
                                                          "completed", "completed"]


def test_trials_of_dead_workers_are_failed_and_their_places_filled(tmp_path, monkeypatch):
    from adatune.store import repository

    sweep = SweepConfig("constant", trials=2, seeds=1, study="z", space=DIVERGING)
    with open_store(tmp_path / "s.db") as store:
        run_sweep(base(tmp_path), dataclasses.replace(sweep, trials=1), store)
        study = optuna.load_study(study_name="z", storage=store.url)
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)
        on_this_host = study.ask()  # its worker process has exited
        on_this_host.set_user_attr("adatune_worker", {"host": socket.gethostname(),
                                                      "pid": int(dead.stdout)})
        elsewhere = study.ask()  # another machine; its run stopped sending heartbeats
        run_id = store.create_run(NewRun(kind="sweep", method="constant", optimizer="sgd",
                                         network="mlp", dataset="digits", seed=0, config={},
                                         experiment="z"))
        elsewhere.set_user_attr("adatune_worker", {"host": "elsewhere", "pid": 1})
        elsewhere.set_user_attr("adatune_runs", [run_id])
        alive = study.ask()  # another machine, no run yet: it may well be loading data
        alive.set_user_attr("adatune_worker", {"host": "elsewhere", "pid": 2})
        monkeypatch.setattr(repository, "STALE_AFTER_S", 0.0)
        result = run_sweep(base(tmp_path), dataclasses.replace(sweep, trials=3),
                           store)
        states = [t.state for t in trials_of(store.url, "z")]
    assert states == [TrialState.PRUNED, TrialState.FAIL, TrialState.FAIL, TrialState.RUNNING,
                      TrialState.PRUNED]
    assert [t.number for t in result.trials] == [4]


# ------------------------------------------------------------------ the CLI


def test_cli_sweep_records_runs_with_their_experiment(workdir, capsys):
    code, out, err = cli(capsys, "sweep", "--method", "cosine", "--trials", "2", "--seeds", "1",
                         "--study", "cli-s", "--t-mult", "1", "--lr", "0.05", *FAST)
    assert code == 0, err
    assert "study cli-s: 2 of 2 trials (2 complete" in out and "best: trial" in out
    assert "t_0=" in out and "t_mult=" not in out and "lr=" not in out  # fixed by the options
    assert "Traceback" not in err
    code, out, _ = cli(capsys, "runs", "list", "--json", "--kind", "sweep")
    rows = json.loads(out)
    assert len(rows) == 2 and {(r["experiment"], r["kind"]) for r in rows} == {("cli-s", "sweep")}
    with open_store("adatune.db") as db:
        runs = db.list_runs(experiment="cli-s")
    assert {(r.config["t_mult"], r.config["lr"]) for r in runs} == {(1, 0.05)}
    assert {r.config["patience"] for r in runs} == {10}  # the sweep's default patience
    assert all(1 <= r.config["t_0"] <= 10 for r in runs)
    assert [r.config["t_0"] for r in runs] == [sweep_meta(r)["params"]["t_0"] for r in runs]


def test_cli_show_space(workdir, capsys):
    tomllib = pytest.importorskip("tomllib")
    code, out, _ = cli(capsys, "sweep", "--method", "marthe", "--show-space")
    assert code == 0 and set(tomllib.loads(out)) == {"lr", "hyper_lr", "alpha", "mu"}
    code, out, _ = cli(capsys, "sweep", "--method", "marthe", "--show-space", "--lr", "0.1",
                       "--mu", "auto")
    assert code == 0 and set(tomllib.loads(out)) == {"hyper_lr", "alpha"}
    assert "fixed on the command line: lr, mu" in out
    Path("s.json").write_text('{"lr": {"type": "float", "low": 0.01, "high": 0.1}}')
    code, out, _ = cli(capsys, "sweep", "--method", "hd", "--show-space", "--space", "s.json")
    assert code == 0 and tomllib.loads(out) == {"lr": {"type": "float", "low": 0.01,
                                                       "high": 0.1}}
    assert not Path("adatune.db").exists()
    code, out, _ = cli(capsys, "sweep", "--help")
    assert code == 0 and "staircase: lr: log-uniform [0.001, 1]; step_size" in " ".join(
        out.split())


@pytest.mark.parametrize("args, problem", [
    (["--method", "sgd"], "unknown method 'sgd'"),
    (["--method", "marthe", "--trials", "0"], "invalid trials: 0"),
    (["--method", "marthe", "--seeds", "0"], "invalid seeds: 0"),
    (["--method", "marthe", "--sampler", "grid"], "unknown sampler"),
    (["--method", "marthe", "--timeout", "-1"], "invalid timeout"),
    (["--method", "marthe", "--space", "bad.toml"], "is not valid TOML"),
    (["--method", "marthe", "--space", "missing.json"], "cannot read the space file"),
    (["--method", "cosine", "--space", "mu.json"], "'mu' has no effect on cosine"),
    (["--method", "constant", "--lr", "0.1"], "nothing left to sample: lr"),
    (["--method", "marthe", "--epochs", "0"], "invalid epochs"),
    (["--method", "marthe", "--trials", "many"], "--trials"),
    ([], "--method"),
])
def test_cli_bad_input_exits_2_with_one_line_and_writes_nothing(workdir, capsys, args, problem):
    Path("bad.toml").write_text("[lr\n")
    Path("mu.json").write_text('{"mu": {"type": "categorical", "choices": [0.9]}}')
    code, out, err = cli(capsys, "sweep", *args)
    assert code == 2, (out, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("adatune: error:"), err
    assert problem in lines[0]
    assert not Path("adatune.db").exists()


# ------------------------------------------------------------------ workers


def _worker(store_url: str, cwd: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "ADATUNE_STORE": store_url, "COLUMNS": "120"}
    return subprocess.Popen([sys.executable, "-m", "adatune_cli", "sweep", *args], env=env,
                            cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_two_workers_share_one_study(store_url, tmp_path):
    """Two processes, one store (SQLite file, or PostgreSQL): 4 trials, 4 runs, no duplicate."""
    space = tmp_path / "safe.json"
    space.write_text(json.dumps(SAFE))
    args = ["--method", "constant", "--trials", "4", "--seeds", "1", "--study", "shared",
            "--space", str(space), "--checkpoint-dir", str(tmp_path / "ckpt"), *FAST]
    workers = [_worker(store_url, tmp_path, *args) for _ in range(2)]
    outputs = [w.communicate(timeout=WAIT_S) for w in workers]
    for w, (out, err) in zip(workers, outputs):
        assert w.returncode == 0, err
        assert "locked" not in err and "Traceback" not in err, err
        assert "study shared: 4 of 4 trials" in out  # (some maybe still running elsewhere)
    with open_store(store_url) as db:
        runs = db.list_runs()
    trials = trials_of(store_url, "shared")
    counted = [t for t in trials if not t.user_attrs.get("adatune_surplus")]
    assert [t.state for t in counted] == [TrialState.COMPLETE] * 4
    assert len(runs) == 4 and {(r.kind, r.experiment) for r in runs} == {("sweep", "shared")}
    assert sorted(sweep_meta(r)["trial"] for r in runs) == sorted(t.number for t in counted)
    assert sorted(i for t in counted for i in t.user_attrs["adatune_runs"]) == [r.id for r in runs]
    # a trial given back by a worker that lost the race for the last place has no run
    assert all(t.state == TrialState.FAIL and not t.user_attrs.get("adatune_runs")
               for t in trials if t not in counted)


@pytest.mark.slow
def test_ctrl_c_stops_a_worker_and_leaves_the_study_consistent(tmp_path):
    store = tmp_path / "c.db"
    worker = _worker(str(store), tmp_path, "--method", "constant", "--trials", "50", "--seeds",
                     "1", "--study", "c", "--epochs", "40", "--batch-size", "16",
                     "--lr", "0.01", "--space", _lr_space(tmp_path))
    wait_for(lambda: any(epochs >= 1 for _, epochs, _ in runs_in(store)),
             what="a sweep run's first epoch", proc=worker)
    worker.send_signal(signal.SIGINT)
    out, err = worker.communicate(timeout=WAIT_S)
    assert worker.returncode == 130, err
    assert "interrupted" in out and "Traceback" not in err
    with open_store(store) as db:
        [run] = db.list_runs()
    assert run.status == "interrupted" and run.epochs >= 1
    [trial] = trials_of(f"sqlite:///{store}", "c")
    assert trial.state == TrialState.FAIL and trial.user_attrs["adatune_runs"] == [run.id]


def _lr_space(tmp_path: Path) -> str:
    # --lr on the command line fixes lr: sample the momentum instead
    path = tmp_path / "space.json"
    path.write_text('{"momentum": {"type": "float", "low": 0.5, "high": 0.9}}')
    return str(path)


def test_a_worker_that_loses_the_race_for_the_last_place_gives_its_trial_back(tmp_path,
                                                                               monkeypatch):
    from adatune.search import sweep as sweep_module

    sweep = SweepConfig("constant", trials=1, seeds=1, study="r", space=DIVERGING)
    with open_store(tmp_path / "s.db") as store:
        run_sweep(base(tmp_path), sweep, store)
        real_count = sweep_module._count
        # Another worker took the last place between this worker's look and its ask().
        monkeypatch.setattr(sweep_module, "_count", lambda study, before=None: (
            real_count(study, before=before) - (before is None)))
        result = run_sweep(base(tmp_path), sweep, store)
        assert result.trials == () and result.stopped == "done"
        assert len(store.list_runs()) == 1
        [first, given_back] = trials_of(store.url, "r")
        assert given_back.state == TrialState.FAIL and given_back.user_attrs["adatune_surplus"]
        assert given_back.params == {}  # nothing was sampled for it
        assert result.status.failed == 0 and result.status.counted == 1
