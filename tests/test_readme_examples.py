"""The README's examples run as written (the blocks after `<!-- example: NAME -->`)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from adatune.store import open_store
from tests._cli import cli

README = Path(__file__).resolve().parents[1] / "README.md"


def example(name: str) -> str:
    """The fenced code block that follows the marker ``<!-- example: name -->``."""
    text = README.read_text()
    found = re.search(rf"<!-- example: {re.escape(name)} -->\s*```\w*\n(.*?)```", text, re.S)
    assert found, f"no example {name!r} in the README"
    return found.group(1)


def commands(block: str) -> list[list[str]]:
    """The ``adatune ...`` lines of a bash block, without comments, as argument lists."""
    lines = []
    for line in block.splitlines():
        args = shlex.split(line, comments=True)
        if args:
            assert args[0] == "adatune", line
            lines.append(args[1:])
    return lines


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
