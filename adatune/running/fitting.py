"""``adatune.fit``: your own model and data through the recorded, resumable loop.

The same loop the ``adatune`` command runs (:mod:`adatune.running.loop`), over parts
you give: the run is recorded in the store (``adatune runs``, ``adatune
report`` show it), checkpoints go to ``checkpoint_dir/run-ID/``, and
``resume=RUN_ID`` continues a killed or interrupted run from its last
checkpoint, given the same parts again.

Under ``torch.distributed`` (a process group initialised, e.g. by
``torchrun`` and :func:`adatune.running.distributed.launch`), call ``fit`` on every
rank with the same arguments and the whole datasets: each rank trains on its
slice of every batch (``batch_size`` is the global batch), rank 0 alone
writes the store and the checkpoints, and every rank returns the same result.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import lr_scheduler
from torch.utils.data import Dataset, TensorDataset

from adatune.errors import ConfigError
from adatune.methods.peers import optimizer_view, peer_name
from adatune.methods.schedules import Schedule, ScheduleConfig, build_schedule, canonical_schedule
from adatune.methods.tuners import HypergradientTuner
from adatune.running import distributed
from adatune.running.build import AlignedLoss, build_loss, build_tuner
from adatune.running.config import DEFAULT_LR, TUNER_NAMES, TrainConfig
from adatune.running.engine import DEFAULT_CHECKPOINT_DIR, continue_run, start_run
from adatune.running.loop import DivergenceRules, Events, Loop, LoopConfig, Parts, RunResult
from adatune.running.preflight import check_resumable
from adatune.store import Store, open_store
from adatune.store.records import NewRun

DataArg = Dataset | tuple[Tensor, Tensor]
_DEFAULT = object()


def fit(
    model: nn.Module,
    train: DataArg,
    val: DataArg,
    test: DataArg | None = None,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    tuner: str | HypergradientTuner | None = _DEFAULT,  # type: ignore[assignment]
    schedule: str | lr_scheduler.LRScheduler | None = None,
    schedule_interval: str = "epoch",
    loss: str | Callable[[Tensor, Tensor], Tensor] = "cross_entropy",
    classification: bool | None = None,
    epochs: int = 15,
    batch_size: int = 64,
    seed: int = 0,
    patience: int | None = None,
    log_every: int = 10,
    grad_clip: float | None = None,
    workers: int = 0,
    divergence_factor: float = 10.0,
    device: str | torch.device | None = None,
    store: str | Store = "adatune.db",
    name: str | None = None,
    experiment: str | None = None,
    dataset_name: str = "custom",
    checkpoint_dir: str | None = None,
    resume: int | None = None,
    events: Events | None = None,
) -> RunResult:
    """Train ``model`` on ``train``, tuning its LR online on ``val``, and record the run.

    >>> result = adatune.fit(model, train_ds, val_ds, test_ds, optimizer=opt,
    ...                      tuner="marthe", store="runs.db", epochs=30, name="mine")

    Data: torch ``Dataset``\\ s of ``(input, target)`` or ``(x, y)`` tensor
    pairs (kept in memory and batched without a DataLoader); ``test`` is
    optional. Other datasets go through a ``DataLoader`` with ``workers``
    worker processes.

    ``tuner``: ``"marthe"``, ``"rtho"``, ``"hd"`` (built with the command's
    defaults for the optimizer), a tuner you built around ``optimizer``, or
    None. It defaults to ``"marthe"`` unless a ``schedule`` is given or
    ``optimizer`` sets its own step size (a peer: Prodigy, D-Adaptation,
    Schedule-Free, DoG; see :mod:`adatune.methods.peers`). A ``schedule`` is a
    baseline name (``"constant"``, ``"staircase"``, ``"exponential"``,
    ``"cosine"``) or a ``torch.optim.lr_scheduler`` instance, stepped every
    ``schedule_interval`` (``"epoch"`` or ``"step"``). With neither, the LR
    stays constant (or, for a peer, as the peer sets it). ``optimizer``
    defaults to SGD with momentum 0.9 at lr 0.05 (or is taken from the
    tuner). A peer's effective LR is what the run records, and a Schedule-Free
    optimizer is switched to ``eval()`` for evaluation and checkpoints (its
    averaged weights are judged, saved and left in ``model`` at the end) and
    to ``train()`` for training steps.

    ``loss``: ``"cross_entropy"`` (accuracies recorded; the best epoch is the
    best validation accuracy), ``"mse"``, or a callable ``loss(output,
    target)`` returning the batch mean (the best epoch is then the lowest
    validation loss; ``classification=True`` records accuracies anyway).

    ``device`` defaults to the model's. ``store`` is a path, an SQLAlchemy
    URL or an open :class:`~adatune.store.Store`. Returns the
    :class:`~adatune.running.loop.RunResult` (``run_id`` names it in the store).
    """
    started = time.perf_counter()
    if not isinstance(model, nn.Module):
        raise ConfigError(f"Invalid model: {type(model).__name__} (expected a torch.nn.Module)")
    if tuner is _DEFAULT:
        adaptive = isinstance(optimizer, torch.optim.Optimizer) \
            and optimizer_view(optimizer).adaptive
        tuner = "marthe" if schedule is None and not adaptive else None
    if isinstance(tuner, HypergradientTuner) and optimizer is None:
        optimizer = tuner.optimizer
    if optimizer is None:
        optimizer = torch.optim.SGD(model.parameters(), lr=DEFAULT_LR["sgd"], momentum=0.9)
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ConfigError(f"Invalid optimizer: {type(optimizer).__name__} "
                          "(expected a torch.optim.Optimizer)")
    if tuner is not None and schedule is not None:
        raise ConfigError("fit takes a tuner or a schedule, not both")
    settings = _settings(epochs=epochs, batch_size=batch_size, seed=seed, patience=patience,
                         log_every=log_every, grad_clip=grad_clip, workers=workers,
                         divergence_factor=divergence_factor)
    device = torch.device(device) if device is not None else _device_of(model)
    model.to(device)
    loss_fn, is_classification, loss_name = _loss(loss)
    if classification is not None:
        is_classification = bool(classification)
    train_ds, val_ds = _dataset("train", train), _dataset("val", val)
    test_ds = None if test is None else _dataset("test", test)
    kind_name = _optimizer_name(optimizer)
    tuner_obj, method = _tuner(tuner, optimizer, model, kind_name)
    steps_per_epoch = -(-len(train_ds) // settings.batch_size)
    sched, sched_name = _schedule(schedule, schedule_interval, optimizer, steps_per_epoch)
    parts = Parts(model=model, optimizer=optimizer, train=train_ds, val=val_ds, test=test_ds,
                  loss=loss_fn, classification=is_classification, device=device,
                  tuner=tuner_obj, schedule=sched)
    if resume is None:
        torch.manual_seed(seed)
    if method is None:  # a peer without a schedule is its own method
        method = kind_name if schedule is None and parts.view.adaptive else sched_name
    loop = Loop(parts, settings)
    ckpt_root = Path(checkpoint_dir or DEFAULT_CHECKPOINT_DIR).resolve()
    config = {
        "entry": "fit", "method": method, "optimizer": kind_name,
        "optimizer_settings": _group_settings(optimizer),
        "lr": loop.initial_lr if tuner_obj is not None else float(optimizer.param_groups[0]["lr"]),
        "model": type(model).__name__, "dataset": dataset_name, "loss": loss_name,
        "classification": is_classification, "checkpoint_dir": str(ckpt_root),
        "tuner": None if tuner_obj is None else _tuner_settings(tuner_obj),
        **{k: v for k, v in dataclasses.asdict(settings).items() if k != "rules"},
        "divergence_factor": divergence_factor,
    }
    fingerprint = {**config, "checkpoint_dir": None, "resume": resume, "name": name,
                   "experiment": experiment, "sizes": [len(train_ds), len(val_ds),
                                                       None if test_ds is None else len(test_ds)],
                   "parameters": [list(p.shape) for p in model.parameters()]}
    if loop.ranks.active:
        distributed.agree(fingerprint, lambda: None, batch_size=settings.batch_size,
                          group=loop.ranks.group)
    owned = not isinstance(store, Store) and loop.ranks.is_main
    db = open_store(store) if owned else store
    if not loop.ranks.is_main:
        db = distributed.LazyStore(store)  # opened only to mark the run failed if rank 0 dies
    try:
        if resume is not None:
            ckpt_dir = ckpt_root / f"run-{resume}"
            loop.ranks.on_main(lambda: check_resumable(db, resume, ckpt_dir))
            return continue_run(db, resume, loop, ckpt_dir, events or Events(),
                                announce=config, meta=config, started=started)
        run_id, folder = loop.ranks.on_main(lambda: start_run(db, NewRun(
            kind="train" if tuner_obj is not None else "baseline", method=method,
            optimizer=kind_name, network=type(model).__name__[:64], dataset=dataset_name[:64],
            seed=seed, config=config, name=name, experiment=experiment, device=str(device)),
            ckpt_root))
        return loop.run(db, run_id, folder, events or Events(),
                        announce=config, meta=config, setup_s=time.perf_counter() - started)
    finally:
        if owned:
            db.close()


def _settings(*, divergence_factor: float, **values: Any) -> LoopConfig:
    """The loop's settings, validated as the command validates them."""
    probe = TrainConfig(divergence_factor=divergence_factor,
                        **{k: v for k, v in values.items()})
    return LoopConfig(epochs=probe.epochs, batch_size=probe.batch_size, seed=probe.seed,
                      patience=probe.patience, log_every=probe.log_every,
                      grad_clip=probe.grad_clip, workers=probe.workers,
                      rules=DivergenceRules(loss_factor=probe.divergence_factor))


