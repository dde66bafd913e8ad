"""How the learning rate moves once the hypergradient ``h`` is known.

A hypergradient tuner makes two separate choices (docs/benchmarks.md section 1):
*what* ``h`` is (the exact derivative of the validation loss with respect to
the past learning rates; the oracle tests check it) and *how* the learning
rate moves given ``h``. This module is the second: pure scalar math, no
torch, shared by the tuners and the configuration.

``"additive"``, the papers' rule (Baydin et al. 2018; Donini et al. 2020)::

    eta <- max(eta - beta * h, 0)

``beta`` is in units of learning rate per unit of hypergradient, whose size
depends on the loss, the network, the batch and the optimizer, so no default
carries from one task to another; the LR can reach 0 and stay there.

``"scale-free"``: the LR moves in log space by a dimensionless, normalized
hypergradient. With ``x = eta * h`` (the derivative with respect to
``log eta``), moving averages as in Adam (bias-corrected)::

    m <- B1 m + (1 - B1) x          v <- B2 v + (1 - B2) x^2
    n  = clip(m_hat / sqrt(v_hat), -1, 1)
    log eta <- log eta - beta * n            when n < 0 (raise the LR)
    log eta <- log eta - DOWN * beta * n     when n > 0 (lower it)

``n`` is a signal-to-noise ratio: near +-1 while ``h`` keeps its sign and
size, near 0 while it is noise (the moving average cancels), whatever the
units of ``h``: multiplying the loss, or ``h``, by any constant changes
nothing. ``beta`` is the largest change of ``log eta`` in one step (at most
a factor ``exp(beta)`` up), so a long run of same-sign hypergradients raises
the LR by ``exp(beta)`` per step at most, and the LR stays > 0. Lowering is
``DOWN`` times faster than raising: past the edge of stability an LR that is
too high ruins a run in a few steps, while one that is too low only slows
it, so the rule backs off fast and creeps up slowly (as a backtracking line
search does). A non-finite ``h`` never reaches the rule (the tuner skips it
and leaves the state alone).

The fast back-off is kept for when it matters. A flat ``DOWN`` lets a noisy
``n`` drag the LR down while training goes well (a positive ``n`` counts
``DOWN`` times a negative one), so the LR drifts below where it should be.
The training loss tells the two situations apart (:func:`note_loss`): while
it rises, or has not yet fallen below ``STALL`` times its first value (too
high an LR kills a network in its first steps, and a dead one no longer
learns), lowering is ``DOWN`` times faster; otherwise it is ``1 + (DOWN - 1)
n^2`` times faster, fast only on consistent evidence. Without losses (the
low-level ``hyper_step`` API) the back-off stays at ``DOWN``.

``alpha`` adapts ``beta``. Additive: ``beta <- max(beta + alpha * h * eta, 0)``
(the original AdaTune's rule). Scale-free: ``log beta <- log beta + alpha *
r_t * r_{t-1}`` with ``r = clip(x / sqrt(v_hat), -1, 1)``, the normalized
hypergradient of each step (Sutton's IDBD idea in log space: ``beta`` grows
while successive hypergradients agree and shrinks while they alternate),
kept at most ``MAX_HYPER_LR``. There ``alpha`` is dimensionless too.
"""

from __future__ import annotations

import math
from typing import Any

ADDITIVE = "additive"
SCALE_FREE = "scale-free"
HYPER_UPDATES: tuple[str, ...] = (ADDITIVE, SCALE_FREE)
#: The rule a tuner uses unless told otherwise.
DEFAULT_HYPER_UPDATE = SCALE_FREE

#: Scale-free rule: decay of the moving averages, and how much faster the LR goes down.
B1 = 0.9
B2 = 0.99
DOWN = 10.0
#: Scale-free rule: decays of the training loss's fast and slow moving averages (the
#: loss rises while the fast one is above the slow one), and the fraction of its first
#: value the loss must fall below before the back-off may slow down.
LOSS_FAST = 0.5
LOSS_SLOW = 0.95
STALL = 0.8
#: Scale-free rule: the default (dimensionless) hyper-LR of each tuner.
SCALE_FREE_HYPER_LR: dict[str, float] = {"marthe": 0.015, "rtho": 0.015, "hd": 0.015}
#: Scale-free rule: the largest hyper-LR (and alpha) accepted.
MAX_HYPER_LR = 1.0


def canonical_hyper_update(name: Any) -> str:
    """The rule's canonical name (ValueError naming ``hyper_update`` otherwise)."""
    key = name.strip().lower().replace("_", "-") if isinstance(name, str) else None
    if key not in HYPER_UPDATES:
        raise ValueError(f"Invalid hyper_update: {name!r} (choose from "
                         f"{', '.join(HYPER_UPDATES)})")
    return key


