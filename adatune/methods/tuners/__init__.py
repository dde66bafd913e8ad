"""Hypergradient learning-rate tuners."""

from adatune.methods.tuners._double_backward import fast_double_backward
from adatune.methods.tuners.hypergradient import HD, MARTHE, RTHO, HypergradientTuner

__all__ = ["HD", "MARTHE", "RTHO", "HypergradientTuner", "fast_double_backward"]
