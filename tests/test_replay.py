"""Tune once, reuse cheaply: export a run's learned schedule and replay it.

Through the command's entry point on the embedded dataset: ``adatune schedule
export`` (CSV, JSON, a torch file used without adatune) and ``adatune baseline
--lr-scheduler replay`` (--from-run, --from-file, --stretch, --scale), read back
from the store.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from adatune.errors import ConfigError
from adatune.methods.schedule_file import (
    LRSchedule,
    format_schedule,
    schedule_from_file,
    schedule_from_run,
)
from adatune.running.config import TrainConfig
from adatune.running.engine import resume, train
from adatune.store import EpochRecord, NewRun, open_store
from tests._cli import cli
from tests.test_report_e2e import browser  # noqa: F401 - the headless Chromium fixture

SOURCE_EPOCHS = 3


@pytest.fixture(scope="module")
def source_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store holding run 1: MARTHE on digits for 3 epochs (log every 4th step)."""
    folder = tmp_path_factory.mktemp("source")
    db = folder / "adatune.db"
    config = TrainConfig(method="marthe", epochs=SOURCE_EPOCHS, log_every=4,
                         checkpoint_dir=str(folder / "ck"))
    with open_store(db) as store:
        assert train(config, store).run_id == 1
    return db


@pytest.fixture
def db(source_db: Path, workdir: Path) -> Path:
    """A copy of the source store as ./adatune.db in a fresh working directory."""
    shutil.copy(source_db, workdir / "adatune.db")
    return workdir / "adatune.db"


def step_lrs(db: Path, run_id: int) -> list[list[float]]:
    with open_store(db) as store:
        return [list(g.lrs) for g in store.get_step_lrs(run_id)]


def flat(per_epoch: list[list[float]]) -> list[float]:
    return [v for epoch in per_epoch for v in epoch]


def run_ids(db: Path) -> list[int]:
    with open_store(db) as store:
        return [r.id for r in store.list_runs()]


def ok(capsys, *args: str) -> str:
    code, out, err = cli(capsys, *args)
    assert code == 0, err
    return out


# ------------------------------------------------------------------ replay
def test_replaying_a_run_reproduces_its_lr_sequence_exactly(db: Path, capsys) -> None:
    source = step_lrs(db, 1)
    assert len(set(flat(source))) > len(flat(source)) // 2  # MARTHE moved the LR every step
    code, out, err = cli(capsys, "baseline", "--lr-scheduler", "replay", "--from-run", "1",
                         "--seed", "1")
    assert code == 0, err
    assert "adatune runs show 1  # compare: the run it replays" in out + err  # what comes next
    assert step_lrs(db, 2) == source  # the same steps (per epoch), the same values
    with open_store(db) as store:
        src, rep = store.get_run(1), store.get_run(2)
    assert (rep.run.kind, rep.run.method, rep.run.seed) == ("baseline", "replay", 1)
    assert [(s.step, s.lr) for s in rep.steps] == [(s.step, s.lr) for s in src.steps]
    assert [e.lr_mean for e in rep.epochs] == [e.lr_mean for e in src.epochs]
    # It records its source, and took the source's task and length.
    assert rep.run.config["from_run"] == 1 and rep.run.config["epochs"] == SOURCE_EPOCHS
    replay = rep.run.config["extra"]["replay"]
    assert replay["source"]["run"] == 1 and replay["source"]["method"] == "marthe"
    assert replay["source_points"] == replay["points"] == len(flat(source))
    # `runs show` prints a command that replays it again, to the same LRs.
    shown = ok(capsys, "runs", "show", "2")
    assert f"replays run 1 (marthe on digits/mlp, seed 0): {len(flat(source))} steps" in shown
    command = shown.split("reproduce with:")[1].strip()
    assert "--lr-scheduler replay" in command and "--from-run 1" in command
    ok(capsys, *shlex.split(command)[1:])
    assert step_lrs(db, 3) == source


