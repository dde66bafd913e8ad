"""Preemption: SIGTERM stops a run the way Ctrl-C does, but loses nothing; SIGUSR1 checkpoints.

Schedulers (SLURM, Kubernetes, spot instances) send SIGTERM some seconds before
they kill a job, and SLURM's ``--signal=USR1@T`` sends SIGUSR1 T seconds before
the end of its time. Inside :func:`handle_preemption` (the ``adatune`` command
runs every command inside it):

* SIGTERM while a run trains: the training loop finishes the step it is in,
  writes ``last.pt`` with the epoch's progress, marks the run ``interrupted``
  with the reason, and raises :class:`Terminated`; the command exits with 143
  (128 + 15). ``adatune train --resume ID`` continues from that step with the
  same result as an uninterrupted run. A second SIGTERM does not wait for the
  step: it abandons it, as Ctrl-C does (the run then resumes from its last
  checkpoint).
* SIGTERM anywhere else: :class:`Terminated` at once (a subclass of
  ``KeyboardInterrupt``, so cleanup code that handles Ctrl-C handles it too).
* SIGUSR1: the loop writes ``last.pt`` after the current step and goes on.

Library users get the same by wrapping their own calls:
``with adatune.signals.handle_preemption(): adatune.fit(...)``.
The loop asks :func:`stop_requested` and :func:`take_checkpoint_request` at
its safe points, inside :func:`deferred`. Under several ranks
(:mod:`adatune.running.distributed`) the ranks compare their requests at each safe
point, and a stop that reached another rank stops this one too
(:func:`stop_agreed`): every rank stops, or checkpoints, after the same step.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

_SIGUSR1 = getattr(signal, "SIGUSR1", None)


class Terminated(KeyboardInterrupt):
    """The process was asked to stop by a signal (SIGTERM)."""

    def __init__(self, signum: int = signal.SIGTERM, message: str | None = None) -> None:
        self.signum = int(signum)
        self.message = message or f"stopped by {signal_name(self.signum)}"
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


class _State:
    def __init__(self) -> None:
        self.installed = 0
        self.deferring = 0
        self.stop: int | None = None  # a stop asked for inside the loop, not yet acted on
        self.received: int | None = None  # the stop signal received, for the exit code
        self.agreed: int | None = None  # a stop another rank received (several ranks)
        self.checkpoint = False


_state = _State()


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _on_stop(signum: int, frame: object) -> None:
    first = _state.received is None
    _state.received = signum
    if _state.deferring and first:
        _state.stop = signum  # the loop stops at its next safe point
        return
    raise Terminated(signum)


def on_stop(signum: int, frame: object = None) -> None:
    """What :func:`handle_preemption` does with SIGTERM, for a handler that wraps it."""
    _on_stop(signum, frame)


def _on_checkpoint(signum: int, frame: object) -> None:
    _state.checkpoint = True


@contextlib.contextmanager
def handle_preemption() -> Iterator[None]:
    """Handle SIGTERM and SIGUSR1 as the module doc says, until the block ends.

    Outside the main thread (where Python cannot install handlers) it does
    nothing. The state of the signals received is reset on entry.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, _on_stop)}
    if _SIGUSR1 is not None:
        previous[_SIGUSR1] = signal.signal(_SIGUSR1, _on_checkpoint)
    outer = _state.installed == 0
    if outer:
        _state.stop, _state.received, _state.agreed, _state.checkpoint = None, None, None, False
    _state.installed += 1
    try:
        yield
    finally:
        _state.installed -= 1
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if outer:  # no requests outlive the handlers (what was received stays known)
            _state.stop, _state.checkpoint = None, False


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """The training loop: a first SIGTERM waits for the loop's next safe point."""
    _state.deferring += 1
    try:
        yield
    finally:
        _state.deferring -= 1


def armed() -> bool:
    """Whether :func:`handle_preemption` handles the signals in this process now."""
    return _state.installed > 0


def stop_agreed(signum: int) -> None:
    """Another rank of this run received the stop signal ``signum``: stop here too.

    The training loop calls this when the ranks compare their requests after a
    step (:mod:`adatune.running.distributed`); the loop then stops as if this process had
    received it, and :func:`exit_code` is 128 + ``signum``.
    """
    if _state.stop is None:
        _state.stop = int(signum)
    _state.agreed = int(signum)


def stop_requested() -> int | None:
    """The signal that asked the loop to stop (None when none did)."""
    return _state.stop


def take_checkpoint_request() -> bool:
    """Whether SIGUSR1 asked for a checkpoint since the last call (and forget it)."""
    asked, _state.checkpoint = _state.checkpoint, False
    return asked


def acted_on_stop() -> None:
    """The loop stopped for the pending request: later runs (a sweep's next) start clean."""
    _state.stop = None


def raise_if_stopping() -> None:
    """Start nothing new once a stop was asked for: raise :class:`Terminated` if one is pending.

    (A stop asked for during a run that then ended anyway, at its last epoch,
    stays pending until the next run would start.)
    """
    signum = _state.stop
    if signum is not None:
        _state.stop = None
        raise Terminated(signum, f"stopped by {signal_name(signum)} before the next run")


def received() -> int | None:
    """The stop signal this process received inside :func:`handle_preemption`, if any."""
    return _state.received


def exit_code(default: int = 130) -> int:
    """128 + the stop signal received (143 for SIGTERM), else ``default`` (130: Ctrl-C).

    Under several ranks, a stop that another rank received counts (every rank
    of a run stopped by SIGTERM exits with 143).
    """
    signum = _state.received if _state.received is not None else _state.agreed
    return 128 + signum if signum is not None else default


def interruption_reason(exc: BaseException, epoch: int) -> str:
    """The reason recorded for a run stopped by ``exc`` (Ctrl-C or SIGTERM) during ``epoch``.

    The run ends here, so a stop still pending (a second SIGTERM came before
    the first was acted on) is settled too.
    """
    _state.stop = None
    if isinstance(exc, Terminated):
        if exc.message == f"stopped by {signal_name(exc.signum)}":  # not at a safe point
            return (f"stopped by {signal_name(exc.signum)} during epoch {epoch} (a second "
                    "signal: the epoch's progress since its last checkpoint was abandoned)")
        return str(exc)
    return f"interrupted during epoch {epoch}"


__all__ = [
    "Terminated",
    "acted_on_stop",
    "armed",
    "deferred",
    "exit_code",
    "handle_preemption",
    "interruption_reason",
    "on_stop",
    "raise_if_stopping",
    "received",
    "signal_name",
    "stop_agreed",
    "stop_requested",
    "take_checkpoint_request",
]
