"""Hostile input: what a store, a file or the user's own code can hold, and what adatune does.

One test (or a few) per problem an independent hostile probe found, in its
categories: security (what adatune generates never runs a recorded string, it
writes only where it is asked to, it shows recorded strings as plain text and
imports nothing a store names), bad input (one line on stderr, exit code 2, no
run written or changed) and resources and robustness (bounded reads, a store
that cannot be written, user code that ends the process, ranks given different
data). Each fails on the adatune before these fixes and passes after.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from html.parser import HTMLParser
from pathlib import Path

import pytest

from adatune.checks import MAX_NAME, MAX_TEXT
from adatune.errors import ConfigError
from adatune.methods.schedule_file import (
    LRSchedule,
    format_schedule,
    schedule_from_file,
)
from adatune.redact import mask_secrets, printable
from adatune.store import open_store
from tests import _ranks
from tests._cli import cli
from tests.test_store_safety import one_error_line

#: A dataset name that, unescaped in a generated Python file's docstring, runs a command.
PY_BREAKOUT = '"""+str(__import__("os").system("touch PWN"))+"""'
#: A run name that sets the terminal's title and colours when printed raw.
TERMINAL = "\x1b]0;PWNED\x07\x1b[31mRED"
#: Rich markup that crashes a Rich table when a cell is taken as markup.
MARKUP = "[/]"
#: A name that would close the report's script element.
HTML_BREAKOUT = "</script><script>document.title='PWN'</script><img src=x onerror=alert(1)>"
#: Quotes, backslashes, line breaks, a bidirectional override, a surrogate escape.
QUOTES = "'''\\\"\n# x\r\u2028\u202e\\x00"
HOSTILE = (PY_BREAKOUT, TERMINAL, MARKUP, HTML_BREAKOUT, QUOTES)


def _fit(store: Path, *, name: str, dataset: str, checkpoint_dir: Path) -> int:
    """A completed two-epoch run through adatune.fit, named as given (a few seconds)."""
    import torch
    from torch import nn

    import adatune

    torch.manual_seed(0)
    x = torch.randn(120, 4)
    y = (x[:, 0] > 0).long()
    model = nn.Linear(4, 2)
    result = adatune.fit(model, (x[:80], y[:80]), (x[80:], y[80:]),
                         optimizer=torch.optim.SGD(model.parameters(), lr=0.1), tuner=None,
                         store=str(store), epochs=2, name=name, dataset_name=dataset,
                         checkpoint_dir=str(checkpoint_dir))
    assert result.status == "completed"
    return result.run_id


@pytest.fixture(scope="module")
def hostile_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store whose runs 1 to 5 are named (and their data named) with each hostile string."""
    folder = tmp_path_factory.mktemp("hostile")
    store = folder / "adatune.db"
    for text in HOSTILE:
        _fit(store, name=text, dataset=text[:64], checkpoint_dir=folder / "adatune-runs")
    return folder


@pytest.fixture
def hostile(hostile_source: Path, workdir: Path) -> Path:
    """A copy of the hostile store (and its checkpoint folders) as ./adatune.db."""
    return _copy(hostile_source, workdir)


def _copy(source: Path, workdir: Path) -> Path:
    """``source``'s store and checkpoint folders in ``workdir``, the store naming the copies."""
    store = workdir / "adatune.db"
    shutil.copy(source / "adatune.db", store)
    shutil.copytree(source / "adatune-runs", workdir / "adatune-runs")
    with contextlib.closing(sqlite3.connect(store)) as conn, conn:
        for run_id, summary, config in conn.execute(
                "SELECT id, summary, config FROM adatune_runs").fetchall():
            conn.execute("UPDATE adatune_runs SET summary = ?, config = ? WHERE id = ?",
                         (summary.replace(str(source), str(workdir)),
                          config.replace(str(source), str(workdir)), run_id))
    for marker in (workdir / "adatune-runs").glob("run-*/run.json"):
        marker.write_text(marker.read_text().replace(str(source), str(workdir)))
    return store


def _runs(store: Path) -> list[tuple[int, int, str]]:
    with open_store(store, write=False) as db:
        return [(r.id, r.epochs, r.status) for r in db.list_runs()]


def _error_line(code: int, err: str, *fragments: str) -> str:
    line = one_error_line(code, err, *fragments)
    assert "\x1b" not in err
    return line


# ============================================================================ security
# -- 1. what adatune generates holds recorded strings as data ------------------------
class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs) -> None:  # noqa: ANN001
        self.tags.append(tag)

    def handle_data(self, data) -> None:  # noqa: ANN001
        self.text.append(data)


