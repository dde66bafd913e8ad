"""adatune: online learning-rate tuning from exact hypergradients."""

from importlib.metadata import PackageNotFoundError, version

from adatune.fitting import fit
from adatune.schedules import ReplayLR
from adatune.tuners import HD, MARTHE, RTHO, HypergradientTuner, fast_double_backward

try:
    __version__ = version("adatune")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["HD", "MARTHE", "RTHO", "HypergradientTuner", "ReplayLR", "__version__",
           "fast_double_backward", "fit"]