def hyper_lr_range(rule: str) -> tuple[float, float]:
    """``(low, high)``, both inclusive, of the hyper-LR (and alpha) a rule accepts."""
    return (0.0, math.inf) if rule == ADDITIVE else (0.0, MAX_HYPER_LR)


def initial_state() -> dict[str, float]:
    """The scale-free rule's own state: flat numbers, kept in the tuner's ``state``."""
    return {"hyper_m": 0.0, "hyper_v": 0.0, "hyper_steps": 0, "hyper_r": 0.0,
            "loss_steps": 0, "loss_fast": 0.0, "loss_slow": 0.0, "loss_first": 0.0,
            "loss_alarm": 1.0}


def note_loss(state: dict[str, Any], loss: float, *, fast: float = LOSS_FAST,
              slow: float = LOSS_SLOW, stall: float = STALL) -> None:
    """Follow the training loss; set ``state["loss_alarm"]`` (1.0 or 0.0).

    The alarm is on while the loss rises (its fast moving average, bias-corrected,
    is above its slow one) or stays above ``stall`` times its first value. A
    non-finite ``loss`` changes nothing.
    """
    if not math.isfinite(loss):
        return
    k = state["loss_steps"] + 1
    state["loss_steps"] = k
    if k == 1:
        state["loss_first"] = loss
    state["loss_fast"] = fast * state["loss_fast"] + (1.0 - fast) * loss
    state["loss_slow"] = slow * state["loss_slow"] + (1.0 - slow) * loss
    f_hat = state["loss_fast"] / (1.0 - fast ** k)
    s_hat = state["loss_slow"] / (1.0 - slow ** k)
    rising = f_hat > s_hat
    stalled = f_hat > stall * state["loss_first"]
    state["loss_alarm"] = 1.0 if rising or stalled else 0.0


def additive_step(lr: float, h: float, *, hyper_lr: float) -> float:
    """``max(lr - hyper_lr * h, 0)``."""
    return max(lr - hyper_lr * h, 0.0)


def scale_free_step(lr: float, h: float, state: dict[str, Any], *, hyper_lr: float,
                    b1: float = B1, b2: float = B2, down: float = DOWN,
                    calm: str = "evidence") -> float:
    """The new LR after the hypergradient ``h``; updates ``state`` in place.

    ``state`` holds the moving averages (``hyper_m``, ``hyper_v``), their step
    count (``hyper_steps``) and, afterwards, this step's normalized
    hypergradient ``hyper_r`` (for :func:`adapt_hyper_lr`). ``h`` must be
    finite, and so must ``(lr * h) ** 2`` (the tuner checks). The back-off is
    ``down`` times faster while ``state["loss_alarm"]`` is on (see
    :func:`note_loss`; on without one); otherwise ``1 + (down - 1) n^2`` times
    (``calm="evidence"``, the online tuners') or as fast as raising
    (``calm="even"``: the tuners with a horizon, whose warm-up is short).
    """
    x = lr * h
    k = state["hyper_steps"] + 1
    state["hyper_steps"] = k
    state["hyper_m"] = b1 * state["hyper_m"] + (1.0 - b1) * x
    state["hyper_v"] = b2 * state["hyper_v"] + (1.0 - b2) * x * x
    v_hat = state["hyper_v"] / (1.0 - b2 ** k)
    if not v_hat > 0:  # h == 0 so far: nothing to go by
        state["hyper_r"] = 0.0
        return lr
    scale = math.sqrt(v_hat)
    m_hat = state["hyper_m"] / (1.0 - b1 ** k) if b1 > 0 else x
    n = min(max(m_hat / scale, -1.0), 1.0)
    state["hyper_r"] = min(max(x / scale, -1.0), 1.0)
    if n > 0:
        alarm = state.get("loss_alarm", 1.0)
        quiet = 1.0 + (down - 1.0) * n * n if calm == "evidence" else 1.0
        rate = hyper_lr * (down if alarm else quiet)
    else:
        rate = hyper_lr
    return lr * math.exp(-rate * n)


def adapt_hyper_lr(rule: str, hyper_lr: float, h: float, lr: float, *, alpha: float,
                   r: float = 0.0, r_prev: float = 0.0) -> float:
    """The hyper-LR after one step of ``alpha`` (see the module doc).

    ``lr`` is the new LR (additive rule); ``r``/``r_prev`` the normalized
    hypergradients of this step and the previous one (scale-free rule).
    """
    if rule == ADDITIVE:
        return max(hyper_lr + alpha * h * lr, 0.0)
    return min(hyper_lr * math.exp(alpha * r * r_prev), MAX_HYPER_LR)