def _body_statements(text: str) -> list[str]:
    return [type(node).__name__ + (f":{node.targets[0].id}" if isinstance(node, ast.Assign)
                                   else f":{node.name}" if isinstance(node, ast.FunctionDef)
                                   else "") for node in ast.parse(text).body]


def test_a_generated_python_file_never_runs_a_recorded_string(hostile: Path, capsys) -> None:
    for run_id, text in enumerate(HOSTILE, start=1):
        module = f"sched_{run_id}"
        code, _, err = cli(capsys, "schedule", "export", str(run_id), "-o", f"{module}.py")
        assert code == 0, err
        source = Path(f"{module}.py").read_text(encoding="utf-8")
        assert source.isascii()  # every recorded string is escaped
        assert _body_statements(source) == [
            "Expr", "ImportFrom", "Assign:SOURCE", "Assign:LRS", "FunctionDef:lr_lambda",
            "FunctionDef:scheduler"]
        spec = importlib.util.spec_from_file_location(module, f"{module}.py")
        loaded = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(loaded)  # on the adatune before: `touch PWN`
        assert loaded.SOURCE["name"] == text and loaded.SOURCE["dataset"] == text[:64]
        assert not Path("PWN").exists()


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_strings_round_trip_through_every_generated_format(workdir: Path,
                                                                   text: str) -> None:
    """py, json and csv (a schedule's exports) and html (the report): the strings come back
    as the same data, and none of them becomes markup or code."""
    from adatune.report.html import render_html
    from adatune.store.records import EpochRecord, RunDetail, RunRecord

    source = {"run": 7, "name": text, "dataset": text, "method": "marthe", "seed": 0}
    schedule = LRSchedule("step", (0.1, 0.05, 0.025), (1, 1, 2), (0, 1, 2), source)
    # py: SOURCE is a literal holding the very strings
    py = format_schedule(schedule, "torch", module="sched")
    assigned = {n.targets[0].id: n.value for n in ast.parse(py).body if isinstance(n, ast.Assign)}
    assert ast.literal_eval(assigned["SOURCE"]) == source
    assert ast.literal_eval(assigned["LRS"]) == list(schedule.lrs)
    assert ast.get_docstring(ast.parse(py)).count(text) == 0
    # json: the same strings back, the same LRs
    Path("s.json").write_text(format_schedule(schedule, "json"), encoding="utf-8")
    back = schedule_from_file("s.json")
    assert back.lrs == schedule.lrs and back.source["name"] == text
    assert json.loads(Path("s.json").read_text())["source"] == source
    # csv: numbers only
    Path("s.csv").write_text(format_schedule(schedule, "csv"), encoding="utf-8")
    assert schedule_from_file("s.csv").lrs == schedule.lrs
    assert Path("s.csv").read_text().splitlines()[0] == "step,epoch,lr"
    # html: the page has the report's own elements only, and shows the string as text
    run = RunRecord(id=7, name=text, experiment=text, kind="train", method="marthe",
                    optimizer="sgd", network=text[:64], dataset=text[:64], seed=0,
                    config={"method": "marthe", "note": text}, status="completed",
                    started_at=None, ended_at=None, heartbeat_at=None, epochs=1,
                    best_val_acc=0.5, best_epoch=1, test_acc=0.5, error=text,
                    adatune_version="0", torch_version="0", device="cpu", host=text)
    epoch = EpochRecord(1, 0.1, 0.1, None, None, 1.0, 0.5, 1.0, 0.5, 1.0, 0.5, 1.0)
    plain = RunRecord(**{**run.__dict__, "name": "plain", "experiment": "plain",
                         "network": "mlp", "dataset": "digits",
                         "config": {"method": "marthe", "note": "plain"}, "error": "plain",
                         "host": "plain"})
    pages = [render_html([RunDetail(r, (epoch,))], compress_plotlyjs=False,
                         title=r.name) for r in (run, plain)]
    tags = []
    for page in pages:
        parser = _Tags()
        parser.feed(page)
        tags.append(parser.tags)
    assert tags[0] == tags[1]  # not one element more
    assert "</script><script>" not in pages[0]
    parser = _Tags()
    parser.feed(pages[0])
    assert text in "".join(parser.text)  # the page's text shows it as it is


