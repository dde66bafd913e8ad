import math

import pytest
import torch

from adatune.errors import ConfigError
from adatune.methods.schedules import ScheduleConfig, build_schedule, canonical_schedule


def _lrs(config, epochs=6, steps=4, lr=0.1):
    w = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([w], lr=lr)
    sched = build_schedule(opt, config, steps_per_epoch=steps)
    seen = []
    for _ in range(epochs):
        for _ in range(steps):
            seen.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.after_step()
        sched.after_epoch()
    return seen


def test_constant_staircase_exponential():
    assert set(_lrs(ScheduleConfig("constant"))) == {0.1}
    stair = _lrs(ScheduleConfig("staircase", step_size=2, lr_decay=0.5))
    assert stair[::4] == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025, 0.025])
    exp = _lrs(ScheduleConfig("exponential", lr_decay=0.9))
    assert exp[::4] == pytest.approx([0.1 * 0.9**e for e in range(6)])


def test_cosine_warm_restarts_stepped_per_iteration():
    lrs = _lrs(ScheduleConfig("cosine", t_0=1, t_mult=2), epochs=3, steps=4)
    # period 1 epoch = 4 iterations, then 8 iterations
    expected = [0.05 * (1 + math.cos(math.pi * i / 4)) for i in range(4)]
    expected += [0.05 * (1 + math.cos(math.pi * i / 8)) for i in range(8)]
    assert lrs == pytest.approx(expected)


@pytest.mark.parametrize("alias, name", [("ed", "exponential"), ("cyclic", "cosine"),
                                         ("staircase", "staircase"), ("CONSTANT", "constant")])
def test_original_names_are_accepted(alias, name):
    assert canonical_schedule(alias) == name


@pytest.mark.parametrize("kwargs", [{"name": "linear"}, {"step_size": 0}, {"lr_decay": 0.0},
                                    {"lr_decay": 1.5}, {"t_0": 0}, {"t_mult": 0}])
def test_bad_schedules_are_rejected(kwargs):
    with pytest.raises(ConfigError):
        ScheduleConfig(**kwargs)
