"""What a newcomer sees in the terminal: next steps, narrow tables, help, exact commands."""

from __future__ import annotations

import shlex

import pytest

from adatune.running.config import TrainConfig
from adatune.store import open_store
from adatune.store.records import EpochRecord
from adatune_cli import _common
from adatune_cli._common import epoch_seconds
from tests._cli import cli

FAST = ("--epochs", "2", "--batch-size", "128")


@pytest.fixture
def narrow(monkeypatch):
    """An 80-column terminal for the tables."""
    monkeypatch.setattr(_common.out, "width", 80)
    return 80


@pytest.fixture
def here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ADATUNE_STORE", raising=False)
    return tmp_path


def _store_runs(path):
    with open_store(str(path), create=False) as db:
        return db.list_runs()


def test_train_says_where_the_run_went_and_what_comes_next(capsys, here):
    code, out, err = cli(capsys, "train", "--tuner", "hd", *FAST)
    assert code == 0, err
    assert f"store:       {here / 'adatune.db'}" in out
    assert f"checkpoints: {here / 'adatune-runs' / 'run-1'}" in out
    assert "adatune runs show 1" in out
    assert "adatune report html" in out
    compare = next(line for line in out.splitlines() if "adatune baseline" in line)
    assert "--lr-scheduler constant" in compare and "--lr 0.05" in compare
    # the progress display ends without a batch bar reset to 0 of the next epoch
    assert "batches" not in err
    # the suggested comparison runs as printed (the comment is for the reader)
    command = shlex.split(compare.split("next:")[-1].split("#")[0])
    assert command[:2] == ["adatune", "baseline"]
    code, out, err = cli(capsys, *command[1:])
    assert code == 0, err
    assert [r.method for r in _store_runs(here / "adatune.db")] == ["hd", "constant"]
    # a baseline suggests a tuner from the same LR, and names a store that is not the default
    code, out, err = cli(capsys, "baseline", *FAST, "--store", str(here / "other.db"),
                         "--checkpoint-dir", str(here / "other-runs"))
    assert code == 0, err
    assert f"adatune runs show 1 --store {here / 'other.db'}" in out
    assert "adatune train --tuner marthe" in out


def test_per_epoch_seconds_are_differences_of_the_cumulative_time():
    def rec(epoch, elapsed):
        return EpochRecord(epoch=epoch, lr=0.1, lr_mean=0.1, mu=None, hyper_lr=None,
                           train_loss=1.0, train_acc=None, val_loss=1.0, val_acc=None,
                           test_loss=None, test_acc=None, elapsed_s=elapsed)

    assert epoch_seconds([rec(1, 2.0), rec(2, 2.5), rec(3, 4.0)]) == [2.0, 0.5, 1.5]
    # a table starting mid-run (a resume prints its own epochs) cannot know the first one
    assert epoch_seconds([rec(4, 9.0), rec(5, 10.0)]) == [None, 1.0]


def test_each_store_has_its_own_checkpoint_folder(capsys, here):
    code, out, err = cli(capsys, "baseline", "--epochs", "1")
    assert code == 0, err
    assert f"checkpoints: {here / 'adatune-runs' / 'run-1'}" in out
    last = here / "adatune-runs" / "run-1" / "last.pt"
    before = last.read_bytes()
    # a second store in the same folder: its run 1 goes to its own folder, no option needed
    code, out, err = cli(capsys, "baseline", "--epochs", "1", "--store", "second.db")
    assert code == 0, err
    assert f"checkpoints: {here / 'second-runs' / 'run-1'}" in out
    assert (here / "second-runs" / "run-1" / "last.pt").is_file()
    assert last.read_bytes() == before
    [run] = _store_runs(here / "second.db")
    assert run.config["checkpoint_dir"] == str(here / "second-runs")  # recorded, absolute