def test_stretch_agrees_at_matching_fractions_of_training(db: Path, capsys) -> None:
    source = flat(step_lrs(db, 1))
    n = len(source)
    ok(capsys, "baseline", "--lr-scheduler", "replay", "--from-run", "1", "--stretch",
       "--epochs", str(2 * SOURCE_EPOCHS))
    longer = flat(step_lrs(db, 2))
    assert f"steps stretched onto {2 * n}" in ok(capsys, "runs", "show", "2")
    assert len(longer) == 2 * n
    assert longer[::2] == source  # step 2i of 2n and step i of n: the same fraction
    for i in range(n - 1):  # in between: between its neighbours
        assert min(source[i:i + 2]) <= longer[2 * i + 1] <= max(source[i:i + 2])
    ok(capsys, "baseline", "--lr-scheduler", "replay", "--from-run", "1", "--stretch",
       "--epochs", "1")
    shorter = flat(step_lrs(db, 3))
    assert len(shorter) * SOURCE_EPOCHS == n
    assert shorter == source[::SOURCE_EPOCHS]


def test_scale_multiplies_and_a_shorter_run_takes_the_start(db: Path, capsys) -> None:
    source = flat(step_lrs(db, 1))
    ok(capsys, "baseline", "--lr-scheduler", "replay", "--from-run", "1", "--scale", "0.5",
       "--epochs", "2")
    scaled = flat(step_lrs(db, 2))
    assert scaled == [0.5 * v for v in source[: len(scaled)]]
    assert len(scaled) == 2 * len(source) // SOURCE_EPOCHS


def test_a_replay_resumes_to_the_same_lrs(db: Path) -> None:
    """Interrupted between checkpoint and commit, then resumed: the ReplayLR state is restored."""
    config = TrainConfig(method="replay", from_run=1, seed=2, epochs=SOURCE_EPOCHS,
                         checkpoint_dir=str(db.parent / "ck"))
    with open_store(db) as store:
        record_epoch, calls = store.record_epoch, []

        def interrupted_on_the_second_commit(*args, **kwargs):
            calls.append(args[1].epoch)
            if len(calls) == 2:
                raise KeyboardInterrupt
            record_epoch(*args, **kwargs)

        store.record_epoch = interrupted_on_the_second_commit
        first = train(config, store)
        store.record_epoch = record_epoch
        assert first.status == "interrupted"
        assert resume(store, first.run_id).status == "completed"
    assert step_lrs(db, first.run_id) == step_lrs(db, 1)
    import torch  # the checkpoint, schedule and every epoch's LRs included, loads as plain data

    state = torch.load(db.parent / "ck" / f"run-{first.run_id}" / "last.pt", weights_only=True)
    assert state["schedule"]["lrs"].tolist() == flat(step_lrs(db, 1))
    assert state["history"]["lrs"] == [list(e) for e in step_lrs(db, 1)]
    with open_store(db) as store:  # training it longer would leave its schedule's layout
        store.finish_run(first.run_id, "interrupted", error="test")
        with pytest.raises(ConfigError, match="replays a schedule laid out for 3 epochs"):
            resume(store, first.run_id, epochs=SOURCE_EPOCHS + 2)


# ------------------------------------------------------------------ the report
@pytest.mark.slow
def test_the_report_shows_a_replay_next_to_its_source(db: Path, capsys,
                                                      browser) -> None:  # noqa: F811
    from adatune.report import info as ri
    from adatune.report import write_html
    from adatune.report.select import load_details
    from tests.test_report_e2e import open_page

    ok(capsys, "baseline", "--lr-scheduler", "replay", "--from-run", "1", "--stretch",
       "--scale", "0.5", "--epochs", str(2 * SOURCE_EPOCHS), "--seed", "1")
    ok(capsys, "baseline", "--lr-scheduler", "replay", "--from-run", "1", "--seed", "2")
    with open_store(db) as store:  # selecting the replays brings their source along
        details = load_details(store, run_ids=[2, 3])
    assert [d.run.id for d in details] == [1, 2, 3]
    (group,) = ri._get_replay_info(details).groups
    assert group.source_id == 1 and group.source.startswith("#1")
    source, stretched, plain = group.lines
    assert [line.role for line in group.lines] == ["source", "replay", "replay"]
    assert "stretched" in stretched.label and "×0.5" in stretched.label
    assert (plain.x, plain.y) == (source.x, source.y)  # a faithful replay lies on its source
    at = dict(zip(source.x, source.y, strict=True))
    shared = [(x, y) for x, y in zip(stretched.x, stretched.y, strict=True) if x in at]
    assert len(shared) >= len(source.x) // 2
    assert all(y == 0.5 * at[x] for x, y in shared)  # same fraction, scaled
    assert max(stretched.x) > max(source.x) - 0.1 and max(stretched.x) < 1

    page_path = write_html(details, db.parent / "report.html")
    page, problems = open_page(browser, page_path)
    try:
        assert page.evaluate("document.body.dataset.rendered") == "ok"
        names = page.evaluate("document.getElementById('fig-replay-1').data.map(t => t.name)")
        assert names == [f"source {source.label}", f"replay {stretched.label}",
                         f"replay {plain.label}"]
        drawn = page.evaluate(
            "document.querySelectorAll('#fig-replay-1 .scatterlayer .trace').length")
        assert drawn == 3
        assert problems == []
    finally:
        page.close()


