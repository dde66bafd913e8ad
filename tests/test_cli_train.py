"""`adatune train` / `baseline` / `runs` through the entry point, on the embedded dataset."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from adatune.store import open_store
from tests._cli import cli

METRICS = ("epoch", "lr", "lr_mean", "mu", "hyper_lr", "train_loss", "train_acc", "val_loss",
           "val_acc", "test_loss", "test_acc")


def _epochs(store: str, run_id: int) -> list[dict]:
    with open_store(store) as db:
        detail = db.get_run(run_id)
    return [{k: getattr(e, k) for k in METRICS} for e in detail.epochs]


@pytest.mark.parametrize("tuner", ["marthe", "rtho", "hd"])
def test_train_records_every_epoch_of_each_tuner(workdir, capsys, tuner):
    code, out, _ = cli(capsys, "train", "--tuner", tuner, "--epochs", "3", "--name", "t1",
                       "--experiment", "exp")
    assert code == 0, out
    with open_store("adatune.db") as db:
        [run] = db.list_runs()
        detail = db.get_run(run.id)
    assert (run.kind, run.method, run.status, run.epochs) == ("train", tuner, "completed", 3)
    assert run.name == "t1" and run.experiment == "exp"
    assert [e.epoch for e in detail.epochs] == [1, 2, 3]
    assert all(e.hyper_lr is not None and e.mu is not None for e in detail.epochs)
    assert detail.steps and all(s.hypergradient is not None for s in detail.steps[1:])
    lrs = [s.lr for s in detail.steps]
    assert max(lrs) != min(lrs)  # the LR adapted
    assert run.best_val_acc > 0.5 and run.test_acc is not None
    assert f"run {run.id} completed" in out
    assert (workdir / "adatune-runs" / f"run-{run.id}" / "best.pt").exists()


@pytest.mark.parametrize("scheduler, method", [
    ("constant", "constant"), ("staircase", "staircase"), ("exponential", "exponential"),
    ("cosine", "cosine"), ("ed", "exponential"), ("cyclic", "cosine"), ("hd", "hd")])
def test_baseline_runs_each_schedule(workdir, capsys, scheduler, method):
    code, out, _ = cli(capsys, "baseline", "--lr-scheduler", scheduler, "--epochs", "2",
                       "--step-size", "1", "--t-0", "1")
    assert code == 0, out
    with open_store("adatune.db") as db:
        [run] = db.list_runs()
        detail = db.get_run(run.id)
    assert run.method == method and run.status == "completed" and run.epochs == 2
    assert run.kind == ("train" if method == "hd" else "baseline")
    if method in ("staircase", "exponential"):
        assert detail.epochs[1].lr < detail.epochs[0].lr
    if method == "constant":
        assert {e.lr for e in detail.epochs} == {0.05}


# The two command lines of the seed README, with the embedded data appended.
SEED_LINES = [
    "baseline --network vgg --dataset cifar_10 --optimizer sgd --momentum 0.9 "
    "--lr-scheduler cyclic",
    "train --network vgg --dataset cifar_10 --optimizer sgd --momentum 0.9 --hyper-lr 1e-8",
]


@pytest.mark.parametrize("line", SEED_LINES, ids=["baselines.py", "rtho.py"])
def test_seed_readme_command_lines_work(workdir, capsys, line):
    args = shlex.split(line) + ["--dataset", "digits", "--network", "mlp", "--num-epoch", "1"]
    code, out, err = cli(capsys, *args)
    assert code == 0, err
    with open_store("adatune.db") as db:
        [run] = db.list_runs()
    assert run.status == "completed" and run.epochs == 1


def test_original_flag_names_are_accepted(workdir, capsys):
    code, _, err = cli(capsys, "train", "--num-epoch", "1", "--wd", "1e-4", "--grad-clipping",
                       "5", "--model-loc", "ckpts", "--first-order", "--mu", "-1",
                       "--alpha", "1e-6", "--seed", "3", "--batch-size", "32")
    assert code == 0, err
    with open_store("adatune.db") as db:
        [run] = db.list_runs()
    c = run.config
    assert (c["weight_decay"], c["grad_clip"], c["first_order"], c["mu"], c["seed"]) == (
        1e-4, 5.0, True, "auto", 3)
    assert (workdir / "ckpts" / f"run-{run.id}" / "last.pt").exists()


def test_runs_list_and_show_json_and_the_reproduce_command(workdir, capsys):
    assert cli(capsys, "train", "--epochs", "2", "--seed", "1")[0] == 0
    code, out, _ = cli(capsys, "runs", "list", "--json")
    [row] = json.loads(out)
    assert {"id", "name", "method", "status", "epochs", "best_val_acc", "test_acc",
            "experiment"} <= set(row)
    code, out, _ = cli(capsys, "runs", "show", str(row["id"]), "--json")
    shown = json.loads(out)
    assert shown["config"]["seed"] == 1 and len(shown["epochs"]) == 2
    assert set(shown["epochs"][0]) >= {"epoch", "lr", "mu", "hyper_lr", "train_loss",
                                       "train_acc", "val_loss", "val_acc", "test_loss",
                                       "test_acc", "elapsed_s"}
    # The printed command reproduces the run exactly.
    command = shlex.split(shown["command"])
    assert command[:2] == ["adatune", "train"]
    assert cli(capsys, *command[1:])[0] == 0
    assert _epochs("adatune.db", 2) == _epochs("adatune.db", row["id"])
    assert command[command.index("--hyper-update") + 1] == "scale-free"
    assert shown["config"]["hyper_update"] == "scale-free"
    code, out, _ = cli(capsys, "runs", "show", str(row["id"]))
    assert "reproduce with:" in out
    assert "adatune train --tuner marthe" in out


def test_runs_stored_before_the_rule_was_a_choice_read_as_additive():
    from adatune.running.config import TrainConfig
    from adatune_cli.options import command_line

    old = TrainConfig(hyper_update="additive").to_dict()
    del old["hyper_update"]  # as an older adatune stored it
    assert TrainConfig.from_dict(old).hyper_update == "additive"
    assert TrainConfig.from_dict(old).hyper_lr == 1e-4
    command = shlex.split(command_line("train", old))
    assert command[command.index("--hyper-update") + 1] == "additive"
    assert "--hyper-update" not in command_line("baseline", {**old, "method": "constant"})


def test_divergence_is_recorded_as_diverged(workdir, capsys):
    code, out, _ = cli(capsys, "train", "--tuner", "rtho", "--hyper-update", "additive",
                       "--hyper-lr", "1.0", "--epochs", "5")
    assert code == 1
    with open_store("adatune.db") as db:
        [run] = db.list_runs()
    assert run.status == "diverged"
    assert "training loss" in run.error or "learning rate" in run.error
    assert "diverged" in out


@pytest.mark.slow
def test_patience_stops_early(workdir, capsys):
    code, out, _ = cli(capsys, "baseline", "--lr-scheduler", "constant", "--lr", "1e-6",
                       "--epochs", "8", "--patience", "1")
    assert code == 0
    with open_store("adatune.db") as db:
        [run] = db.list_runs()
    assert run.epochs < 8 and run.summary["stopped_early"] is True
    assert "stopped early" in out


def test_same_seed_same_trajectory(workdir, capsys):
    for _ in range(2):
        assert cli(capsys, "train", "--epochs", "2", "--seed", "7")[0] == 0
    assert _epochs("adatune.db", 1) == _epochs("adatune.db", 2)


def test_val_source_test_warns(workdir, capsys):
    code, _, err = cli(capsys, "train", "--epochs", "1", "--val-source", "test")
    assert code == 0
    assert "adatune: warning:" in err and "test" in err


@pytest.mark.parametrize("args", [
    ["train", "--lr", "-0.1"],
    ["train", "--mu", "1.5"],
    ["train", "--mu", "often"],
    ["train", "--epochs", "0"],
    ["train", "--num-epoch", "0"],
    ["train", "--batch-size", "0"],
    ["train", "--network", "gpt5"],
    ["train", "--precision", "fp8"],
    ["train", "--dataset", "imagenet"],
    ["train", "--tuner", "adam"],
    ["train", "--val-fraction", "0"],
    ["train", "--val-fraction", "1.5"],
    ["train", "--hyper-lr", "nan"],
    ["train", "--hyper-update", "sometimes"],
    ["train", "--hyper-lr", "2"],  # the scale-free rule's hyper-LR is at most 1
    ["train", "--alpha", "1.5"],  # and so is its alpha
    ["train", "--hyper-update", "additive", "--hyper-lr", "-1e-4"],
    ["train", "--network", "vgg11"],  # needs 32x32 inputs; digits is 8x8
    ["train", "--resume", "99"],
    ["train", "--epochs", "three"],
    ["baseline", "--lr-scheduler", "linear"],
    ["train", "--device", "tpu"],
])
def test_bad_input_exits_2_with_one_line_and_writes_no_run(workdir, capsys, args):
    code, out, err = cli(capsys, *args)
    assert code == 2, (out, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("adatune: error:"), err
    assert "Traceback" not in err
    if Path("adatune.db").exists():
        with open_store("adatune.db") as db:
            assert db.list_runs() == []


# ------------------------------------------------- resume (kill and resume: test_preemption.py)
def test_resume_refuses_a_completed_run(workdir, capsys):
    assert cli(capsys, "train", "--epochs", "1")[0] == 0
    code, _, err = cli(capsys, "train", "--resume", "1")
    assert code == 2 and "already completed" in err


@pytest.mark.parametrize("epochs, says", [
    ("1", "already completed (2 epochs); give --epochs above 2"),
    ("0", "already completed (2 epochs); give --epochs above 2"),
])
def test_a_refused_resume_says_one_line_and_announces_no_change(workdir, capsys, epochs, says):
    assert cli(capsys, "train", "--epochs", "2")[0] == 0
    code, _, err = cli(capsys, "train", "--resume", "1", "--epochs", epochs)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and says in lines[0], err  # no "resuming run 1 with"
    with open_store("adatune.db") as db:
        run = db.get_run(1).run
    assert run.config["epochs"] == 2 and "resumed" not in run.config["extra"]


def test_resume_from_a_missing_store_creates_none(workdir, capsys):
    code, _, err = cli(capsys, "train", "--resume", "1", "--store", "elsewhere.db")
    assert code == 2 and "no store at" in err and len(err.strip().splitlines()) == 1
    assert not Path("elsewhere.db").exists()


def test_runs_show_reproduces_a_sweep_trial_with_the_right_command(workdir, capsys):
    code, _, err = cli(capsys, "sweep", "--method", "cosine", "--trials", "1", "--seeds", "1",
                       "--epochs", "1")
    assert code == 0, err
    code, out, _ = cli(capsys, "runs", "show", "1", "--json")
    shown = json.loads(out)
    assert shown["kind"] == "sweep"
    assert shown["command"].startswith("adatune baseline --lr-scheduler cosine")


@pytest.mark.parametrize("flags, named", [
    (["--lr", "0.1"], "--lr"), (["--seed", "3", "--optimizer", "adam"], "--optimizer, --seed"),
    (["--name", "x"], "--name"), (["--tuner", "hd"], "--tuner"),
    (["--batch-size", "8", "--epochs", "4"], "--batch-size"),
])
def test_resume_refuses_options_that_would_change_the_run(workdir, capsys, flags, named):
    assert cli(capsys, "train", "--epochs", "1")[0] == 0
    code, _, err = cli(capsys, "train", "--resume", "1", *flags)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert named in lines[0] and "--epochs, --device" in lines[0]
    with open_store("adatune.db") as db:
        run = db.get_run(1).run
    assert run.status == "completed" and run.epochs == 1 and run.config["epochs"] == 1


@pytest.mark.slow
def test_resume_with_epochs_extends_a_run_to_what_a_longer_run_gives(workdir, capsys):
    # online: a horizon tuner's schedule is stretched to the new length instead
    assert cli(capsys, "train", "--epochs", "2", "--seed", "4", "--online")[0] == 0
    assert cli(capsys, "train", "--epochs", "3", "--seed", "4", "--online")[0] == 0
    code, _, err = cli(capsys, "train", "--resume", "1", "--epochs", "3", "--device", "cpu")
    assert code == 0, err
    assert "resuming run 1 with --epochs 3 (was 2) and --device cpu (was auto)" in err
    assert _epochs("adatune.db", 1) == _epochs("adatune.db", 2)
    with open_store("adatune.db") as db:
        run = db.get_run(1).run
    assert (run.status, run.epochs, run.device) == ("completed", 3, "cpu")
    assert run.config["epochs"] == 3 and run.config["device"] == "cpu"
    assert run.config["extra"]["resumed"] == [{"at_epoch": 2, "epochs": [2, 3],
                                              "device": ["auto", "cpu"]}]
    code, _, err = cli(capsys, "train", "--resume", "1", "--epochs", "2")
    assert code == 2 and "already completed (3 epochs)" in err
