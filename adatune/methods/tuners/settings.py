"""The tuners' settings as plain data: defaults and choices, without torch.

The tuners (:mod:`adatune.methods.tuners.hypergradient`) take their argument
defaults from here, and the run configuration and the command line read the
same objects, so a default is written once. The hyper-LR's defaults and range
belong to the update rule (:mod:`adatune.methods.hyper_update`).
"""

from __future__ import annotations

#: How the Hessian-vector product of MARTHE and RTHO is computed: by double backward
#: (exact) or by a finite difference of two gradients (faster).
HVP_MODES: tuple[str, ...] = ("exact", "finite-difference")
DEFAULT_HVP = HVP_MODES[0]
#: MARTHE's mu: how much of the tangent carries over each step (1: RTHO; "auto": adapted).
DEFAULT_MU = 0.99
#: How fast the hyper-LR adapts (0: fixed).
DEFAULT_ALPHA = 0.0
#: MARTHE/RTHO take their Hessian-vector product and validation gradient, and move the
#: LR, on one tuned step in this many (1: every step, exact; docs/math.md).
DEFAULT_HYPER_EVERY = 1
#: The fraction of each batch a training loop (``adatune train``, :func:`adatune.fit`)
#: takes MARTHE's/RTHO's Hessian-vector product on (1: the whole batch, exact).
DEFAULT_HVP_FRACTION = 1.0

__all__ = ["DEFAULT_ALPHA", "DEFAULT_HVP", "DEFAULT_HVP_FRACTION", "DEFAULT_HYPER_EVERY",
           "DEFAULT_MU", "HVP_MODES"]
