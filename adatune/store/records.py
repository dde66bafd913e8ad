"""Plain, frozen records returned by the store. ORM rows never leave the store."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

RUN_KINDS = ("train", "baseline", "probe", "find-alpha", "sweep")
RUN_STATUSES = ("running", "completed", "diverged", "failed", "interrupted")


@dataclass(frozen=True)
class EpochRecord:
    """Metrics at the end of one epoch (epoch numbers start at 1)."""

    epoch: int
    lr: float
    lr_mean: float
    mu: float | None
    hyper_lr: float | None
    train_loss: float
    train_acc: float | None  # None without accuracies (regression, custom losses)
    val_loss: float
    val_acc: float | None
    test_loss: float | None
    test_acc: float | None
    elapsed_s: float
    nonfinite_hypergradients: int = 0


@dataclass(frozen=True)
class StepRecord:
    """One sampled training step (steps count from 0 over the whole run)."""

    step: int
    epoch: int
    lr: float
    mu: float | None
    hyper_lr: float | None
    hypergradient: float | None
    train_loss: float


@dataclass(frozen=True)
class EpochLRs:
    """The LR used at every training step of one epoch, in step order.

    ``lrs`` is None for an epoch recorded before adatune stored per-step LRs.
    """

    epoch: int
    lrs: tuple[float, ...] | None


@dataclass(frozen=True)
class NewRun:
    """What the engine knows about a run when it starts."""

    kind: str
    method: str
    optimizer: str
    network: str
    dataset: str
    seed: int
    config: dict[str, Any]
    name: str | None = None
    experiment: str | None = None
    parent_id: int | None = None
    device: str | None = None


@dataclass(frozen=True)
class RunRecord:
    id: int
    name: str | None
    experiment: str | None
    kind: str
    method: str
    optimizer: str
    network: str
    dataset: str
    seed: int
    config: dict[str, Any]
    status: str
    started_at: dt.datetime
    ended_at: dt.datetime | None
    heartbeat_at: dt.datetime | None
    epochs: int
    best_val_acc: float | None
    best_epoch: int | None
    test_acc: float | None
    error: str | None
    adatune_version: str
    torch_version: str
    device: str | None
    host: str | None
    parent_id: int | None = None
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RunDetail:
    run: RunRecord
    epochs: tuple[EpochRecord, ...] = field(default_factory=tuple)
    steps: tuple[StepRecord, ...] = field(default_factory=tuple)