def test_a_new_run_never_overwrites_another_stores_checkpoints(capsys, here):
    code, _, err = cli(capsys, "baseline", "--epochs", "1", "--checkpoint-dir", "shared")
    assert code == 0, err
    last = here / "shared" / "run-1" / "last.pt"
    before = last.read_bytes()
    code, out, err = cli(capsys, "baseline", "--epochs", "1", "--store", "second.db",
                         "--checkpoint-dir", "shared")
    assert code == 2
    line = err.strip()
    assert "\n" not in line and "already holds an earlier run's files" in line
    assert "--checkpoint-dir" in line
    assert last.read_bytes() == before  # run 1 of adatune.db keeps its checkpoint
    assert _store_runs(here / "second.db") == []  # and no half-made run was left


def test_the_default_checkpoint_folder_follows_the_store(tmp_path, monkeypatch):
    from adatune.running.folder import default_checkpoint_dir

    monkeypatch.chdir(tmp_path)
    assert default_checkpoint_dir() == tmp_path / "adatune-runs"
    assert default_checkpoint_dir("sub/sweeps.db") == tmp_path / "sub" / "sweeps-runs"
    assert default_checkpoint_dir(f"sqlite:///{tmp_path}/x.db") == tmp_path / "x-runs"
    # a server's store: keyed by where it is, never by who connects or the password
    one = default_checkpoint_dir("postgresql+psycopg://ann:secret@db.example.org/adatune")
    assert one == default_checkpoint_dir("postgresql+psycopg://bob@db.example.org/adatune")
    assert one.parent == tmp_path and one.name.startswith("adatune-runs-adatune-")
    assert "secret" not in str(one)
    assert one != default_checkpoint_dir("postgresql+psycopg://ann@db.example.org/other")
    assert one != default_checkpoint_dir("postgresql+psycopg://ann@db2.example.org/adatune")


@pytest.mark.slow
def test_find_alpha_prints_the_train_command_that_uses_its_result(capsys, here):
    code, out, err = cli(capsys, "find-alpha", "--epochs", "2", "--probe-epochs", "1",
                         "--alpha-max", "0.01", "--alpha-min", "0.001", "--lr", "0.03",
                         "--batch-size", "128")
    assert code == 0, err
    assert "the search is run 1" in out and "probe run" in out
    lines = out.splitlines()
    command = shlex.split(lines[lines.index("train with it:") + 1])
    assert command[:4] == ["adatune", "train", "--tuner", "marthe"]
    assert command[command.index("--lr") + 1] == "0.03"
    alpha = float(command[command.index("--alpha") + 1])
    search = next(r for r in _store_runs(here / "adatune.db") if r.kind == "find-alpha")
    code, out, err = cli(capsys, *command[1:])
    assert code == 0, err
    trained = _store_runs(here / "adatune.db")[-1]
    assert trained.kind == "train" and trained.config["alpha"] == alpha
    assert search.id == 1


def test_tables_fit_80_columns_and_never_cut_a_number(capsys, here, narrow):
    code, _, err = cli(capsys, "train", *FAST, "--name", "a-rather-long-name-for-a-run-indeed",
                       "--experiment", "a-long-experiment-name")
    assert code == 0, err
    code, _, err = cli(capsys, "baseline", *FAST, "--lr-scheduler", "cosine")
    assert code == 0, err
    runs = _store_runs(here / "adatune.db")
    code, out, err = cli(capsys, "runs", "list")
    assert code == 0, err
    table = out.splitlines()
    assert max(len(line) for line in table) <= 80
    for run in runs:
        row = next(line for line in table if line.split()[:1] == [str(run.id)])
        assert f"{run.best_val_acc:.1%}" in row and "completed" in row and run.method in row
    assert "mu" not in table[0]  # no empty columns (a list has none of those anyway)
    code, out, err = cli(capsys, "runs", "show", "2")
    assert code == 0, err
    lines = out.splitlines()
    header = next(line for line in lines if line.lstrip().startswith("epoch"))
    assert "mu" not in header.split() and "hyper-lr" not in header.split()  # a baseline's
    rows = [line for line in lines if line.split()[:1] in (["1"], ["2"])]
    assert len(rows) == 2 and all(len(line) <= 80 and "…" not in line for line in rows)
    with open_store("adatune.db", create=False) as db:
        epochs = db.get_run(2, steps=False).epochs
    for row, e in zip(rows, epochs, strict=True):
        assert f"{e.val_acc:.1%}" in row and f"{e.lr:.3g}" in row
    code, out, err = cli(capsys, "runs", "show", "1")
    rows = [line for line in out.splitlines() if line.split()[:1] in (["1"], ["2"])]
    assert all("…" not in line and len(line) <= 80 for line in rows)


