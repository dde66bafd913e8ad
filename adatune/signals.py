"""Preemption for your own training calls: ``with adatune.signals.handle_preemption(): ...``.

The public path of :mod:`adatune.running.signals`, where the code lives: inside
:func:`handle_preemption` a SIGTERM stops a run at the next step, checkpointed,
and SIGUSR1 checkpoints it and goes on (docs/reliability.md).
"""

from adatune.running.signals import Terminated, exit_code, handle_preemption

__all__ = ["Terminated", "exit_code", "handle_preemption"]
