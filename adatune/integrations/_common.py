"""What the framework integrations share: the optimizer a framework holds, the validation
batches, and the run recorded in a store."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor

from adatune.errors import ConfigError


class TunerStep(torch.optim.Optimizer):
    """What the framework holds in place of the optimizer that ``tuner`` wraps.

    Its ``step(closure)`` runs the closure, which runs the tuner's step (a
    framework's own ``step()`` without one does nothing: the tuner stepped).
    The param groups and state are the wrapped optimizer's, so an LR monitor
    shows the tuned LR, and ``state_dict()`` is the tuner's (nesting the
    optimizer's): the framework's own checkpoints save and restore the tuner.
    """

    def __init__(self, tuner: Any) -> None:
        self.tuner = tuner
        self.val_drawn = 0  # validation batches drawn, where the framework keeps no count
        inner = tuner.optimizer
        super().__init__(inner.param_groups, inner.defaults)
        self.param_groups = inner.param_groups
        self.state = inner.state

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        return None if closure is None else closure()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.tuner.optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {**self.tuner.state_dict(), "val_drawn": self.val_drawn}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self.tuner.load_state_dict(state_dict)
        self.val_drawn = int(state_dict.get("val_drawn", 0))

    def __repr__(self) -> str:
        return f"TunerStep({self.tuner!r})"


class Cycle:
    """The batches of ``loader``, pass after pass; ``drawn`` counts them (checkpointed, so a
    resumed run draws the batches an uninterrupted one would)."""

    def __init__(self, loader: Iterable, drawn: int = 0) -> None:
        self.loader = loader
        self.drawn = drawn
        self._it: Iterator | None = None

    def __next__(self) -> Any:
        if self._it is None:
            self._it = iter(self.loader)
            try:
                for _ in range(self.drawn % len(self.loader)):
                    next(self._it)
            except (TypeError, ZeroDivisionError):  # no len(), or empty (found below)
                pass
        try:
            batch = next(self._it)
        except StopIteration:
            self._it = iter(self.loader)
            batch = next(self._it, None)
            if batch is None:
                raise ConfigError("the validation data is empty") from None
        self.drawn += 1
        return batch


def loss_of(output: Any, where: str) -> Tensor:
    """The loss tensor in a training step's output (a tensor, or a mapping with ``"loss"``)."""
    if isinstance(output, Mapping):
        output = output.get("loss")
    if not isinstance(output, Tensor):
        raise ConfigError(f"{where} must return the loss (a tensor, or a dict with 'loss') for "
                          f"the tuner; it returned {type(output).__name__}")
    return output


def check_total(value: Any) -> int:
    """The run's optimizer steps as the framework estimates them (ConfigError when unbounded)."""
    if value is None or not math.isfinite(float(value)) or int(value) < 1:
        raise ConfigError(f"the tuner's horizon needs the run's length, and the framework "
                          f"estimates {value} steps: bound the run (epochs or steps), or give "
                          "total_steps=N, or online=True for the per-step tuner")
    return int(value)