def test_each_command_shows_its_own_options(capsys):
    code, train_help, _ = cli(capsys, "train", "--help")
    assert code == 0
    assert "--hyper-lr" in train_help and "--mu" in train_help
    assert "--t-0" not in train_help and "--warmup-steps" not in train_help
    code, baseline_help, _ = cli(capsys, "baseline", "--help")
    assert code == 0
    assert "--t-0" in baseline_help and "--warmup-steps" in baseline_help
    assert "--hyper-lr" not in baseline_help and "--first-order" not in baseline_help
    code, list_help, _ = cli(capsys, "runs", "list", "--help")
    assert "Only runs with this status" in list_help and "Only this method" in list_help


@pytest.mark.parametrize(("args", "says"), [
    (("train", "--t-0", "3"), "--t-0: for baseline schedules"),
    (("baseline", "--mu", "0.5"), "--mu: for the hypergradient tuners"),
    (("baseline", "--method", "prodigy", "--t-mult", "3"), "prodigy sets its own step size"),
    (("baseline", "--warmup-steps", "5"), "--warmup-steps: for the peer optimizers"),
    (("find-alpha", "--lr-decay", "0.5"), "--lr-decay: for baseline schedules"),
    (("train", "--lr-scheduler", "cosine"), "No such option: --lr-scheduler for `adatune "
                                            "train`; it is an option of `adatune baseline`"),
    (("baseline", "--tuner", "hd"), "it is an option of `adatune find-alpha` and `adatune "
                                    "train`"),
])
def test_an_option_of_another_command_is_one_line(capsys, here, args, says):
    code, out, err = cli(capsys, *args, "--epochs", "1")
    assert code == 2
    assert err.count("\n") == 1 and says in err
    assert not (here / "adatune.db").exists() or _store_runs(here / "adatune.db") == []


def test_the_recorded_config_holds_what_applies_to_the_method():
    tuner = TrainConfig(method="marthe").to_dict()
    assert {"hyper_lr", "mu", "hvp"} <= set(tuner) and "t_0" not in tuner
    constant = TrainConfig(method="constant").to_dict()
    assert not {"hyper_lr", "mu", "alpha", "hvp", "first_order", "t_0", "lr_decay"} & set(constant)
    cosine = TrainConfig(method="cosine").to_dict()
    assert {"t_0", "t_mult"} <= set(cosine) and not {"mu", "step_size", "lr_decay"} & set(cosine)
    staircase = TrainConfig(method="staircase").to_dict()
    assert {"step_size", "lr_decay"} <= set(staircase) and "t_0" not in staircase
    for config in (TrainConfig(method="cosine", t_0=3), TrainConfig(method="staircase",
                                                                     lr_decay=0.3)):
        assert TrainConfig.from_dict(config.to_dict()) == config  # read back whole


def test_a_baseline_resumes_for_more_epochs(capsys, here):
    code, _, err = cli(capsys, "baseline", "--lr-scheduler", "cosine", *FAST)
    assert code == 0, err
    code, out, err = cli(capsys, "baseline", "--resume", "1", "--epochs", "3")
    assert code == 0, err
    [run] = _store_runs(here / "adatune.db")
    assert run.epochs == 3 and run.status == "completed"
    code, out, err = cli(capsys, "baseline", "--resume", "1", "--lr-scheduler", "constant")
    assert code == 2 and "--lr-scheduler" in err


