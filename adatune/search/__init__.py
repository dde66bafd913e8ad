"""Searches made of runs: ``find-alpha``'s probes and Optuna sweeps.

Importing this package loads nothing.
"""
