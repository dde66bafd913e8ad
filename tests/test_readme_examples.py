"""The examples of the README and docs/ run as written (the blocks after `<!-- example: NAME -->`).

Every marked block is run by a test here (the last test checks that none is left
out); the tour of every command (docs/cli.md) trains a few short runs and is
marked slow.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from adatune.store import open_store
from tests._cli import cli

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARKER = re.compile(r"<!-- example: ([^>]+?) -->\s*```\w*\n(.*?)```", re.S)
RUN_HERE = {"quick start", "fit", "fit-peer", "mymodels.py", "own-model commands",
            "replay commands", "tour",
            # docs/integrations.md: run by tests/test_integrations.py, with the frameworks
            "lightning", "lightning-hd", "huggingface", "hd-optimizer"}


def _examples() -> dict[str, str]:
    found: dict[str, str] = {}
    for page in PAGES:
        for name, block in MARKER.findall(page.read_text()):
            assert name not in found, f"two examples named {name!r}"
            found[name] = block
    return found


def example(name: str) -> str:
    """The fenced code block that follows the marker ``<!-- example: name -->``."""
    found = _examples()
    assert name in found, f"no example {name!r} in the README or docs/"
    return found[name]


def commands(block: str) -> list[list[str]]:
    """The ``adatune ...`` lines of a bash block, without comments, as argument lists."""
    lines = []
    for line in block.splitlines():
        args = shlex.split(line, comments=True)
        if args:
            assert args[0] == "adatune", line
            lines.append(args[1:])
    return lines


@pytest.mark.slow
def test_the_quick_start_runs_as_written(workdir, capsys, monkeypatch):
    opened = []
    monkeypatch.setattr("webbrowser.open", opened.append)
    lines = commands(example("quick start"))
    for args in lines:
        code, _, err = cli(capsys, *args)
        assert code == 0, (args, err)
    with open_store("adatune.db") as db:
        assert [r.method for r in db.list_runs()] == ["marthe", "constant", "cosine"]
    assert (workdir / "report.html").is_file() and len(opened) == 1


def test_the_fit_example_runs_and_records_its_run(workdir, capsys):
    exec(compile(example("fit"), "README.md", "exec"), {"__name__": "readme"})  # noqa: S102
    assert re.search(r"run 1 completed: test accuracy \d", capsys.readouterr().out)
    with open_store("runs.db") as db:
        [run] = db.list_runs()
    assert (run.name, run.method, run.epochs) == ("mine", "marthe", 10)


def test_the_fit_peer_example_runs_and_records_a_schedule_free_run(workdir, capsys):
    exec(compile(example("fit-peer"), "README.md", "exec"), {"__name__": "readme"})  # noqa: S102
    assert re.search(r"run 1: schedulefree-adamw, test accuracy \d", capsys.readouterr().out)
    with open_store("runs.db") as db:
        [run] = db.list_runs()
        steps = db.get_run(run.id).steps
    assert (run.method, run.optimizer, run.epochs) == ("schedulefree-adamw",) * 2 + (5,)
    assert steps[0].lr == 0.01 / 20 and steps[-1].lr == 0.01  # its warm-up, as recorded


@pytest.mark.slow
def test_the_own_model_commands_run_with_the_example_module(workdir, capsys, monkeypatch):
    (workdir / "mymodels.py").write_text(example("mymodels.py"))
    monkeypatch.syspath_prepend(str(workdir))
    lines = commands(example("own-model commands"))
    assert len(lines) >= 3
    for args in lines:
        code, _, err = cli(capsys, *args)
        assert code == 0, (args, err)
    with open_store("adatune.db") as db:
        runs = db.list_runs()
    assert [r.status for r in runs] == ["completed"] * len(lines)
    assert runs[0].network == "make_net" and runs[0].dataset == "make_data"


@pytest.mark.slow
def test_the_replay_commands_run_as_written(workdir, capsys):
    lines = commands(example("replay commands"))
    assert len(lines) >= 6
    for args in lines:
        code, _, err = cli(capsys, *args)
        assert code == 0, (args, err)
    assert (workdir / "marthe.csv").read_text().startswith("step,epoch,lr\n")
    assert "LambdaLR" in (workdir / "marthe_lr.py").read_text()
    with open_store("adatune.db") as db:
        runs = db.list_runs()
        lrs = {r.id: [v for g in db.get_step_lrs(r.id) for v in g.lrs] for r in runs}
    assert [r.method for r in runs] == ["marthe", "replay", "replay", "replay"]
    assert lrs[2] == lrs[1] and lrs[3][::2] == lrs[1]
    assert lrs[4] == [0.5 * v for v in lrs[1]]


@pytest.mark.slow
def test_the_tour_of_every_command_runs_as_written(workdir, capsys):
    lines = commands(example("tour"))
    names = {args[0] for args in lines}
    assert names == {"train", "baseline", "schedule", "find-alpha", "sweep", "runs", "report",
                     "db", "bench"}
    for args in lines:
        code, _, err = cli(capsys, *args)
        assert code == 0, (args, err)
    assert (workdir / "marthe.csv").read_text().startswith("step,epoch,lr\n")
    assert (workdir / "report.html").is_file()


def test_every_example_is_run_by_a_test():
    assert set(_examples()) == RUN_HERE
