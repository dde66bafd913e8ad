"""``adatune.ReplayLR``: a torch LR scheduler that replays a recorded schedule step for step."""

from __future__ import annotations

import io
import math
import random
from fractions import Fraction

import pytest
import torch
from torch.optim import lr_scheduler

import adatune


def optimizer(lr: float = 0.1, groups: int = 1) -> torch.optim.Optimizer:
    params = [{"params": [torch.nn.Parameter(torch.zeros(2))], "lr": lr * (g + 1)}
              for g in range(groups)]
    return torch.optim.SGD(params, lr=lr, momentum=0.9)


def recorded(n: int, seed: int = 0) -> list[float]:
    rng = random.Random(seed)
    return [0.05 * math.exp(rng.gauss(0, 0.3)) for _ in range(n)]


def used(scheduler: lr_scheduler.LRScheduler, steps: int, group: int = 0) -> list[float]:
    """The LR each optimizer step runs at, stepping the scheduler after each, as in a loop."""
    opt = scheduler.optimizer
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[group]["lr"])
        opt.step()
        scheduler.step()
    return out


def test_is_a_torch_scheduler_and_replays_every_value_exactly() -> None:
    lrs = recorded(57)
    scheduler = adatune.ReplayLR(optimizer(), lrs)
    assert isinstance(scheduler, lr_scheduler.LRScheduler)
    assert used(scheduler, 57) == lrs  # the same steps, the same values
    assert used(scheduler, 3) == [lrs[-1]] * 3  # past the end: the last LR stays
    assert scheduler.get_last_lr() == [lrs[-1]]


@pytest.mark.parametrize("n, total", [(40, 80), (40, 120), (40, 20), (40, 13), (36, 100)])
def test_stretch_agrees_at_matching_fractions_of_training(n: int, total: int) -> None:
    lrs = recorded(n, seed=n + total)
    replay = used(adatune.ReplayLR(optimizer(), lrs, total_steps=total), total)
    matched = 0
    for t in range(total):
        fraction = Fraction(t, total)
        if (fraction * n).denominator == 1:  # a recorded step sits at this fraction too
            assert replay[t] == lrs[int(fraction * n)]
            matched += 1
        else:  # in between: linear between the two recorded steps around it
            i = math.floor(fraction * n)
            hi = lrs[min(i + 1, n - 1)]
            assert min(lrs[i], hi) <= replay[t] <= max(lrs[i], hi)
            if i + 1 < n:
                w = float(fraction * n - i)
                assert replay[t] == pytest.approx(lrs[i] + (lrs[i + 1] - lrs[i]) * w, rel=1e-12)
    assert matched == math.gcd(n, total)


def test_stretch_onto_the_same_length_is_the_plain_replay() -> None:
    lrs = recorded(30)
    assert used(adatune.ReplayLR(optimizer(), lrs, total_steps=30), 30) == lrs


def test_scale_multiplies_and_other_groups_keep_their_ratio() -> None:
    lrs = recorded(20)
    scheduler = adatune.ReplayLR(optimizer(lr=0.2, groups=3), lrs, scale=2.5)
    assert used(scheduler, 20) == [2.5 * v for v in lrs]
    for group in (1, 2):
        scheduler = adatune.ReplayLR(optimizer(lr=0.2, groups=3), lrs)
        ratio = (group + 1) * 0.2 / 0.2
        assert used(scheduler, 20, group) == pytest.approx([ratio * v for v in lrs], rel=1e-15)


def test_state_dict_survives_weights_only_load_and_the_replay_continues() -> None:
    lrs = recorded(25)
    first = adatune.ReplayLR(optimizer(), lrs, total_steps=50, scale=0.5)
    head = used(first, 17)
    buffer = io.BytesIO()  # as a checkpoint holds them: the optimizer's state and the scheduler's
    torch.save({"optim": first.optimizer.state_dict(), "sched": first.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    state = saved["sched"]
    assert state["lrs"].dtype == torch.float64
    opt = optimizer()
    other = adatune.ReplayLR(opt, [1.0])  # a different schedule, overwritten by the load
    opt.load_state_dict(saved["optim"])
    other.load_state_dict(state)
    assert other.lrs == lrs and (other.total_steps, other.scale) == (50, 0.5)
    rest = used(other, 33)
    straight = used(adatune.ReplayLR(optimizer(), lrs, total_steps=50, scale=0.5), 50)
    assert head + rest == straight


@pytest.mark.parametrize("kwargs, match", [
    ({"lrs": []}, "Invalid lrs: empty"),
    ({"lrs": [0.1, -0.01]}, r"Invalid lrs: -0.01 at step 1"),
    ({"lrs": [0.1, float("nan")]}, "Invalid lrs: nan at step 1"),
    ({"lrs": [float("inf")]}, "Invalid lrs: inf at step 0"),
    ({"lrs": ["x"]}, "Invalid lrs"),
    ({"lrs": [0.1], "total_steps": 0}, "Invalid total_steps"),
    ({"lrs": [0.1], "scale": 0.0}, "Invalid scale"),
    ({"lrs": [0.1], "scale": float("inf")}, "Invalid scale"),
])
def test_bad_arguments_name_themselves(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        adatune.ReplayLR(optimizer(), **kwargs)