def _record(path, *runs):
    """A store holding ``runs`` (name, experiment, method, dataset), completed: no training."""
    from adatune.store import NewRun

    with open_store(str(path)) as db:
        for name, experiment, method, dataset in runs:
            run_id = db.create_run(NewRun(kind="train", method=method, optimizer="sgd",
                                          network="mlp", dataset=dataset, seed=0, config={},
                                          name=name, experiment=experiment))
            db.finish_run(run_id, "completed")


def _one_line(code, out, err, *says):
    assert code == 2 and out == "", (code, out, err)
    assert err.count("\n") == 1 and err.startswith("adatune: error: "), err
    for text in says:
        assert text in err, err


def test_no_runs_and_no_match_are_one_line_exit_2_everywhere(capsys, here):
    reads = [("runs", "list"), ("runs", "list", "--json"), ("runs", "show", "1"),
             ("report", "table"), ("report", "html"), ("schedule", "export", "1")]
    for args in reads:  # no store: nothing is created, and the line says what makes one
        _one_line(*cli(capsys, *args), "no store at", "`adatune train --tuner marthe` makes it")
    assert not (here / "adatune.db").exists()
    with open_store("adatune.db"):
        pass
    for args in reads:  # an empty store
        _one_line(*cli(capsys, *args), "no runs yet", "`adatune train --tuner marthe`")
    _one_line(*cli(capsys, "runs", "list", "--store", str(here / "adatune.db")),
              f"`adatune train --tuner marthe --store {here / 'adatune.db'}` makes one")
    _record(here / "adatune.db", ("a", None, "marthe", "digits"))
    for args, says in [
        (("runs", "list", "--method", "foo"), "no runs match --method foo in"),
        (("runs", "list", "--json", "--experiment", "x"), "no runs match --experiment x"),
        (("report", "table", "--method", "foo"), "no runs match --method foo"),
        (("report", "html", "--run", "-5"), "no runs match --run -5"),
        (("report", "html", "--run", "7", "--run", "8"), "no runs match --run 7 --run 8"),
        (("runs", "show", "7"), "no run with id 7"),
        (("schedule", "export", "7"), "no run with id 7"),
    ]:
        _one_line(*cli(capsys, *args), says, "`adatune runs list` lists the runs it holds")
    assert not (here / "adatune-report.html").exists()


def test_runs_list_keeps_what_tells_runs_apart_at_80_columns(capsys, here, narrow):
    _record(here / "adatune.db",
            *[(f"sweep-marthe-digits-lr-search-with-a-rather-long-name-seed-{k}",
               "marthe-lr-search-on-digits", "marthe", "digits") for k in (1, 2)],
            ("a-baseline-with-a-long-name-too", "marthe-lr-search-on-digits", "cosine",
             "digits"))
    code, out, err = cli(capsys, "runs", "list")
    assert code == 0, err
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 80
    # what every run shares is said once, above the table, whole
    assert lines[0] == ("every run shown: experiment marthe-lr-search-on-digits; task "
                        "digits/mlp")
    rows = [line for line in lines if line.split()[:1] in (["1"], ["2"], ["3"])]
    assert [row.split()[1][-6:] for row in rows[:2]] == ["seed-1", "seed-2"]  # the ends kept
    assert rows[0].split()[1].startswith("sweep-") and "…" in rows[0]
    assert all("completed" in row for row in rows)


def test_shorten_keeps_both_ends():
    from adatune_cli._common import shorten

    assert shorten("digits/mlp", 20) == "digits/mlp"
    assert shorten("digits/mlp", 7) == "dig…mlp"
    assert shorten("my-long-run-name-seed-1", 14) == "my-lon…-seed-1"
    assert len(shorten("x" * 50, 6)) == 6