# ------------------------------------------------------------------ export
@pytest.mark.parametrize("suffix, fmt", [(".csv", "csv"), (".json", "json")])
@pytest.mark.parametrize("per_epoch", [False, True], ids=["per-step", "per-epoch"])
def test_csv_and_json_round_trip(db: Path, capsys, suffix: str, fmt: str,
                                 per_epoch: bool) -> None:
    path = db.parent / f"schedule{suffix}"
    ok(capsys, "schedule", "export", "1", "-o", str(path), *(["--per-epoch"] * per_epoch))
    with open_store(db) as store:
        recorded = schedule_from_run(store, 1, per_epoch=per_epoch)
        epochs = store.get_run(1).epochs
    back = schedule_from_file(path)
    assert (back.interval, back.lrs, back.epochs, back.steps) == (
        recorded.interval, recorded.lrs, recorded.epochs, recorded.steps)
    if per_epoch:
        assert back.lrs == tuple(e.lr_mean for e in epochs)
        assert back.steps is None
    else:
        assert list(back.lrs) == flat(step_lrs(db, 1))
        assert back.steps == tuple(range(len(back.lrs)))
    if fmt == "json":
        assert back.source["run"] == 1 and back.source["method"] == "marthe"
        assert json.loads(path.read_text())["interval"] == back.interval
    else:
        header = path.read_text().splitlines()[0]
        assert header == ("epoch,lr" if per_epoch else "step,epoch,lr")
    # stdout gives the same text; --format overrides the suffix
    out = ok(capsys, "schedule", "export", "1", "--format", fmt, *(["--per-epoch"] * per_epoch))
    assert out == path.read_text()


@pytest.mark.slow
def test_replay_from_a_file_equals_replay_from_the_run(db: Path, capsys) -> None:
    ok(capsys, "schedule", "export", "1", "-o", "s.csv")
    ok(capsys, "schedule", "export", "1", "-o", "s.json")
    for name in ("s.csv", "s.json"):
        ok(capsys, "baseline", "--lr-scheduler", "replay", "--from-file", name,
           "--epochs", str(SOURCE_EPOCHS))
    assert step_lrs(db, 2) == step_lrs(db, 3) == step_lrs(db, 1)
    with open_store(db) as store:
        config = store.get_run(2).run.config
    assert config["from_file"] == str((db.parent / "s.csv").resolve())
    assert config["extra"]["replay"]["source"]["file"] == config["from_file"]


@pytest.mark.slow
def test_a_per_epoch_file_is_replayed_once_per_epoch(db: Path, capsys) -> None:
    ok(capsys, "schedule", "export", "1", "--per-epoch", "-o", "e.csv")
    ok(capsys, "baseline", "--lr-scheduler", "replay", "--from-file", "e.csv",
       "--epochs", str(SOURCE_EPOCHS))
    with open_store(db) as store:
        means = [e.lr_mean for e in store.get_run(1).epochs]
    assert step_lrs(db, 2) == [[m] * len(e) for m, e in zip(means, step_lrs(db, 1), strict=True)]


_WITHOUT_ADATUNE = textwrap.dedent("""
    import importlib.util, json, sys
    sys.modules["adatune"] = None  # any import of adatune now fails
    import torch
    spec = importlib.util.spec_from_file_location("exported", sys.argv[1])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    params = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(3))]
    optimizer = torch.optim.SGD([{"params": [params[0]]}, {"params": [params[1]], "lr": 0.3}],
                                lr=0.1, momentum=0.9)
    scheduler = module.scheduler(optimizer)
    assert isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR)
    used = []
    for _ in range(int(sys.argv[2])):
        used.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    names = sorted(m for m in sys.modules if m.split(".")[0] == "adatune" and sys.modules[m])
    print(json.dumps({"used": used, "adatune_modules": names}))
""")


