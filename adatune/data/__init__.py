"""Datasets, their splits and batches, and the built-in networks.

Importing this package loads nothing (the modules load torch).
"""
