"""Your own model, data and loss: `--model` / `--data` / `--loss` import paths, and adatune.fit."""

from __future__ import annotations

import json
import shlex
import signal
from pathlib import Path

import pytest
import torch
from torch import nn

import adatune
from adatune.errors import ConfigError
from adatune.running.runtypes import Events
from adatune.store import open_store
from tests._cli import cli
from tests._wait import epoch_reached, spawn_cli

REPO = Path(__file__).resolve().parents[1]
MODEL = "tests.userpkg.models:conv1d"
DATA = "tests.userpkg.data:sequences"
METRICS = ("epoch", "lr", "lr_mean", "mu", "hyper_lr", "train_loss", "train_acc", "val_loss",
           "val_acc", "test_loss", "test_acc")


def _epochs(store, run_id: int) -> list[dict]:
    with open_store(store) as db:
        detail = db.get_run(run_id)
    return [{k: getattr(e, k) for k in METRICS} for e in detail.epochs]


def _only_run(store="adatune.db"):
    with open_store(store) as db:
        [run] = db.list_runs()
        return db.get_run(run.id)


@pytest.mark.parametrize("command", [["train", "--tuner", "marthe"],
                                     ["baseline", "--lr-scheduler", "cosine", "--t-0", "1"]])
def test_own_model_and_data_through_the_cli(workdir, capsys, command):
    code, out, err = cli(capsys, *command, "--model", MODEL, "--data", DATA, "--epochs", "2",
                         "--lr", "0.02")
    assert code == 0, err
    detail = _only_run()
    run = detail.run
    assert (run.status, run.epochs, run.network, run.dataset) == (
        "completed", 2, "conv1d", "sequences")
    assert run.config["model"] == MODEL and run.config["data"] == DATA
    assert run.config["network"] is None and run.config["dataset"] is None
    assert all(e.val_acc is not None and e.test_acc is not None for e in detail.epochs)
    # the reproduce command names the import paths, and reproduces the run
    code, out, _ = cli(capsys, "runs", "show", str(run.id), "--json")
    shown = shlex.split(json.loads(out)["command"])
    assert shown[shown.index("--model") + 1] == MODEL
    assert shown[shown.index("--data") + 1] == DATA
    assert "--network" not in shown and "--dataset" not in shown
    assert cli(capsys, *shown[1:])[0] == 0
    assert _epochs("adatune.db", 2) == _epochs("adatune.db", run.id)


def test_built_in_data_with_own_model_and_own_data_with_built_in_network(workdir, capsys):
    assert cli(capsys, "train", "--model", "tests.userpkg.models:tiny_cnn", "--epochs", "1")[0] == 0
    assert cli(capsys, "baseline", "--network", "mlp", "--data", DATA, "--epochs", "1")[0] == 0
    with open_store("adatune.db") as db:
        first, second = db.list_runs()
    assert (first.network, first.dataset) == ("tiny_cnn", "digits")
    assert (second.network, second.dataset) == ("mlp", "sequences")
    assert first.status == second.status == "completed"


def test_a_module_in_the_current_directory_is_importable(workdir, capsys):
    (workdir / "mynet.py").write_text(
        "from torch import nn\n\n"
        "def make():\n    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))\n")
    code, _, err = cli(capsys, "train", "--tuner", "hd", "--model", "mynet:make", "--epochs", "1")
    assert code == 0, err
    assert _only_run().run.network == "make"


def test_regression_with_mse_picks_the_best_epoch_by_validation_loss(workdir, capsys):
    code, out, err = cli(capsys, "train", "--model", "tests.userpkg.models:regressor",
                         "--data", "tests.userpkg.data:regression", "--loss", "mse",
                         "--epochs", "4", "--lr", "0.01")
    assert code == 0, err
    detail = _only_run()
    epochs = detail.epochs
    assert all(e.train_acc is None and e.val_acc is None and e.test_acc is None for e in epochs)
    best = min(epochs, key=lambda e: e.val_loss)
    assert detail.run.best_epoch == best.epoch
    assert detail.run.summary["best_val_loss"] == best.val_loss
    assert detail.run.summary["test_loss"] == best.test_loss
    assert epochs[-1].train_loss < epochs[0].train_loss
    assert "best val loss" in out
    # the best checkpoint is the best-validation-loss epoch
    saved = torch.load(workdir / "adatune-runs" / f"run-{detail.run.id}" / "best.pt",
                       weights_only=True)
    assert saved["epoch"] == best.epoch


