"""One assembler: the command's runs and ``adatune.fit``'s are opened and trained alike.

Both entry points build their parts and call ``adatune.running.assembly.train_run``.
These are the places where the two used to disagree: the settings of a baseline
schedule, what ``Events.run_started`` receives, and the name of the run's folder.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import adatune
from adatune.errors import ConfigError
from adatune.methods.replay import build_replay
from adatune.methods.schedule_file import LRSchedule
from adatune.running.config import TrainConfig
from adatune.running.engine import resume, train
from adatune.store import open_store
from tests._cli import cli

SMALL = {"train_subset": 0.05, "log_every": 1}  # digits: 4 steps an epoch


def _fit_data(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.randn(48, 8, generator=gen), torch.randint(0, 3, (48,), generator=gen)
    return (x[:32], y[:32]), (x[32:], y[32:])


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Linear(8, 3)


@pytest.mark.parametrize("schedule", ["staircase", "exponential"])
def test_fit_and_the_command_schedule_alike(workdir, schedule):
    """``fit(schedule="exponential")`` decayed by 0.5 an epoch, the command by 0.85; staircase
    stepped every 3 epochs in fit and every 5 in the command. Both now take the command's."""
    with open_store("runs.db") as db:
        command = train(TrainConfig(method=schedule, epochs=7, **SMALL), db)
    train_set, val_set = _fit_data()
    fitted = adatune.fit(_model(), train_set, val_set, schedule=schedule, epochs=7,
                         batch_size=16, store="runs.db")
    lrs = [e.lr for e in command.epochs]
    assert [e.lr for e in fitted.epochs] == lrs  # both start at SGD's default LR, 0.05
    if schedule == "exponential":
        assert lrs[0] == pytest.approx(0.05 * 0.85)
    else:  # halved after every 5 epochs
        assert lrs[:4] == [0.05] * 4 and lrs[4:] == pytest.approx([0.025] * 3)


class _Seen(adatune.Events):
    def __init__(self) -> None:
        self.started: list[tuple[int, object]] = []

    def run_started(self, run_id, config, *, steps_per_epoch, start_epoch) -> None:
        self.started.append((run_id, config))


def test_run_started_gets_the_recorded_configuration_from_every_entry_point(workdir):
    """The engine announced its TrainConfig, fit a dict: both now announce what the store
    records for the run, and so does a resume."""
    seen = _Seen()
    train_set, val_set = _fit_data()
    with open_store("runs.db") as db:
        for start in (
            lambda: train(TrainConfig(epochs=1, **SMALL), db, events=seen),
            lambda: adatune.fit(_model(), train_set, val_set, epochs=1, batch_size=16,
                                store=db, events=seen),
            lambda: resume(db, 1, epochs=2, events=seen),
        ):
            start()
            run_id, config = seen.started[-1]
            assert type(config) is dict
            assert config == db.get_run(run_id, steps=False).run.config
    assert [r for r, _ in seen.started] == [1, 2, 1]
    assert seen.started[2][1]["epochs"] == 2  # the resumed run's new total


def test_both_entry_points_name_the_run_folder_alike(workdir):
    """fit named a resumed run's folder itself; now one function names every run's folder."""
    train_set, val_set = _fit_data()
    with open_store("runs.db") as db:
        command = train(TrainConfig(epochs=1, checkpoint_dir="ck", **SMALL), db)
        fitted = adatune.fit(_model(), train_set, val_set, epochs=1, batch_size=16, store=db,
                             checkpoint_dir="ck")
        for result in (command, fitted):
            expected = Path("ck").resolve() / f"run-{result.run_id}"
            assert result.checkpoint_dir == str(expected)
            assert (expected / "last.pt").is_file()
            run = db.get_run(result.run_id, steps=False).run
            assert run.summary["checkpoint_dir"] == str(expected)
    again = adatune.fit(_model(), train_set, val_set, epochs=2, batch_size=16, store="runs.db",
                        checkpoint_dir="ck", resume=fitted.run_id)
    assert again.checkpoint_dir == fitted.checkpoint_dir
    assert [e.epoch for e in again.epochs] == [1, 2]


def test_library_errors_name_arguments_and_the_command_names_flags(workdir, capsys):
    """The library says ``stretch=True`` (an argument); the command says ``--stretch``."""
    schedule = LRSchedule("step", (0.1, 0.1), (1, 1), (0, 1))
    optimizer = torch.optim.SGD(_model().parameters(), lr=0.1)
    with pytest.raises(ConfigError) as info:
        build_replay(optimizer, schedule, epochs=3, steps_per_epoch=2)
    assert "add stretch=True" in str(info.value) and "--" not in str(info.value)
    with pytest.raises(ConfigError, match=r"^nesterov needs optimizer='sgd'"):
        TrainConfig(optimizer="adam", nesterov=True)
    code, _, err = cli(capsys, "train", "--optimizer", "adam", "--nesterov")
    assert code == 2 and "adatune: error: nesterov needs --optimizer sgd" in err