def test_a_run_summary_has_no_column_its_method_cannot_have(capsys, here):
    code, out, err = cli(capsys, "baseline", "--lr-scheduler", "cosine", *FAST)
    assert code == 0, err
    header = next(line for line in out.splitlines() if line.split()[:2] == ["epoch", "lr"])
    assert "mu" not in header.split() and "hyper-lr" not in header.split()
    code, out, err = cli(capsys, "train", "--tuner", "hd", *FAST)
    assert code == 0, err
    header = next(line for line in out.splitlines() if line.split()[:2] == ["epoch", "lr"])
    assert "hyper-lr" in header.split()


def test_device_is_checked_before_the_store_and_torch(capsys, here, monkeypatch):
    from adatune.running import preflight

    monkeypatch.setattr(preflight, "_cuda_devices", lambda: 0)  # a machine without a GPU
    for args in (("train", "--device", "cuda"), ("baseline", "--device", "cuda"),
                 ("sweep", "--method", "hd", "--device", "cuda"),
                 ("find-alpha", "--device", "cuda")):
        _one_line(*cli(capsys, *args), "--device cuda: no CUDA device is available here")
    assert not (here / "adatune.db").exists() and not (here / "adatune-runs").exists()
    code, _, err = cli(capsys, "train", *FAST)
    assert code == 0, err
    _one_line(*cli(capsys, "train", "--resume", "1", "--device", "cuda"), "--device cuda")
    _one_line(*cli(capsys, "bench", "--device", "cuda"), "--device cuda")


def test_check_device_refuses_only_what_cannot_work(monkeypatch):
    from adatune.errors import ConfigError
    from adatune.running import preflight

    preflight.check_device("cpu")
    preflight.check_device("auto")
    monkeypatch.setattr(preflight, "_torch_build", lambda: {"__version__": "2.9+cpu",
                                                            "cuda": None, "hip": None})
    with pytest.raises(ConfigError, match=r"device='cuda': the installed torch \(2.9\+cpu\) "
                                          "is built without CUDA"):
        preflight.check_device("cuda")
    monkeypatch.setattr(preflight, "_torch_build", lambda: {"cuda": "12.8", "hip": None})
    for devices, refused in ((0, True), (None, False), (2, False)):
        monkeypatch.setattr(preflight, "_cuda_devices", lambda n=devices: n)
        if refused:
            with pytest.raises(ConfigError, match="no CUDA device"):
                preflight.check_device("cuda")
        else:
            preflight.check_device("cuda")  # a GPU, or nothing certain: torch decides
    monkeypatch.setattr(preflight.sys, "platform", "linux")
    with pytest.raises(ConfigError, match="device='mps'"):
        preflight.check_device("mps")


def test_a_finished_sweep_never_says_interrupted(capsys):
    from adatune.search.sweep import StudyStatus, SweepResult, TrialOutcome
    from adatune_cli.sweep import _print_result

    done = TrialOutcome(1, "complete", 0.9, {"lr": 0.1}, (1,))
    earlier = StudyStatus("s", counted=2, complete=2, pruned=0, failed=1, running=0, best=done)
    _print_result(SweepResult("s", "marthe", 2, "done", (done, done), earlier), "x.db",
                  "sqlite:///x.db")
    out = capsys.readouterr().out
    assert "interrupted" not in out
    assert "2 of 2 trials (2 complete, 0 diverged or invalid); 1 earlier trial stopped or " \
           "failed before finishing (not counted)" in out
    stopped = TrialOutcome(2, "interrupted", None, {"lr": 0.1}, (2,))
    _print_result(SweepResult("s", "marthe", 3, "interrupted", (done, stopped), earlier),
                  "x.db", "sqlite:///x.db")
    out = capsys.readouterr().out
    assert "; 1 interrupted" in out and "earlier" not in out