@pytest.mark.parametrize("loss, reference", [
    ("tests.userpkg.losses:huber", nn.functional.huber_loss),
    ("torch.nn:SmoothL1Loss", nn.SmoothL1Loss()),
])
def test_a_loss_by_import_path(workdir, capsys, loss, reference):
    from tests.userpkg.data import regression
    from tests.userpkg.models import regressor

    code, _, err = cli(capsys, "baseline", "--model", "tests.userpkg.models:regressor",
                       "--data", "tests.userpkg.data:regression", "--loss", loss, "--epochs", "1")
    assert code == 0, err
    assert "warning" not in err  # (N, 1) outputs against (N,) targets: aligned, no broadcast
    detail = _only_run()
    assert detail.run.config["loss"] == loss and detail.epochs[0].val_acc is None
    # the recorded validation loss is that of aligned targets, not of an (N, N) broadcast
    net = regressor()
    best = Path("adatune-runs") / f"run-{detail.run.id}" / "best.pt"
    net.load_state_dict(torch.load(best, weights_only=True)["model"])
    _, (xv, yv), _ = regression(0)
    with torch.no_grad():
        expected = float(reference(net(xv).reshape(-1), yv))
    assert detail.epochs[0].val_loss == pytest.approx(expected, rel=1e-5)


def test_a_dataset_that_is_not_tensors_goes_through_dataloader_workers(workdir, capsys):
    common = ["baseline", "--model", MODEL, "--epochs", "2", "--lr", "0.02"]
    assert cli(capsys, *common, "--data", DATA)[0] == 0
    code, _, err = cli(capsys, *common, "--data", "tests.userpkg.data:sequence_datasets",
                       "--workers", "2")
    assert code == 0, err
    # the same examples in the same order: the same run, batch for batch
    assert _epochs("adatune.db", 1) == _epochs("adatune.db", 2)


def test_the_test_set_is_optional(workdir, capsys):
    code, _, err = cli(capsys, "train", "--model", MODEL, "--data",
                       "tests.userpkg.data:sequences_no_test", "--epochs", "1")
    assert code == 0, err
    detail = _only_run()
    assert detail.epochs[0].test_acc is None and detail.epochs[0].val_acc is not None