# -- 2. writes follow no planted link -------------------------------------------------
@pytest.mark.parametrize("command, target", [
    (["schedule", "export", "1", "-o", "out.csv"], "out.csv"),
    (["report", "html", "-o", "r.html"], "r.html"),
])
def test_a_planted_link_beside_the_target_is_not_written_through(hostile: Path, capsys,
                                                                 command, target) -> None:
    victim = Path("victim.txt")
    victim.write_text("keep me")
    Path(f".{target}.tmp").symlink_to(victim.name)
    code, _, err = cli(capsys, *command)
    assert code == 0, err
    assert victim.read_text() == "keep me"
    assert Path(target).is_file() and not Path(target).is_symlink()
    assert Path(f".{target}.tmp").is_symlink()  # left alone, and nothing else left behind
    assert not [p for p in Path(".").glob(f".{target}.*") if not p.is_symlink()]


# -- 3. the atomic replace clobbers nothing it must not --------------------------------
@pytest.mark.parametrize("command", [["schedule", "export", "1", "-o"], ["report", "html", "-o"]])
@pytest.mark.parametrize("target", ["store", "store-wal", "checkpoint", "fifo", "link",
                                    "folder"])
def test_what_must_not_be_written_over_is_refused(hostile: Path, capsys, command,
                                                  target) -> None:
    other = Path("other.db")
    shutil.copy(hostile, other)
    path = {"store": str(hostile), "store-wal": f"{hostile}-wal", "checkpoint":
            "adatune-runs/run-1/last.pt", "fifo": "pipe.csv", "link": "link.csv",
            "folder": "adatune-runs"}[target]
    if target == "fifo":
        os.mkfifo(path)
    elif target == "link":
        Path("linked.csv").write_text("mine")
        Path(path).symlink_to("linked.csv")
    elif target == "store-wal":
        Path(path).write_bytes(b"")  # as a writer's log would be
    before = {p: (p.lstat().st_mode, p.read_bytes() if p.is_file() else None)
              for p in map(Path, [path, hostile]) if p.exists() or p.is_symlink()}
    code, _, err = cli(capsys, *command, path)
    _error_line(code, err, "is a directory" if target == "folder" else "refusing to write")
    after = {p: (p.lstat().st_mode, p.read_bytes() if p.is_file() else None) for p in before}
    assert after == before
    # another store is an SQLite database: refused too, by its content
    code, _, err = cli(capsys, *command, str(other))
    _error_line(code, err, "it is an SQLite database")
    assert _runs(hostile) == _runs(other)


def test_a_regular_file_is_replaced_whole_keeping_its_permissions(hostile: Path,
                                                                  capsys) -> None:
    Path("s.csv").write_text("old")
    os.chmod("s.csv", 0o640)
    code, _, err = cli(capsys, "schedule", "export", "1", "-o", "s.csv")
    assert code == 0, err
    assert Path("s.csv").read_text().startswith("step,epoch,lr")
    assert stat.S_IMODE(os.stat("s.csv").st_mode) == 0o640


# -- 4. recorded strings reach the terminal as plain text -------------------------------
@pytest.mark.parametrize("command", [["runs", "list"], ["runs", "show", "2"],
                                     ["runs", "show", "3"], ["report", "table"]])
def test_recorded_strings_are_plain_text_on_the_terminal(hostile: Path, capsys,
                                                         command) -> None:
    code, out, err = cli(capsys, *command)
    assert code == 0, err
    for control in ("\x1b", "\x07", "\u202e", "\r"):
        assert control not in out
    if command[-1] != "3":
        # written out (a narrow table may cut the name in its middle, never its start)
        assert printable(TERMINAL)[:4] in out or command == ["report", "table"]
    if command in (["runs", "list"], ["runs", "show", "3"]):
        assert MARKUP in out  # shown as typed, not taken as markup


