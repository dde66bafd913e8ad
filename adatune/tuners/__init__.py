"""Hypergradient learning-rate tuners."""

from adatune.tuners._double_backward import fast_double_backward
from adatune.tuners.hypergradient import HD, MARTHE, RTHO, HypergradientTuner

__all__ = ["HD", "MARTHE", "RTHO", "HypergradientTuner", "fast_double_backward"]
