"""``adatune bench``: what a tuned step costs in time and memory.

Importing this package loads nothing (:mod:`~adatune.bench.config` is light,
:mod:`~adatune.bench.measure` loads torch).
"""
