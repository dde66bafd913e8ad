"""Hypergradient learning-rate tuners."""

from adatune.tuners.hypergradient import HD, MARTHE, RTHO, HypergradientTuner

__all__ = ["HD", "MARTHE", "RTHO", "HypergradientTuner"]
