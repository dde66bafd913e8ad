"""adatune: online learning-rate tuning from exact hypergradients.

The public names are imported on first use (PEP 562): ``import adatune`` and
the light modules (``adatune.running.config``, ``adatune.store``, ``adatune.report``
minus its HTML) never load torch until a tuner or :func:`fit` is touched. To
add a public name, add one line to ``_EXPORTS``: the name and the module that
defines it.
"""

from adatune._lazy import lazy_exports as _lazy_exports

_EXPORTS = {
    "HD": "adatune.methods.tuners",
    "HDOptimizer": "adatune.methods.tuners",
    "MARTHE": "adatune.methods.tuners",
    "RTHO": "adatune.methods.tuners",
    "HypergradientTuner": "adatune.methods.tuners",
    "ReplayLR": "adatune.methods.replay",
    "fast_double_backward": "adatune.methods.tuners",
    "fit": "adatune.running.fitting",
    "Events": "adatune.running.runtypes",
    "RunResult": "adatune.running.runtypes",
    "__version__": "adatune._version",
}

__all__ = list(_EXPORTS)
__getattr__, __dir__ = _lazy_exports(__name__, _EXPORTS)