@pytest.mark.slow
@pytest.mark.parametrize("per_epoch", [False, True], ids=["per-step", "per-epoch"])
def test_the_torch_file_gives_the_same_lrs_without_adatune(db: Path, capsys,
                                                           per_epoch: bool) -> None:
    ok(capsys, "schedule", "export", "1", "-o", "my_schedule.py", *(["--per-epoch"] * per_epoch))
    with open_store(db) as store:
        expected = list(schedule_from_run(store, 1, per_epoch=per_epoch).lrs)
    probe = db.parent / "probe.py"
    probe.write_text(_WITHOUT_ADATUNE)
    result = subprocess.run(  # -I: no PYTHONPATH, no user site, no current directory
        [sys.executable, "-I", str(probe), str(db.parent / "my_schedule.py"),
         str(len(expected) + 2)], capture_output=True, text=True, timeout=300,
        cwd=db.parent)
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["adatune_modules"] == []
    first = [lrs[0] for lrs in payload["used"]]
    assert first == expected + [expected[-1]] * 2  # value for value, then the last one stays
    second = [lrs[1] for lrs in payload["used"]]
    assert second == pytest.approx([3 * v for v in first], rel=1e-15)  # the groups' ratio


# ------------------------------------------------------------------ bad input
def old_run(db: Path) -> int:
    """A run recorded before per-step LRs: epochs without their array."""
    with open_store(db) as store:
        run_id = store.create_run(NewRun(kind="train", method="marthe", optimizer="sgd",
                                         network="mlp", dataset="digits", seed=0,
                                         config={"method": "marthe", "epochs": 2}))
        for epoch in (1, 2):
            store.record_epoch(run_id, EpochRecord(
                epoch=epoch, lr=0.05, lr_mean=0.04 + 0.001 * epoch, mu=0.99, hyper_lr=1e-4,
                train_loss=1.0, train_acc=0.5, val_loss=1.0, val_acc=0.5, test_loss=1.0,
                test_acc=0.5, elapsed_s=float(epoch)))
        store.finish_run(run_id, "completed")
    return run_id


