"""The examples of the README and docs/ run as written (the blocks after `<!-- example: NAME -->`).

Every marked block is run by a test here (the last test checks that none is left
out); the tour of every command (docs/cli.md) trains a few short runs and is
marked slow.
"""

from __future__ import annotations

import io
import re
import shlex
from pathlib import Path

import pytest

from adatune.store import open_store
from tests._cli import cli

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARKER = re.compile(r"<!-- example: ([^>]+?) -->\s*```\w*\n(.*?)```", re.S)
RUN_HERE = {"quick start", "after the quick start", "fit", "fit-peer", "mymodels.py",
            "own-model commands", "replay commands", "tour",
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


#: The commands that train, and the options that keep them short in a test.
TRAINING = {"train", "baseline", "find-alpha", "sweep"}


def small(args: list[str]) -> list[str]:
    """``args`` with few epochs (and short probes, a short bench): what a test can afford."""
    args = list(args)

    def setting(flag: str, value: str) -> None:
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args.extend([flag, value])

    if args[0] in TRAINING and "--resume" not in args:
        setting("--epochs", "2")
        if args[0] == "find-alpha":
            setting("--probe-epochs", "1")
    if args[0] == "bench":
        setting("--steps", "2")
        setting("--warmup", "0")
        args.append("--no-memory")
    return args


#: How a command introduces what to run next: ``next:``, ``compare:``, or a line of its own
#: (``train with it:`` and ``reproduce with:`` put the command on the next line).
_PRINTED = re.compile(r"^(?:next:|compare:)?\s*(adatune\s.*)$")


def printed_commands(out: str) -> list[list[str]]:
    """The ``adatune ...`` commands a command printed for its reader to run (comments off)."""
    found = []
    for line in out.splitlines():
        match = _PRINTED.match(line.strip())
        if match:
            found.append(shlex.split(match.group(1), comments=True)[1:])
    return found


@pytest.mark.slow
def test_the_readme_runs_in_order_as_a_newcomer_would(workdir, capsys, monkeypatch):
    """Every command of the README, in order, in one empty folder (with few epochs); then
    every command they printed for the reader to run next."""
    opened = []
    monkeypatch.setattr("webbrowser.open", opened.append)
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # nobody at the keyboard
    lines = commands(example("quick start")) + commands(example("after the quick start"))
    assert len(lines) >= 14
    printed: list[list[str]] = []
    outputs = {}
    for args in lines:
        code, out, err = cli(capsys, *small(args))
        assert code == 0, (args, err)
        outputs[" ".join(args[:2])] = out
        printed += [p for p in printed_commands(out) if p not in printed]
    # the run ids the README's comments give are the ones its commands made
    with open_store("adatune.db") as db:
        runs = {r.id: r for r in db.list_runs()}
    assert [runs[i].method for i in range(1, 6)] == ["marthe", "constant", "cosine", "replay",
                                                     "prodigy"]
    assert runs[4].config["from_run"] == 1 and runs[6].kind == "find-alpha"
    assert all(r.status == "completed" for r in runs.values() if r.kind != "probe")
    assert outputs["runs list"].count("completed") == 3
    assert (workdir / "report.html").is_file() and len(opened) == 1
    assert (workdir / "lr.csv").read_text().startswith("step,epoch,lr\n")
    # each store keeps its checkpoints in a folder of its own: no --checkpoint-dir needed
    assert (workdir / "adatune-runs" / "run-1" / "last.pt").is_file()
    assert (workdir / "sweeps-runs" / "run-1" / "last.pt").is_file()
    sweep = outputs["sweep --method"]
    # finished: every trial ran (a diverged trial is a result, not an interruption)
    assert "4 of 4 trials (" in sweep and "interrupted" not in sweep
    # and every command the README's commands printed for the reader runs
    kinds = {args[0] for args in printed}
    assert {"runs", "report", "baseline", "train"} <= kinds, printed
    for args in printed:
        code, _, err = cli(capsys, *small(args))
        assert code == 0, (args, err)


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
