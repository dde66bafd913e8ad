"""Runs: configuration, assembly, the training loop, checkpoints, signals, several ranks.

:mod:`~adatune.running.config` says what a run is and
:mod:`~adatune.running.build` builds its parts; the two entry points,
:mod:`~adatune.running.engine` (a configuration) and
:mod:`~adatune.running.fitting` (``adatune.fit``: the caller's parts), both call
:func:`adatune.running.assembly.train_run`, which opens the run in the store
and trains it with :mod:`~adatune.running.loop`. Importing this package loads
nothing.
"""
