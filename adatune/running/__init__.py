"""Runs: configuration, assembly, the training loop, checkpoints, signals, several ranks.

:mod:`~adatune.running.config` says what a run is, :mod:`~adatune.running.build`
builds its parts, :mod:`~adatune.running.engine` opens or continues the run in
the store and trains it with :mod:`~adatune.running.loop`. Importing this
package loads nothing.
"""