# -- 5. masking takes linear time; names and free text are bounded -----------------------
@pytest.mark.parametrize("pattern", [
    "a://" + "a:" * 50, "a://u:" + "@" * 100, "?" + "pass" * 50, "x" * 200 + "://",
    "x://u:" + "@a" * 50, ("a://u:" + "x" * 10) * 10, ";token=" * 30,
])
def test_masking_takes_linear_time_on_text_made_to_be_slow(pattern: str) -> None:
    text = (pattern * (200_000 // len(pattern) + 1))[:200_000]
    started = time.process_time()
    mask_secrets(text)
    mask_secrets(text + " postgresql://u:pw@h/db?password=x")
    # quadratic masking took 2.6 s on 40k characters (about 65 s here); linear, milliseconds
    assert time.process_time() - started < 10


def test_names_are_bounded_at_their_columns(workdir: Path, capsys) -> None:
    long = "n" * (MAX_NAME + 1)
    for flag in ("--name", "--experiment"):
        code, _, err = cli(capsys, "train", "--epochs", "1", flag, long)
        _error_line(code, err, f"invalid {flag[2:]}: {MAX_NAME + 1} characters")
    assert not Path("adatune.db").exists()  # refused before the store was opened
    with pytest.raises(ConfigError, match=f"invalid name: {MAX_NAME + 1} characters"):
        _fit(workdir / "fit.db", name=long, dataset="d", checkpoint_dir=workdir / "ck")
    assert _runs(workdir / "fit.db") == []


def test_free_text_is_bounded_where_it_is_recorded(workdir: Path) -> None:
    from adatune.store import NewRun

    huge = "x" * 200_000
    path = workdir / "s.json"
    path.write_text(json.dumps({"interval": "epoch", "source": {"source": huge, "run": 1},
                                "epoch": [1], "lr": [0.1]}))
    recorded = schedule_from_file(path).source
    assert len(recorded["source"]) <= MAX_TEXT and recorded["run"] == 1
    with open_store(workdir / "a.db") as db:
        run_id = db.create_run(NewRun(kind="train", method="hd", optimizer="sgd",
                                      network="mlp", dataset="digits", seed=0,
                                      config={"note": huge}))
        db.finish_run(run_id, "failed", error=huge, summary={"note": huge})
        run = db.get_run(run_id).run
    assert len(run.error) <= MAX_TEXT and len(run.config["note"]) <= MAX_TEXT
    assert len(run.summary["note"]) <= MAX_TEXT


# -- 6. runs delete removes only what adatune wrote for that run ----------------------
def test_runs_delete_does_not_trust_the_stores_checkpoint_dir(hostile: Path, capsys) -> None:
    victim = Path("victim")
    victim.mkdir()
    for name in ("best.pt", "last.pt", "run.json"):
        (victim / name).write_text("mine")
    with sqlite3.connect(hostile) as conn:
        summary = json.loads(conn.execute("SELECT summary FROM adatune_runs WHERE id = 1")
                             .fetchone()[0])
        summary["checkpoint_dir"] = str(victim.resolve())
        conn.execute("UPDATE adatune_runs SET summary = ? WHERE id = 1", (json.dumps(summary),))
    code, out, err = cli(capsys, "runs", "delete", "1", "--yes")
    assert code == 0, err
    assert sorted(p.name for p in victim.iterdir()) == ["best.pt", "last.pt", "run.json"]
    assert f"kept {victim.resolve()}: it is not run 1's folder" in out
    # a run's own folder, linked elsewhere: kept too
    Path("adatune-runs/run-2").rename("moved")
    Path("adatune-runs/run-2").symlink_to(Path("moved").resolve())
    code, out, err = cli(capsys, "runs", "delete", "2", "--yes")
    assert code == 0 and "it is a symbolic link" in out, err
    assert (Path("moved") / "last.pt").is_file()


# -- 7. a replay imports nothing a store names ----------------------------------------
def test_a_replay_imports_no_code_the_source_run_names(workdir: Path, capsys) -> None:
    from adatune.running.config import TrainConfig
    from adatune.store import EpochRecord, NewRun

    Path("planted.py").write_text(
        "open('IMPORTED', 'w').close()\n\n"
        "def make(spec=None):\n    import torch\n    return torch.nn.Sequential("
        "torch.nn.Flatten(), torch.nn.Linear(64, 10))\n")
    config = TrainConfig(method="marthe", model="planted:make", epochs=1).to_dict()
    with open_store("adatune.db") as db:
        run_id = db.create_run(NewRun(kind="train", method="marthe", optimizer="sgd",
                                      network="make", dataset="digits", seed=0, config=config))
        db.record_epoch(run_id, EpochRecord(1, 0.1, 0.1, 0.9, 1e-3, 1.0, 0.5, 1.0, 0.5, 1.0,
                                            0.5, 1.0), lrs=[0.1] * 21)
        db.finish_run(run_id, "completed")
    code, _, err = cli(capsys, "baseline", "--lr-scheduler", "replay", "--from-run", "1")
    _error_line(code, err, "run 1 was trained with --model 'planted:make'",
                "a replay imports no code that a store names", "give --model")
    assert not Path("IMPORTED").exists() and "planted" not in sys.modules
    assert _runs(workdir / "adatune.db") == [(1, 1, "completed")]


# ========================================================================== bad input
# -- 8. unknown status and kind filters ------------------------------------------------
@pytest.mark.parametrize("flag", ["--status", "--kind"])
def test_an_unknown_status_or_kind_is_one_line(hostile: Path, capsys, flag: str) -> None:
    code, out, err = cli(capsys, "runs", "list", flag, "foo")
    _error_line(code, err, f"unknown {flag[2:]} 'foo'", "choose from:")
    assert out == ""


# -- 9. replay files that crashed the reader -------------------------------------------
BAD_REPLAY_FILES = {
    "digits400.json": ('{"epoch": [1], "lr": [' + "1" * 400 + "]}", "is not a learning rate"),
    "digits5000.json": ('{"epoch": [1], "lr": [' + "1" * 5000 + "]}", "is not a learning rate"),
    "nested.json": ('{"epoch": [1], "lr": ' + "[" * 100_000 + "]}", "not JSON"),
    "nested_source.json": ('{"source": ' + "[" * 100_000 + ', "epoch": [1], "lr": [0.1]}',
                           "not JSON"),
    "steps.csv": ("step,epoch,lr\n" + "9" * 5000 + ",1,0.1\n", "is not a whole number"),
}


@pytest.mark.parametrize("name", sorted(BAD_REPLAY_FILES))
def test_a_replay_file_that_crashed_the_reader_is_one_line(hostile: Path, capsys,
                                                           name: str) -> None:
    text, fragment = BAD_REPLAY_FILES[name]
    Path(name).write_text(text)
    before = _runs(hostile)
    code, _, err = cli(capsys, "baseline", "--lr-scheduler", "replay", "--from-file", name)
    line = _error_line(code, err, name, fragment)
    assert len(line) < 400
    assert _runs(hostile) == before


def test_a_replay_file_in_a_link_loop_is_one_line(hostile: Path, capsys) -> None:
    Path("loop.csv").symlink_to("loop.csv")
    before = _runs(hostile)
    code, _, err = cli(capsys, "baseline", "--lr-scheduler", "replay", "--from-file",
                       "loop.csv")
    _error_line(code, err, "cannot read the schedule file", "loop.csv: Too many levels of "
                "symbolic links")
    assert _runs(hostile) == before


# -- 10. space files with numbers a double cannot hold ---------------------------------
@pytest.mark.parametrize("name, text, fragment", [
    ("big.toml", "[lr]\ntype = \"float\"\nlow = 0.001\nhigh = 1" + "0" * 400 + "\n",
     "high must be a finite number, not a 401-digit number"),
    ("digits.toml", "[lr]\ntype = \"float\"\nlow = 0.001\nhigh = 1" + "0" * 5000 + "\n",
     "is not valid TOML"),
    ("big.json", '{"lr": {"type": "float", "low": 0.001, "high": 1' + "0" * 400 + "}}",
     "high must be a finite number"),
    ("choices.json", '{"lr": {"type": "categorical", "choices": [1' + "0" * 400 + "]}}",
     "choices must be numbers, not a 401-digit number"),
    ("nested.json", "[" * 100_000, "is not valid JSON"),
    ("nested.toml", "a = " + "[" * 100_000, "is not valid TOML"),
])
def test_a_space_file_with_numbers_too_large_is_one_line(workdir: Path, capsys, name, text,
                                                         fragment) -> None:
    Path(name).write_text(text)
    code, _, err = cli(capsys, "sweep", "--method", "hd", "--space", name, "--trials", "1")
    line = _error_line(code, err, fragment)
    assert len(line) < 600
    assert not Path("adatune.db").exists()


# -- 11. an export into a read-only folder ---------------------------------------------
@contextlib.contextmanager
def _mounted(folder: Path, options: str):
    """A small tmpfs mounted at ``folder`` with ``options``; yields False where this process
    may not mount one (it needs root with CAP_SYS_ADMIN)."""
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                          capture_output=True) if shutil.which("mount") else None
    if done is None or done.returncode != 0:
        yield False
        return
    try:
        yield True
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


@pytest.mark.parametrize("how", ["read-only file system", "read-only folder"])
def test_an_export_into_a_read_only_folder_is_one_line(hostile: Path, capsys, read_only,
                                                       how: str) -> None:
    folder = Path("locked")
    with contextlib.ExitStack() as stack:
        if how == "read-only file system":  # the temporary file cannot even be removed there
            if not stack.enter_context(_mounted(folder, "ro,size=64k")):
                pytest.skip("cannot mount a read-only tmpfs here (needs root with "
                            "CAP_SYS_ADMIN); the read-only folder case still runs")
        else:
            folder.mkdir()
            stack.enter_context(read_only(folder))
        code, _, err = cli(capsys, "schedule", "export", "1", "-o", "locked/s.csv")
        _error_line(code, err, "cannot write locked/s.csv")
        code, _, err = cli(capsys, "report", "html", "-o", "locked/r.html")
        _error_line(code, err, "cannot write locked/r.html")
        assert list(folder.iterdir()) == []


# -- 12. an LR beyond what the parameters hold is a divergence --------------------------
@pytest.mark.parametrize("args", [
    ["baseline", "--lr-scheduler", "replay", "--from-file", "e.csv", "--scale", "1e308"],
    ["train", "--hyper-update", "additive", "--hyper-lr", "1e300"],
])
def test_a_float_overflow_in_training_is_a_divergence(workdir: Path, capsys, args) -> None:
    Path("e.csv").write_text("epoch,lr\n1,0.05\n")
    code, out, err = cli(capsys, *args, "--epochs", "1")
    assert code == 1, err  # a diverged run, as the command says it: not a crash
    assert "Traceback" not in err
    [(run_id, _, status)] = _runs(workdir / "adatune.db")
    assert status == "diverged"
    with open_store("adatune.db") as db:
        assert "overflowed" in db.get_run(run_id).run.error


# -- 13. a tampered last.pt -------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with ./adatune.db holding run 1: MARTHE on digits, completed after 2 epochs."""
    folder = tmp_path_factory.mktemp("trained")
    env = {k: v for k, v in os.environ.items() if k != "ADATUNE_STORE"}
    subprocess.run([sys.executable, "-m", "adatune_cli", "train", "--epochs", "2"], cwd=folder,
                   env=env, check=True, capture_output=True, timeout=900)
    return folder


@pytest.fixture
def resumable(trained: Path, workdir: Path) -> Path:
    """A copy of the trained run in the working directory: its ``last.pt``."""
    _copy(trained, workdir)
    return workdir / "adatune-runs" / "run-1" / "last.pt"


@pytest.mark.parametrize("field, value, says", [
    ("step", -5, "its step -5 is not where epoch 2"),
    ("epoch", 10**30, "its epoch a 31-digit number is not a whole number from 0 to 3"),
    ("epoch", 5, "its epoch 5 is not a whole number from 0 to 3"),
    ("best_epoch", 7, "its best epoch 7"),
    ("elapsed", float("nan"), "its elapsed nan"),
    ("history", {"epochs": [{"epoch": 1, "evil": 1}], "steps": [], "best": [True]},
     "its history"),
])
def test_a_tampered_checkpoint_is_refused_before_it_is_used(resumable: Path, capsys, field,
                                                            value, says) -> None:
    import torch

    state = torch.load(resumable, weights_only=True)
    state[field] = value
    torch.save(state, resumable)
    code, _, err = cli(capsys, "train", "--resume", "1", "--epochs", "3")
    _error_line(code, err, "cannot read checkpoint", says)
    assert _runs(Path("adatune.db")) == [(1, 2, "completed")]


# -- 14. a classifier with fewer scores than the data has classes ------------------------
def test_a_model_with_too_few_class_scores_is_refused_before_a_run(workdir: Path,
                                                                   capsys) -> None:
    code, _, err = cli(capsys, "train", "--model", "tests.userpkg.models:narrow", "--epochs",
                       "1")
    _error_line(code, err, "gives 3 class scores per example", "the data has 10 classes")
    assert _runs(workdir / "adatune.db") == []


# -- 15. a full disk while a checkpoint is written ---------------------------------------
@pytest.mark.parametrize("disk", ["tmpfs", "injected"])
def test_a_full_disk_is_one_line_and_keeps_the_epochs(workdir: Path, capsys, monkeypatch,
                                                      disk: str) -> None:
    import errno

    import torch

    if disk == "injected":  # torch's own report of a short write on a full disk
        real_save = torch.save

        def full(obj, f, *args, **kwargs):  # noqa: ANN001
            if not (obj.get("kind") == "last" and obj.get("epoch") == 3):  # epoch 3's last.pt
                return real_save(obj, f, *args, **kwargs)
            try:
                raise OSError(errno.ENOSPC, "No space left on device")
            except OSError:
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected "
                                   "pos 68800 vs 68752") from None

        monkeypatch.setattr(torch, "save", full)
        code, _, err = cli(capsys, "train", "--epochs", "3")
        folder = Path("adatune-runs/run-1")
    else:
        with _mounted(workdir / "tiny", "size=64k") as mounted:
            if not mounted:
                pytest.skip("cannot mount a small tmpfs here (needs root with CAP_SYS_ADMIN); "
                            "the injected case covers the same path")
            code, _, err = cli(capsys, "train", "--epochs", "3", "--checkpoint-dir", "tiny")
            assert not [p for p in Path("tiny/run-1").iterdir() if p.suffix == ".tmp"]
        folder = None
    # the run's progress, then one line (no traceback)
    assert code == 2 and "Traceback" not in err, err
    [line] = [line for line in err.splitlines() if line.startswith("adatune: ")]
    assert line.startswith("adatune: error: cannot write checkpoint") and err.endswith(line + "\n")
    assert "no space left on" in line and "unexpected pos" not in line
    [(run_id, epochs, status)] = _runs(workdir / "adatune.db")
    assert status == "failed"
    if folder is not None:  # the epochs written before the disk filled are kept, resumable
        assert epochs == 2 and (folder / "last.pt").is_file()
        assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]
        monkeypatch.setattr(torch, "save", real_save)  # the disk has room again
        code, _, err = cli(capsys, "train", "--resume", str(run_id))
        assert code == 0, err
        assert _runs(workdir / "adatune.db") == [(run_id, 3, "completed")]