def one_error_line(code: int, err: str, *fragments: str) -> str:
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("adatune: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def test_a_run_without_step_lrs_suggests_per_epoch(db: Path, capsys) -> None:
    old = old_run(db)
    before = run_ids(db)
    code, out, err = cli(capsys, "schedule", "export", str(old))
    one_error_line(code, err, f"run {old} has no per-step learning rates", "--per-epoch")
    assert out == ""
    code, _, err = cli(capsys, "baseline", "--lr-scheduler", "replay", "--from-run", str(old))
    one_error_line(code, err, "no per-step learning rates", "--per-epoch")
    assert run_ids(db) == before
    out = ok(capsys, "schedule", "export", str(old), "--per-epoch")
    assert out.splitlines() == ["epoch,lr", "1,0.041", "2,0.042"]


BAD_FILES = {
    "empty.csv": ("", "is empty"),
    "noheader.csv": ("0,1,0.05\n1,1,0.05\n", "no 'epoch' column"),
    "fields.csv": ("step,epoch,lr\n0,1,0.05\n1,1\n", "line 3: 2 fields, the header has 3"),
    "word.csv": ("step,epoch,lr\n0,1,fast\n", "line 2: lr 'fast' is not a number"),
    "negative.csv": ("step,epoch,lr\n0,1,0.05\n1,1,-0.01\n", "line 3: lr '-0.01' is not a "
                     "learning rate"),
    "nan.csv": ("step,epoch,lr\n0,1,nan\n", "lr 'nan' is not a learning rate"),
    "inf.csv": ("epoch,lr\n1,inf\n", "lr 'inf' is not a learning rate"),
    "gap.csv": ("step,epoch,lr\n0,1,0.05\n2,1,0.05\n", "step 2, expected 1"),
    "epochs.csv": ("step,epoch,lr\n0,2,0.05\n1,1,0.05\n", "epoch 1 after epoch 2"),
    "rows.csv": ("step,epoch,lr\n", "has no rows"),
    "step.csv": ("step,epoch,lr\n0.5,1,0.05\n", "step '0.5' is not a whole number"),
    "broken.json": ('{"lr": [0.1,', "not JSON"),
    "lengths.json": ('{"step": [0, 1], "epoch": [1, 1], "lr": [0.1]}', '"lr" has 1 values'),
    "nan.json": ('{"step": [0], "epoch": [1], "lr": [NaN]}', "lr nan is not a learning rate"),
    "negative.json": ('{"epoch": [1, 2], "lr": [0.1, -1]}', "point 1: lr -1 is not a"),
    "shape.json": ("[0.1, 0.2]", 'expected an object with "epoch" and "lr"'),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_a_bad_schedule_file_is_one_line_and_writes_no_run(db: Path, capsys, name: str) -> None:
    text, fragment = BAD_FILES[name]
    (db.parent / name).write_text(text)
    code, _, err = cli(capsys, "baseline", "--lr-scheduler", "replay", "--from-file", name)
    one_error_line(code, err, name, fragment)
    assert run_ids(db) == [1]


@pytest.mark.parametrize("args, fragment", [
    (["--from-run", "99"], "no run with id 99"),
    (["--from-file", "missing.csv"], "no schedule file"),
    (["--from-file", "."], "is a directory"),
    ([], "needs --from-run RUN_ID or --from-file FILE"),
    (["--from-run", "1", "--from-file", "s.csv"], "(not both)"),
    (["--from-run", "1", "--scale", "0"], "invalid scale: 0.0"),
    (["--from-run", "1", "--scale", "nan"], "invalid scale: nan"),
    (["--from-run", "1", "--scale", "-2"], "invalid scale: -2.0"),
    (["--from-run", "1", "--epochs", "6"], "add --stretch"),
    (["--from-run", "1", "--t-0", "3"], "--t-0: for the built-in schedules"),
    (["--from-run", "1", "--hyper-lr", "0.1"], "--hyper-lr: for the hypergradient tuners"),
])
def test_bad_replay_options_are_one_line_and_write_no_run(db: Path, capsys, args: list[str],
                                                          fragment: str) -> None:
    code, _, err = cli(capsys, "baseline", "--lr-scheduler", "replay", *args)
    one_error_line(code, err, fragment)
    assert run_ids(db) == [1]


@pytest.mark.parametrize("args, fragment", [
    (["baseline", "--lr-scheduler", "cosine", "--from-run", "1"], "--from-run needs "
     "--lr-scheduler replay"),
    (["baseline", "--stretch"], "--stretch needs --lr-scheduler replay"),
    (["baseline", "--resume", "1", "--from-run", "1"], "--from-run would change it"),
    (["baseline", "--resume", "1", "--scale", "2"], "--scale would change it"),
    (["sweep", "--method", "replay", "--trials", "1"], "no search space for replay"),
    (["find-alpha", "--tuner", "replay"], "needs a hypergradient tuner"),
    (["schedule", "export", "99"], "no run with id 99"),
    (["schedule", "export", "1", "--format", "xml"], "unknown schedule format 'xml'"),
    (["schedule", "export", "1", "-o", "no/such/folder/s.csv"], "cannot write"),
])
def test_other_misuse_is_one_line(db: Path, capsys, args: list[str], fragment: str) -> None:
    code, _, err = cli(capsys, *args)
    one_error_line(code, err, fragment)
    assert run_ids(db) == [1]


def test_schedule_objects_check_themselves() -> None:
    with pytest.raises(ValueError, match="Invalid interval"):
        LRSchedule("batch", (0.1,), (1,))
    with pytest.raises(ValueError, match="differ in length"):
        LRSchedule("step", (0.1, 0.2), (1,), (0,))
    with pytest.raises(ValueError, match="exactly for a per-step"):
        LRSchedule("epoch", (0.1,), (1,), (0,))
    with pytest.raises(ValueError, match="unknown schedule format"):
        format_schedule(LRSchedule("epoch", (0.1,), (1,)), "yaml")


def test_only_a_replay_records_where_its_schedule_comes_from() -> None:
    replay = TrainConfig(method="replay", from_run=3, stretch=True, scale=0.5)
    recorded = replay.to_dict()
    assert (recorded["from_run"], recorded["stretch"], recorded["scale"]) == (3, True, 0.5)
    assert not {"t_0", "t_mult", "step_size", "lr_decay", "hyper_lr", "hyper_update",
                "mu"} & set(recorded)  # neither a built-in schedule's nor a tuner's fields
    assert TrainConfig.from_dict(recorded) == replay  # read back whole
    for method in ("marthe", "cosine", "prodigy"):
        assert not {"from_run", "from_file", "stretch", "scale"} & set(
            TrainConfig(method=method).to_dict())
