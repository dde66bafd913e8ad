"""The light name tables agree with what the training stack builds.

The command checks names against torch-free tables (:mod:`adatune.catalog`,
:mod:`adatune.methods.peers`, the losses of :mod:`adatune.running.config`) before it imports
torch; the builders then pick by those names. Each table is defined once and
re-exported; these tests check the re-exports are the same objects and that
every name the tables accept builds the part it names (a builder's last branch
would otherwise quietly build its default for a name added only to a table).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.optim import lr_scheduler

import adatune
from adatune import catalog
from adatune.data import datasets, models
from adatune.methods import peers, schedules
from adatune.methods.schedules import ScheduleConfig, build_schedule
from adatune.running import build, config, losses

#: What each name means: the spec of the tables, not a number standing in for one.
TUNERS = {"marthe": adatune.MARTHE, "rtho": adatune.RTHO, "hd": adatune.HD}
OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
SCHEDULES = {"constant": lr_scheduler.LambdaLR, "staircase": lr_scheduler.StepLR,
             "exponential": lr_scheduler.ExponentialLR,
             "cosine": lr_scheduler.CosineAnnealingWarmRestarts}


def test_each_table_is_defined_once() -> None:
    assert datasets.DATASET_NAMES is catalog.DATASET_NAMES
    assert datasets.canonical_dataset is catalog.canonical_dataset
    assert models.NETWORK_NAMES is catalog.NETWORK_NAMES
    assert models.canonical_network is catalog.canonical_network
    assert schedules.SCHEDULE_NAMES is catalog.SCHEDULE_NAMES
    assert schedules.canonical_schedule is catalog.canonical_schedule
    assert config.TUNER_NAMES is catalog.TUNER_NAMES
    assert config.OPTIMIZER_NAMES is catalog.OPTIMIZER_NAMES
    assert config.PEER_NAMES is peers.PEER_NAMES


def _model() -> nn.Module:
    return nn.Linear(3, 2)


@pytest.mark.parametrize("name", catalog.TUNER_NAMES)
def test_each_tuner_name_builds_its_tuner(name: str) -> None:
    assert set(TUNERS) == set(catalog.TUNER_NAMES)
    cfg = config.TrainConfig(method=name)
    model = _model()
    tuner = build.build_tuner(cfg, build.build_optimizer(cfg, model), model)
    assert type(tuner) is TUNERS[name]


@pytest.mark.parametrize("name", catalog.OPTIMIZER_NAMES)
def test_each_optimizer_name_builds_its_optimizer(name: str) -> None:
    assert set(OPTIMIZERS) == set(catalog.OPTIMIZER_NAMES)
    optimizer = build.build_optimizer(config.TrainConfig(method="constant", optimizer=name),
                                      _model())
    assert type(optimizer) is OPTIMIZERS[name]


@pytest.mark.parametrize("name", catalog.SCHEDULE_NAMES)
def test_each_schedule_name_builds_its_scheduler(name: str) -> None:
    assert set(SCHEDULES) == set(catalog.SCHEDULE_NAMES)
    optimizer = torch.optim.SGD(_model().parameters(), lr=0.1)
    schedule = build_schedule(optimizer, ScheduleConfig(name), steps_per_epoch=3)
    assert type(schedule.scheduler) is SCHEDULES[name]


@pytest.mark.parametrize("name", losses.LOSS_NAMES)
def test_each_loss_name_is_its_loss(name: str) -> None:
    torch.manual_seed(0)
    output = torch.randn(5, 3)
    if name == "cross_entropy":
        target = torch.randint(0, 3, (5,))
        expected, classification = nn.functional.cross_entropy(output, target), True
    else:
        target = torch.randn(5, 3)
        expected, classification = nn.functional.mse_loss(output, target), False
    loss, is_classification = losses.build_loss(losses.canonical_loss(name))
    assert is_classification is classification
    torch.testing.assert_close(loss(output, target), expected)


@pytest.mark.parametrize("name", peers.PEER_NAMES)
def test_each_peer_name_is_a_method_of_its_own(name: str) -> None:
    cfg = config.TrainConfig(method=name)
    assert cfg.is_peer and cfg.optimizer == name and not cfg.is_tuner
    assert config.canonical_method(name.replace("-", "_")) == name


def test_the_names_do_not_overlap() -> None:
    groups = [catalog.TUNER_NAMES, catalog.SCHEDULE_NAMES, peers.PEER_NAMES]
    names = [n for group in groups for n in group]
    assert len(names) == len(set(names))