# ============================================================== resources and robustness
# -- 17. bounded reads ------------------------------------------------------------------
@pytest.mark.parametrize("command, name", [
    (["baseline", "--lr-scheduler", "replay", "--from-file"], "zero.csv"),
    (["sweep", "--method", "hd", "--trials", "1", "--space"], "zero.toml"),
])
def test_a_device_is_not_read(workdir: Path, capsys, command, name: str) -> None:
    Path(name).symlink_to("/dev/zero")
    code, _, err = cli(capsys, *command, name)
    _error_line(code, err, "is not a regular file or a pipe")


def test_a_space_file_over_its_limit_is_refused_unread(workdir: Path, capsys) -> None:
    from adatune.search.space import MAX_SPACE_BYTES

    Path("big.json").write_text(" " * (MAX_SPACE_BYTES + 1) + "{}")
    code, _, err = cli(capsys, "sweep", "--method", "hd", "--trials", "1", "--space",
                       "big.json")
    _error_line(code, err, "larger than the limit of 1 MB")


def test_a_large_schedule_file_is_read_in_bounded_memory(workdir: Path) -> None:
    path = workdir / "big.csv"
    steps = 400_000
    with open(path, "w") as f:
        f.write("step,epoch,lr\n")
        for i in range(steps):
            f.write(f"{i},{1 + i // 1000},{0.1 / (1 + i * 1e-3)!r}\n")
    size = path.stat().st_size
    tracemalloc.start()
    try:
        schedule = schedule_from_file(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(schedule) == steps
    # the reader kept every row's text and tuples (31x the file); now the points, packed
    assert peak < 10 * size, (peak, size)


def test_a_schedule_read_from_a_pipe(hostile: Path, capsys) -> None:
    """``--from-file <(cat good.csv)``: the path names a pipe, read as it is."""
    good = "epoch,lr\n1,0.05\n"
    read_end, write_end = os.pipe()

    def feed() -> None:
        with os.fdopen(write_end, "w") as w:
            w.write(good)

    writer = threading.Thread(target=feed)
    writer.start()
    try:
        before = _runs(hostile)
        code, _, err = cli(capsys, "baseline", "--lr-scheduler", "replay", "--from-file",
                           f"/dev/fd/{read_end}", "--epochs", "1")
    finally:
        writer.join()
        os.close(read_end)
    assert code == 0, err
    [(run_id, epochs, status)] = [r for r in _runs(hostile) if r not in before]
    assert (epochs, status) == (1, "completed")
    with open_store(hostile) as db:
        config = db.get_run(run_id).run.config
    assert config["from_file"] == f"/dev/fd/{read_end}"


def test_a_schedule_with_a_byte_order_mark_is_read_as_excel_saved_it(workdir: Path) -> None:
    path = workdir / "excel.csv"
    path.write_bytes("step,epoch,lr\r\n0,1,0.1\r\n1,1,0.05\r\n".encode("utf-8-sig"))
    schedule = schedule_from_file(path)
    assert (schedule.interval, schedule.lrs, schedule.steps) == ("step", (0.1, 0.05), (0, 1))
    path = workdir / "excel.json"
    path.write_bytes('{"epoch": [1], "lr": [0.1]}'.encode("utf-8-sig"))
    assert schedule_from_file(path).lrs == (0.1,)


# -- 18. a store that cannot be written can be read -------------------------------------
def _as_another_user(args: list[str]) -> tuple[int, str, str]:
    """``adatune ARGS`` in a child process of this one, as the user nobody (we are root).

    The child is forked, not executed: this interpreter lives where that user may not
    read, and every module the command needs is already imported here.
    """
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop root, run the command, report its exit code
        code = 125
        try:
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            from adatune_cli.main import main

            sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
            sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
            try:
                code = main(args)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)
    os.close(out_w)
    os.close(err_w)
    with os.fdopen(out_r) as o, os.fdopen(err_r) as e:
        out, err = o.read(), e.read()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out, err


