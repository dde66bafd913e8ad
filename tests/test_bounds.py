"""Odd numbers: every whole-number option of every command is bounded, and a value out of
its bounds is one line on stderr, never a traceback, and never a run."""

from __future__ import annotations

import re

import pytest
import typer

from adatune.errors import ConfigError
from adatune.running.config import MAX_EPOCHS, MAX_SEED, TrainConfig
from adatune.store import open_store
from adatune_cli.main import _register, app
from tests._cli import cli

# What a command needs besides the option under test.
REQUIRED = {("sweep",): ["--method", "constant"]}
ODD = ["-1", str(2**63), "99999999999999999999999", str(2**64 + 1)]


def _integer_parameters() -> list[tuple[tuple[str, ...], str | None]]:
    """(command path, option flag or None for the positional argument) of every INT."""
    _register()
    found = []

    def walk(command, path: tuple[str, ...]) -> None:
        subcommands = getattr(command, "commands", None)
        if subcommands:
            for name, sub in sorted(subcommands.items()):
                walk(sub, (*path, name))
            return
        for param in command.params:
            annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
            if annotation is None:  # plain click parameters
                annotation = getattr(getattr(param, "type", None), "name", "")
            if not re.search(r"\bint\b|integer", str(annotation)):
                continue
            flag = None if param.param_type_name == "argument" else param.opts[0]
            found.append((path, flag))

    walk(typer.main.get_command(app), ())
    return found


PARAMETERS = _integer_parameters()


def test_the_commands_have_the_expected_integer_options() -> None:
    flags = {(" ".join(path), flag) for path, flag in PARAMETERS}
    for command in ("train", "baseline", "find-alpha", "sweep"):
        assert {(command, f) for f in ("--epochs", "--batch-size", "--seed", "--patience",
                                       "--log-every", "--step-size", "--t-0",
                                       "--t-mult")} <= flags
    assert {("find-alpha", "--probe-epochs"), ("find-alpha", "--refine"),
            ("sweep", "--trials"), ("sweep", "--seeds"), ("bench", "--steps"),
            ("bench", "--warmup"), ("bench", "--batch-size"), ("train", "--resume"),
            ("runs show", None), ("runs delete", None), ("report html", "--run"),
            ("report table", "--run")} <= flags


@pytest.mark.parametrize("path, flag", PARAMETERS, ids=lambda v: v if isinstance(v, str)
                         else " ".join(v) if v else "ARG")
def test_every_integer_option_takes_odd_numbers_without_a_traceback(workdir, capsys, path,
                                                                    flag) -> None:
    with open_store("adatune.db"):
        pass
    for value in ODD:
        args = [*path, *REQUIRED.get(path, [])]
        args += [value] if flag is None else [flag, value]
        if path[0] == "runs" and path[-1] == "delete":
            args.append("--yes")
        code, out, err = cli(capsys, *args)
        lines = [line for line in err.splitlines() if line.strip()]
        assert code in (1, 2), (args, out, err)
        assert len(lines) == 1 and lines[0].startswith("adatune: error:"), (args, err)
        assert "Traceback" not in err and "Overflow" not in err
    with open_store("adatune.db", create=False) as db:
        assert db.list_runs() == []


@pytest.mark.parametrize("field, low, high", [
    ("seed", 0, MAX_SEED), ("epochs", 1, MAX_EPOCHS), ("patience", 1, MAX_EPOCHS),
    ("step_size", 1, MAX_EPOCHS), ("t_0", 1, MAX_EPOCHS), ("t_mult", 1, MAX_EPOCHS),
    ("batch_size", 1, 2**31 - 1), ("log_every", 1, 2**31 - 1),
])
def test_the_config_states_its_bounds(field, low, high) -> None:
    TrainConfig(**{field: low})
    TrainConfig(**{field: high})
    for bad in (low - 1, high + 1, True, 2.0):
        with pytest.raises(ConfigError, match=f"invalid {field}: .*from {low} to {high}"):
            TrainConfig(**{field: bad})


@pytest.mark.slow
def test_the_largest_seed_trains(workdir, capsys) -> None:
    code, _, err = cli(capsys, "train", "--epochs", "1", "--seed", str(MAX_SEED))
    assert code == 0, err
    with open_store("adatune.db") as db:
        [run] = db.list_runs()
    assert run.seed == MAX_SEED and run.status == "completed"


def test_a_sweep_whose_seeds_pass_the_largest_is_refused(workdir, capsys) -> None:
    code, _, err = cli(capsys, "sweep", "--method", "constant", "--seed", str(MAX_SEED),
                       "--seeds", "2")
    assert code == 2 and "largest seed" in err
    assert not (workdir / "adatune.db").exists()
