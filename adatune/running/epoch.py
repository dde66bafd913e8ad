"""One epoch's progress: the running sums of its steps, and where its batches stand.

:class:`~adatune.running.loop.Loop` adds each step to an :class:`EpochProgress`
and turns it into the epoch's record at the end. A mid-epoch checkpoint
(SIGTERM, SIGUSR1) saves it as ``last.pt``'s ``partial``
(:meth:`EpochProgress.to_checkpoint`); a resumed run takes it back
(:meth:`EpochProgress.from_checkpoint`) and ends the epoch exactly as an
uninterrupted run would.
"""

from __future__ import annotations

import dataclasses
import time
from array import array
from dataclasses import dataclass, field
from typing import Any

from adatune.store.records import StepRecord

__all__ = ["EpochProgress"]


@dataclass
class EpochProgress:
    """The epoch so far. ``correct`` stays a device tensor while training (no sync per step).

    ``train_start`` is the training generator's state when the epoch drew its
    order, ``val`` the position of the validation passes, and ``rng`` (of a
    resumed epoch) the RNG states to restore where it stopped. ``lrs`` is the
    LR of every step (None in checkpoints of an older adatune, which lacked them).
    """

    epoch: int
    train_start: Any = None
    batches: int = 0
    loss_sum: float = 0.0
    correct: Any = 0
    seen: int = 0
    n_steps: int = 0
    lr_sum: float = 0.0
    lr_max: float = 0.0
    steps: list[StepRecord] = field(default_factory=list)
    lrs: array | None = field(default_factory=lambda: array("d"))
    nonfinite_before: int = 0
    val: dict[str, Any] | None = None
    rng: dict[str, Any] | None = None
    started: float = field(default_factory=time.perf_counter)
    cpu_started: float = field(default_factory=time.process_time)

    @property
    def resumed(self) -> bool:
        """Whether the epoch goes on from a mid-epoch checkpoint."""
        return self.rng is not None

    def add(self, *, n: int, loss: float, lr: float, correct: Any = None) -> None:
        """One step on a batch of ``n`` examples: its loss, its LR, its correct predictions."""
        self.loss_sum += loss * n
        if correct is not None:
            self.correct += correct
        self.seen += n
        self.n_steps += 1
        self.lr_sum += lr
        self.lr_max = max(self.lr_max, lr)
        if self.lrs is not None:
            self.lrs.append(lr)

    def seconds(self) -> tuple[float, float]:
        """(wall-clock, CPU) seconds of the epoch so far, across a resume."""
        return time.perf_counter() - self.started, time.process_time() - self.cpu_started

    def to_checkpoint(self, *, correct: int, val: dict[str, Any] | None,
                      buffers: Any) -> dict[str, Any]:
        """The ``partial`` of a mid-epoch ``last.pt`` (``correct``: summed over the ranks)."""
        seconds, cpu_seconds = self.seconds()
        return {
            "batches": self.batches, "train_gen": self.train_start, "val": val,
            "loss_sum": self.loss_sum, "correct": correct, "seen": self.seen,
            "n_steps": self.n_steps, "lr_sum": self.lr_sum, "lr_max": self.lr_max,
            "steps": [dataclasses.asdict(s) for s in self.steps],
            **({"lrs": self.lrs.tolist()} if self.lrs is not None else {}),
            "nonfinite_before": self.nonfinite_before,
            "seconds": seconds, "cpu_seconds": cpu_seconds, "buffers": buffers,
        }

    @classmethod
    def from_checkpoint(cls, epoch: int, partial: dict[str, Any], *, is_main: bool,
                        nonfinite_before: int) -> EpochProgress:
        """The epoch a ``partial`` saved (with ``rng``, the states at that step, added on load).

        On ranks other than 0 ``correct`` starts at 0: the checkpoint holds the
        sum over the ranks, which rank 0 carries on. ``nonfinite_before``: the
        tuner's count now, for a checkpoint of an older adatune that lacks it.
        """
        return cls(
            epoch=epoch, train_start=partial["train_gen"], batches=partial.get("batches", 0),
            loss_sum=partial.get("loss_sum", 0), correct=partial.get("correct", 0) if is_main
            else 0, seen=partial.get("seen", 0), n_steps=partial.get("n_steps", 0),
            lr_sum=partial.get("lr_sum", 0.0), lr_max=partial.get("lr_max", 0.0),
            steps=[StepRecord(**s) for s in partial.get("steps", [])],
            lrs=array("d", partial["lrs"]) if "lrs" in partial else None,
            nonfinite_before=partial.get("nonfinite_before", nonfinite_before),
            val=partial.get("val"),
            rng=partial["rng"],
            started=time.perf_counter() - partial.get("seconds", 0.0),
            cpu_started=time.process_time() - partial.get("cpu_seconds", 0.0))