@pytest.mark.parametrize("args, says", [
    (["--model", "nosuchmodule:make"], "no module named 'nosuchmodule'"),
    (["--model", "tests.userpkg.models:nope"], "has no attribute 'nope'"),
    (["--model", "tests.userpkg.models:NOT_CALLABLE"], "is not callable"),
    (["--model", "tests.userpkg.models:not_a_module"], "returned a list, not a torch.nn.Module"),
    (["--model", "tests.userpkg.models:broken"], "raised ValueError: width must be positive"),
    (["--model", "tests.userpkg.models:frozen"], "no trainable parameters"),
    (["--model", "just-a-name"], "expected an import path module.path:name"),
    (["--model", "tests.userpkg.models:linear5"], "failed on a batch of the training data"),
    (["--data", "tests.userpkg.data:wrong"], "returned a str"),
    (["--data", "tests.userpkg.data:one_set"], "returned a tuple"),
    (["--network", "mlp", "--model", MODEL], "give --network or --model, not both"),
    (["--loss", "nosuchmodule:fn"], "no module named 'nosuchmodule'"),
    (["--loss", "huber"], "unknown loss 'huber'"),
    (["--model", "tests.userpkg.models:three_scores", "--data", DATA, "--loss", "mse"],
     "the loss 'mse' failed"),
    (["--data", "tests.userpkg.data:regression"], "cross-entropy needs integer class labels"),
    (["--workers", "-1"], "invalid workers"),
])
def test_bad_parts_exit_2_with_one_line_and_write_no_run(workdir, capsys, args, says):
    code, out, err = cli(capsys, "train", "--epochs", "1", *args)
    assert code == 2, (out, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("adatune: error:"), err
    assert says in lines[0], lines[0]
    assert "Traceback" not in err
    if Path("adatune.db").exists():
        with open_store("adatune.db") as db:
            assert db.list_runs() == []


def test_adatune_debug_shows_the_factory_traceback(workdir, capsys, monkeypatch):
    monkeypatch.setenv("ADATUNE_DEBUG", "1")
    code, _, err = cli(capsys, "train", "--model", "tests.userpkg.models:broken")
    assert code == 2
    assert "Traceback" in err and "width must be positive" in err
    assert err.strip().splitlines()[-1].startswith("adatune: error:")


# ----------------------------------------------------------- kill and resume
@pytest.mark.slow
def test_own_model_resumes_bit_identically_after_sigkill(workdir):
    run = ["train", "--model", MODEL, "--data", DATA, "--epochs", "4", "--batch-size", "8",
           "--lr", "0.02", "--seed", "3"]
    store = workdir / "killed.db"
    proc = spawn_cli(store, *run, hold_after=1)
    run_id = epoch_reached(store, 1, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kept = _epochs(store, run_id)
    assert len(kept) == 1
    resumed = spawn_cli(store, "train", "--resume", str(run_id))
    assert resumed.wait() == 0, resumed.stderr.read().decode()
    straight = workdir / "straight.db"  # a second store: its own checkpoint folder
    assert spawn_cli(straight, *run, "--checkpoint-dir", str(workdir / "straight-runs")).wait() == 0
    assert _epochs(store, run_id)[: len(kept)] == kept
    assert _epochs(store, run_id) == _epochs(straight, 1)


# ------------------------------------------------------------- adatune.fit
class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(32, 16), nn.Tanh(), nn.Linear(16, 3))

    def forward(self, x):
        return self.body(x)


def _fit_parts(seed: int = 0):
    from tests.userpkg.data import sequences

    torch.manual_seed(seed)
    model = _Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return model, optimizer, sequences(seed)


def test_fit_records_the_run_and_the_report_renders_it(workdir, capsys):
    model, optimizer, (train, val, test) = _fit_parts()
    result = adatune.fit(model, train, val, test, optimizer=optimizer, tuner="marthe",
                         store="runs.db", epochs=2, name="mine", log_every=1)
    assert result.status == "completed" and len(result.epochs) == 2
    with open_store("runs.db") as db:
        detail = db.get_run(result.run_id)
    run = detail.run
    assert (run.kind, run.method, run.name, run.network, run.optimizer) == (
        "train", "marthe", "mine", "_Net", "sgd")
    assert run.config["entry"] == "fit" and run.config["epochs"] == 2
    assert [e.epoch for e in detail.epochs] == [1, 2] and detail.steps
    assert len({s.lr for s in detail.steps}) > 1  # the LR was tuned
    # training time apart from set-up, and CPU time beside the wall-clock time
    summary = run.summary
    assert summary["train_s"] == detail.epochs[-1].elapsed_s
    assert summary["cpu_s"] > 0 and summary["setup_s"] >= 0
    code, out, err = cli(capsys, "report", "table", "--store", "runs.db", "--json")
    [group] = json.loads(out)
    assert group["cpu_s"]["mean"] == summary["cpu_s"]
    assert group["time_s"]["mean"] == summary["train_s"]
    code, out, err = cli(capsys, "runs", "list", "--store", "runs.db", "--json")
    assert code == 0 and json.loads(out)[0]["name"] == "mine"
    code, out, err = cli(capsys, "report", "html", "--store", "runs.db", "-o", "r.html")
    assert code == 0, err
    assert "mine" in Path("r.html").read_text()
    # a fit run is resumed from Python, not by the command
    code, _, err = cli(capsys, "train", "--resume", str(result.run_id), "--store", "runs.db")
    assert code == 2 and "adatune.fit" in err


def test_fit_with_a_schedule_a_torch_scheduler_and_a_regression_loss(workdir):
    model, optimizer, (train, val, test) = _fit_parts()
    result = adatune.fit(model, train, val, optimizer=optimizer, schedule="cosine", epochs=2,
                         store="runs.db")
    assert result.status == "completed" and result.epochs[0].test_acc is None
    model, optimizer, (train, val, test) = _fit_parts()
    step = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    result = adatune.fit(model, train, val, test, optimizer=optimizer, schedule=step, epochs=2,
                         store="runs.db")
    assert [e.lr for e in result.epochs] == [0.025, 0.0125]
    x, y = torch.randn(64, 4), torch.randn(64)
    reg = nn.Linear(4, 1)
    result = adatune.fit(reg, (x[:48], y[:48]), (x[48:], y[48:]), loss="mse", tuner="hd",
                         optimizer=torch.optim.Adam(reg.parameters(), lr=1e-2), epochs=2,
                         store="runs.db")
    assert result.best_val_acc is None and result.best_val_loss is not None
    with open_store("runs.db") as db:
        methods = [r.method for r in db.list_runs()]
    assert methods == ["cosine", "steplr", "hd"]


class _StopAt(Events):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_done(self, record) -> None:
        if record.epoch == self.epoch:
            raise KeyboardInterrupt


def test_fit_resumes_an_interrupted_run_to_the_uninterrupted_result(workdir):
    def fit(**kw):
        model, optimizer, (train, val, test) = _fit_parts(seed=4)
        return adatune.fit(model, train, val, test, optimizer=optimizer, tuner="marthe",
                           epochs=3, batch_size=16, seed=4, **kw)

    stopped = fit(store="a.db", events=_StopAt(1))
    assert stopped.status == "interrupted" and len(stopped.epochs) == 1
    resumed = fit(store="a.db", resume=stopped.run_id)
    assert resumed.status == "completed" and resumed.run_id == stopped.run_id
    straight = fit(store="b.db", checkpoint_dir="b-runs")  # a second store: its own folder
    assert _epochs("a.db", stopped.run_id) == _epochs("b.db", straight.run_id)
    with pytest.raises(ConfigError, match="already completed"):
        fit(store="a.db", resume=stopped.run_id)


@pytest.mark.parametrize("kwargs, says", [
    ({"tuner": "nope"}, "Invalid tuner"),
    ({"tuner": "marthe", "schedule": "cosine"}, "a tuner or a schedule, not both"),
    ({"loss": 3}, "Invalid loss"),
    ({"epochs": 0}, "invalid epochs"),
    ({"schedule_interval": "batch", "schedule": "cosine"}, "Invalid schedule_interval"),
    ({"optimizer": torch.optim.RMSprop([nn.Parameter(torch.zeros(1))])}, "Invalid optimizer"),
])
def test_fit_rejects_bad_arguments_before_writing_a_run(workdir, kwargs, says):
    model, optimizer, (train, val, test) = _fit_parts()
    kwargs = {"optimizer": optimizer, **kwargs}
    with pytest.raises(ValueError, match=says):
        adatune.fit(model, train, val, test, store="runs.db", **kwargs)
    if Path("runs.db").exists():
        with open_store("runs.db") as db:
            assert db.list_runs() == []


REGRESSION = ["--model", "tests.userpkg.models:regressor", "--data",
              "tests.userpkg.data:regression", "--loss", "mse"]


def test_find_alpha_and_sweep_take_own_parts_and_judge_regression_by_loss(workdir, capsys):
    code, out, err = cli(capsys, "find-alpha", *REGRESSION, "--epochs", "2", "--probe-epochs", "1",
                         "--alpha-max", "1e-3", "--alpha-min", "1e-4", "--json")
    assert code == 0, err
    found = json.loads(out)
    assert all(p["val_acc"] is None and p["val_loss"] is not None for p in found["probes"])
    with open_store("adatune.db") as db:
        probes = db.list_runs(kind="probe")
    assert probes and all(r.config["model"] == REGRESSION[1] for r in probes)
    # The default space reaches LRs at which SGD diverges on this regression (the trial
    # is then pruned, as the next test checks): this one stays where it trains.
    trial_run, trial = _one_regression_trial(
        capsys, '[lr]\ntype = "float"\nlow = 0.001\nhigh = 0.01\nlog = true\n')
    assert trial.state.name == "COMPLETE"
    assert trial.value == pytest.approx(-trial_run.summary["best_val_loss"])


def test_a_sweep_prunes_a_regression_trial_that_diverges(workdir, capsys):
    trial_run, trial = _one_regression_trial(
        capsys, '[lr]\ntype = "categorical"\nchoices = [0.9]\n')
    assert trial_run.status == "diverged" and trial_run.summary["best_val_loss"] is None
    assert trial.state.name == "PRUNED" and trial.value is None


def _one_regression_trial(capsys, space: str):
    """`adatune sweep` of one constant-LR trial on the regression, in ``space`` (TOML):
    its run in the store and its Optuna trial."""
    import optuna

    Path("space.toml").write_text(space)
    code, _, err = cli(capsys, "sweep", "--method", "constant", *REGRESSION, "--trials", "1",
                       "--seeds", "1", "--epochs", "2", "--study", "reg", "--space", "space.toml")
    assert code == 0, err
    with open_store("adatune.db") as db:
        [trial_run] = db.list_runs(kind="sweep")
        [trial] = optuna.load_study(study_name="reg", storage=db.url).trials
    return trial_run, trial


def test_the_report_judges_regression_by_loss_and_names_the_model(workdir, capsys):
    assert cli(capsys, "train", *REGRESSION, "--epochs", "3", "--lr", "0.01")[0] == 0
    assert cli(capsys, "baseline", *REGRESSION, "--epochs", "3", "--lr", "0.01")[0] == 0
    code, out, err = cli(capsys, "report", "table", "--json")
    assert code == 0, err
    groups = {g["method"]: g for g in json.loads(out)}
    with open_store("adatune.db") as db:
        runs = {r.method: db.get_run(r.id) for r in db.list_runs()}
    for method, detail in runs.items():
        best = min(detail.epochs, key=lambda e: e.val_loss)
        group = groups[method]
        assert group["group"] == f"{method} · regressor"  # the model's name labels the run
        assert group["best_val_acc"]["n"] == 0
        assert group["best_val_loss"]["mean"] == pytest.approx(best.val_loss)
        assert group["test_loss_at_best_val"]["mean"] == pytest.approx(best.test_loss)
    assert cli(capsys, "report", "html", "-o", "r.html")[0] == 0
    page = Path("r.html").read_text()
    assert "best val loss" in page and "marthe · regressor" in page