READ_ONLY_COMMANDS = [["runs", "list"], ["runs", "show", "1"], ["schedule", "export", "1"],
                      ["report", "table"], ["db", "current"], ["db", "check"]]


def test_a_store_this_user_cannot_write_is_read(hostile: Path, capsys) -> None:
    folder = Path(tempfile.mkdtemp(prefix="adatune-ro-", dir="/tmp"))
    try:
        store = folder / "adatune.db"
        shutil.copy(hostile, store)
        for args in READ_ONLY_COMMANDS:  # as this user first: every module is imported
            assert cli(capsys, *args, "--store", str(store))[0] == 0
        store.chmod(0o444)
        folder.chmod(0o755)  # owned by root: no -wal or -shm can be made beside it either
        if os.geteuid() == 0:
            run = _as_another_user
        else:
            folder.chmod(0o555)

            def run(args):  # noqa: ANN001, ANN202
                return cli(capsys, *args)
        for args in READ_ONLY_COMMANDS:
            code, out, err = run([*args, "--store", str(store)])
            assert code == 0, (args, err)
            assert out.strip() and "cannot write" not in err
        assert sorted(p.name for p in folder.iterdir()) == ["adatune.db"]
        # a command that writes says why it cannot
        code, _, err = run(["runs", "delete", "1", "--yes", "--store", str(store)])
        assert code == 2 and "cannot" in err and "Traceback" not in err
    finally:
        folder.chmod(0o755)
        shutil.rmtree(folder, ignore_errors=True)


