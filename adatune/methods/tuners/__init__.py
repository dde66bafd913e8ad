"""Hypergradient learning-rate tuners.

The tuners load on first use (PEP 562): :mod:`adatune.methods.tuners.settings`,
their defaults as plain data, is read without torch.
"""

from adatune._lazy import lazy_exports as _lazy_exports

_EXPORTS = {
    "HD": "adatune.methods.tuners.hypergradient",
    "HDOptimizer": "adatune.methods.tuners.drop_in",
    "MARTHE": "adatune.methods.tuners.hypergradient",
    "RTHO": "adatune.methods.tuners.hypergradient",
    "HypergradientTuner": "adatune.methods.tuners.hypergradient",
    "fast_double_backward": "adatune.methods.tuners._double_backward",
}

__all__ = list(_EXPORTS)
__getattr__, __dir__ = _lazy_exports(__name__, _EXPORTS)