class Recorder:
    """A run in an adatune store, written from a framework's hooks (on rank 0 only).

    Every step's LR goes in (``adatune schedule export``), with a sampled
    step every ``log_every`` steps, and one record per epoch (``adatune
    report``). ``state()`` / ``load()`` carry the run's id and the epoch in
    progress through the framework's checkpoints; an epoch that a checkpoint
    saw end but the store did not (a checkpoint written before the epoch's
    record) is recorded on resume by :meth:`catch_up`.
    """

    def __init__(self, location: str, name: str | None, log_every: int) -> None:
        self.location = str(location)
        self.name = name
        self.log_every = log_every
        self.run_id: int | None = None
        self.step = 0
        self.epoch: int | None = None  # the epoch whose steps are pending
        self.lrs: list[float] = []
        self.losses: list[float] = []
        self.steps: list[dict[str, Any]] = []
        self.val: tuple[float | None, float | None] = (None, None)
        self.started = time.monotonic()
        self.elapsed = 0.0
        self.best_loss: float | None = None
        self.last_recorded = 0  # the store's last epoch, as :meth:`catch_up` found it

    _STATE = ("run_id", "step", "epoch", "lrs", "losses", "steps", "val", "best_loss")

    def state(self) -> dict[str, Any]:
        return {**{key: getattr(self, key) for key in self._STATE},
                "elapsed": self._elapsed()}

    def load(self, state: Mapping[str, Any]) -> None:
        for key in self._STATE:
            if key in state:
                setattr(self, key, state[key])
        self.lrs, self.losses, self.steps = list(self.lrs), list(self.losses), list(self.steps)
        self.val = tuple(self.val)
        self.elapsed = float(state.get("elapsed", 0.0))

    def _elapsed(self) -> float:
        return self.elapsed + time.monotonic() - self.started

    def start(self, *, method: str, optimizer: str, network: str, dataset: str, seed: int,
              config: dict[str, Any]) -> None:
        from adatune.store import open_store
        from adatune.store.records import NewRun

        self.started = time.monotonic()
        with open_store(self.location) as store:
            if self.run_id is not None:  # resumed from the framework's checkpoint
                store.reopen_run(self.run_id)
                return
            self.run_id = store.create_run(NewRun(
                kind="train", method=method, optimizer=optimizer, network=network,
                dataset=dataset, seed=seed, config=config, name=self.name))

    def catch_up(self, epoch: int, tuner: Any) -> None:
        """Training starts (or resumes) in ``epoch``: learn which epochs the store has, and
        record the pending one if it ended before the checkpoint and the store lacks it."""
        from adatune.store import open_store

        with open_store(self.location) as store:
            recorded = [e.epoch for e in store.get_run(self.run_id, steps=False).epochs]
        self.last_recorded = max(recorded, default=0)
        if self.epoch is not None and self.epoch <= self.last_recorded:
            self._clear()  # the epoch's record was written after the checkpoint
        elif self.epoch is not None and self.epoch < epoch and self.lrs:
            self.end_epoch(self.epoch, tuner)

    def add_step(self, epoch: int, lr: float, loss: float, tuner: Any) -> None:
        if self.step % self.log_every == 0:
            self.steps.append({"step": self.step, "epoch": epoch, "lr": lr, "mu": tuner.mu,
                               "hyper_lr": tuner.hyper_lr,
                               "hypergradient": tuner.last_hypergradient,
                               "train_loss": loss})
        self.step += 1
        self.epoch = epoch
        self.lrs.append(lr)
        self.losses.append(loss)

    def note_validation(self, val_loss: float | None, val_acc: float | None) -> None:
        self.val = (val_loss, val_acc)

    def end_epoch(self, epoch: int, tuner: Any, val_loss: float | None = None,
                  val_acc: float | None = None) -> None:
        """Record epoch ``epoch`` (its validation metrics: these, or the noted ones)."""
        from adatune.store import open_store
        from adatune.store.records import EpochRecord, StepRecord

        if epoch <= self.last_recorded:  # resumed from a checkpoint older than the record
            self._clear()
            return
        if val_loss is None and val_acc is None:
            val_loss, val_acc = self.val
        lrs, losses = self.lrs, self.losses
        record = EpochRecord(
            epoch=epoch, lr=tuner.lr, lr_mean=sum(lrs) / max(len(lrs), 1), mu=tuner.mu,
            hyper_lr=tuner.hyper_lr, train_loss=sum(losses) / max(len(losses), 1),
            train_acc=None, val_loss=math.nan if val_loss is None else float(val_loss),
            val_acc=None if val_acc is None else float(val_acc), test_loss=None,
            test_acc=None, elapsed_s=self._elapsed(), nonfinite_hypergradients=0)
        best = None  # judged by the store: by validation accuracy
        if val_acc is None:
            best = val_loss is not None and (self.best_loss is None or val_loss < self.best_loss)
            self.best_loss = val_loss if best else self.best_loss
        steps = [StepRecord(**step) for step in self.steps]
        with open_store(self.location) as store:
            store.record_epoch(self.run_id, record, steps, lrs=lrs, best=best)
        self.last_recorded = epoch
        self._clear()

    def _clear(self) -> None:
        self.epoch, self.lrs, self.losses, self.steps = None, [], [], []
        self.val = (None, None)

    def finish(self, status: str, error: str | None = None) -> None:
        from adatune.store import open_store

        if self.run_id is None:
            return
        with open_store(self.location) as store:
            store.finish_run(self.run_id, status, error=error,
                             summary={"train_s": self._elapsed()})