def _device_of(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    raise ConfigError("Invalid model: it has no parameters")


def _dataset(name: str, data: Any) -> Dataset:
    if isinstance(data, Dataset):
        if len(data) == 0:
            raise ConfigError(f"Invalid {name}: the dataset is empty")
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2 \
            and all(isinstance(t, Tensor) for t in data):
        if data[0].shape[0] != data[1].shape[0] or data[0].shape[0] == 0:
            raise ConfigError(f"Invalid {name}: {data[0].shape[0]} inputs and "
                              f"{data[1].shape[0]} targets")
        return TensorDataset(*data)
    raise ConfigError(f"Invalid {name}: {type(data).__name__} (expected a torch Dataset or an "
                      "(x, y) pair of tensors)")


def _loss(loss: Any) -> tuple[Callable[[Tensor, Tensor], Tensor], bool, str]:
    if isinstance(loss, str):
        from adatune.running.config import canonical_loss

        name = canonical_loss(loss)
        fn, classification = build_loss(name)
        return fn, classification, name
    if not callable(loss):
        raise ConfigError(f"Invalid loss: {loss!r} (a name or a callable)")
    label = getattr(loss, "__qualname__", None) or type(loss).__name__
    return AlignedLoss(loss), False, f"{getattr(loss, '__module__', '')}:{label}".lstrip(":")


def _optimizer_name(optimizer: torch.optim.Optimizer) -> str:
    known = {torch.optim.SGD: "sgd", torch.optim.Adam: "adam", torch.optim.AdamW: "adamw"}
    return known.get(type(optimizer)) or peer_name(optimizer) or type(optimizer).__name__.lower()


def _tuner(tuner: Any, optimizer: torch.optim.Optimizer, model: nn.Module,
           optimizer_name: str) -> tuple[HypergradientTuner | None, str | None]:
    if tuner is None:
        return None, None
    if isinstance(tuner, HypergradientTuner):
        if tuner.optimizer is not optimizer:
            raise ConfigError("Invalid tuner: it wraps another optimizer than optimizer=")
        return tuner, type(tuner).__name__.lower()
    if not isinstance(tuner, str) or tuner.strip().lower() not in TUNER_NAMES:
        raise ConfigError(f"Invalid tuner: {tuner!r} (choose from: {', '.join(TUNER_NAMES)}, a "
                          "HypergradientTuner, or None)")
    method = tuner.strip().lower()
    if optimizer_name not in ("sgd", "adam", "adamw"):
        raise ConfigError(f"Invalid optimizer: {type(optimizer).__name__} (the tuners support "
                          "torch.optim.SGD, Adam and AdamW)")
    group = optimizer.param_groups[0]
    defaults = TrainConfig(method=method, optimizer=optimizer_name, lr=float(group["lr"]))
    try:
        return build_tuner(defaults, optimizer, model), method
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _schedule(schedule: Any, interval: str, optimizer: torch.optim.Optimizer,
              steps_per_epoch: int) -> tuple[Schedule | None, str]:
    if interval not in ("epoch", "step"):
        raise ConfigError(f"Invalid schedule_interval: {interval!r} (epoch or step)")
    if schedule is None:
        return None, "constant"
    if isinstance(schedule, str):
        name = canonical_schedule(schedule)
        return build_schedule(optimizer, ScheduleConfig(name),
                              steps_per_epoch=steps_per_epoch), name
    if isinstance(schedule, lr_scheduler.LRScheduler):
        if schedule.optimizer is not optimizer:
            raise ConfigError("Invalid schedule: it schedules another optimizer than optimizer=")
        return Schedule(schedule, interval), type(schedule).__name__.lower()
    raise ConfigError(f"Invalid schedule: {type(schedule).__name__} (a name or a "
                      "torch.optim.lr_scheduler.LRScheduler)")


def _group_settings(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Param group 0's hyperparameters that are plain values (for the run's record)."""
    group = optimizer.param_groups[0]
    out: dict[str, Any] = {}
    for key, value in group.items():
        if key == "params":
            continue
        if isinstance(value, Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, float) and not math.isfinite(value):
            value = str(value)  # strict JSON (PostgreSQL's) has no inf: Prodigy's growth_rate
        if isinstance(value, (bool, int, float, str)) or value is None:
            out[key] = value
        elif isinstance(value, tuple) and all(isinstance(v, (int, float)) for v in value):
            out[key] = list(value)
    return out


def _tuner_settings(tuner: HypergradientTuner) -> dict[str, Any]:
    return {"class": type(tuner).__name__, "hyper_update": tuner.hyper_update,
            "hyper_lr": tuner.hyper_lr,
            "mu": "auto" if tuner.auto_mu else tuner.mu, "alpha": tuner.alpha,
            "first_order": tuner.first_order, "grad_clip": tuner.grad_clip, "hvp": tuner.hvp}