# -- 19. user code that calls sys.exit -------------------------------------------------
@pytest.mark.parametrize("args, says", [
    (["--model", "tests.userpkg.models:exits"], "--model 'tests.userpkg.models:exits' called "
                                                "sys.exit(0)"),
    (["--data", "tests.userpkg.data:exits"], "--data 'tests.userpkg.data:exits' called "
                                             "sys.exit(0)"),
])
def test_sys_exit_in_user_code_is_that_codes_error(workdir: Path, capsys, args, says) -> None:
    code, _, err = cli(capsys, "train", *args, "--epochs", "1")
    _error_line(code, err, says)
    assert _runs(workdir / "adatune.db") == []


def test_sys_exit_in_the_module_of_user_code_is_that_codes_error(workdir: Path,
                                                                 capsys) -> None:
    Path("exiting_at_import.py").write_text("import sys\nsys.exit(3)\n")
    code, _, err = cli(capsys, "train", "--model", "exiting_at_import:make", "--epochs", "1")
    _error_line(code, err, "cannot import --model 'exiting_at_import:make': called sys.exit(3)")


# -- 20. torchrun with data that differs across ranks ----------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("factory", ["shifted", "shorter"])
def test_ranks_given_different_data_are_refused_on_rank_0(tmp_path: Path, factory) -> None:
    store = tmp_path / "runs.db"
    argv = ["-m", "adatune_cli", "train", "--store", str(store), "--epochs", "1",
            "--batch-size", "32", "--device", "cpu", "--data", f"tests.userpkg.ranked:{factory}",
            "--model", "tests.userpkg.models:conv1d"]
    (code0, _, err0), (code1, _, err1) = _ranks.run([argv, argv], tmp_path)
    assert (code0, code1) == (2, 2), (err0[-2000:], err1[-2000:])
    [line] = [line for line in err0.splitlines() if line.strip()]
    assert line.startswith("adatune: error: the ranks were given different data"), line
    assert "rank 1's train differ" in line
    assert err1.strip() == ""
    if store.exists():
        with open_store(store) as db:
            assert db.list_runs() == []


# -- 21. a resume refused after its options were checked says nothing of them -----------
def test_a_resume_refused_later_announces_no_change(resumable: Path, capsys) -> None:
    from adatune.running.folder import RunLock

    lock = RunLock(resumable.parent).acquire(1, str(Path("adatune.db").resolve()))
    try:  # a live process holds the run's folder: the resume is refused when it takes it
        code, _, err = cli(capsys, "train", "--resume", "1", "--epochs", "3")
    finally:
        lock.release()
    _error_line(code, err, "is still running")
    assert "resuming run 1" not in err
    assert _runs(Path("adatune.db")) == [(1, 2, "completed")]
