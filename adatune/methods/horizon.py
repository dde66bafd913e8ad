"""What the learning rate is a function of when the run's length is known.

Pure scalar math, no torch: the tuners (:mod:`adatune.methods.tuners`), the
run configuration and the command line read these names and defaults.

A tuner that knows the run's length ``T`` (``total_steps``) sets the LR of
step ``t`` to ``s * shape(t)``: a linear warm-up over the first ``W =
round(warmup * T)`` steps, then the annealing ``anneal`` (cosine or linear to
0 at ``T``, or none). The hypergradient decides how big the LR is (the scale
``s``); the shape decides when it anneals. ``s`` moves in three phases:

``"warmup"`` (``t < W``)
    The hypergradient of the validation loss with respect to ``log s`` moves
    ``s`` both ways, by the update rule (:mod:`adatune.methods.hyper_update`).
    Far from the loss's noise floor the short-horizon hypergradient is
    informative, and the ramp brings the LR to ``s`` gradually, so that an
    ``s`` that is too high shows before the LR reaches it. A hypergradient is
    evidence about the LR that produced it, which the ramp keeps below ``s``:
    a "raise" lifts ``s`` only as far as it must to carry that LR up (``s <-
    max(s, lr * up)``, ``up`` the rule's factor), so ``s`` never runs ahead of
    the LRs actually tried; a "lower" lowers ``s`` by the rule's factor.
``"climb"``
    ``s`` may only rise, while the hypergradient says so. Short-horizon bias
    only ever pulls the LR down (Wu et al., ICLR 2018): a hypergradient that
    says "raise" despite it is trusted, one that says "lower" is not. The
    first hyper step that would not raise ``s`` ends the phase.
``"fixed"``
    ``s`` is final; no hypergradient is computed: the tuner takes plain
    optimizer steps along the shape, at a plain step's cost.

``docs/benchmarks.md`` holds the evidence behind each default.
"""

from __future__ import annotations

import math
from typing import Any

#: The annealing after the warm-up: cosine to 0 at the run's end, linear to 0, or none.
ANNEALS: tuple[str, ...] = ("cosine", "linear", "none")
DEFAULT_ANNEAL = "cosine"
#: The warm-up (and tuning) phase, as a fraction of the run.
DEFAULT_WARMUP = 0.1
#: The scale-free rule's hyper-LR with a horizon: log(scale) moves at most 0.03 a step,
#: so that the warm-up of a 2000-step run (200 steps) can cross a factor e^6 (0.01x to
#: 10x the best LR and back) and the climb after it is as fast.
HORIZON_HYPER_LR = 0.03

WARMUP, CLIMB, FIXED = "warmup", "climb", "fixed"
PHASES: tuple[str, ...] = (WARMUP, CLIMB, FIXED)


def canonical_anneal(name: Any) -> str:
    """The annealing's canonical name (ValueError naming ``anneal`` otherwise)."""
    key = name.strip().lower() if isinstance(name, str) else None
    if key not in ANNEALS:
        raise ValueError(f"Invalid anneal: {name!r} (choose from {', '.join(ANNEALS)})")
    return key


def check_warmup(value: Any) -> float:
    """``warmup``: a fraction of the run in (0, 1) (ValueError naming it otherwise)."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        x = math.nan
    if isinstance(value, bool) or not 0.0 < x < 1.0:
        raise ValueError(f"Invalid warmup: {value!r} (a fraction of the run in (0, 1))")
    return x


def check_total_steps(value: Any) -> int:
    """``total_steps``: a positive whole number (ValueError naming it otherwise)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"Invalid total_steps: {value!r} (a positive whole number)")
    return value


def warmup_steps(total_steps: int, warmup: float) -> int:
    """``W``: the warm-up's length in steps (at least 1, fewer than ``total_steps``
    where the run has more than one step)."""
    return max(1, min(round(warmup * total_steps), total_steps - 1))


def factor(step: int, total_steps: int, warmup: float, anneal: str) -> float:
    """``shape(step)``: the LR of step ``step`` (from 0) over the scale ``s``.

    The warm-up's first step has ``1 / W``, its last 1; the annealing then
    falls to 0 at ``total_steps`` (never 0 at a step of the run). Steps past
    the run keep the last step's factor.
    """
    w = warmup_steps(total_steps, warmup)
    step = min(max(step, 0), total_steps - 1)
    if step < w:
        return (step + 1) / w
    if anneal == "none":
        return 1.0
    u = (step - w) / (total_steps - w)  # in [0, 1): 0 at the warm-up's end
    if anneal == "linear":
        return 1.0 - u
    return 0.5 * (1.0 + math.cos(math.pi * u))


__all__ = [
    "ANNEALS",
    "CLIMB",
    "DEFAULT_ANNEAL",
    "DEFAULT_WARMUP",
    "HORIZON_HYPER_LR",
    "FIXED",
    "PHASES",
    "WARMUP",
    "canonical_anneal",
    "check_total_steps",
    "check_warmup",
    "factor",
    "warmup_steps",
]
