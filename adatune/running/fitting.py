"""``adatune.fit``: your own model and data through the recorded, resumable loop.

The same loop the ``adatune`` command runs (:mod:`adatune.running.loop`), over
parts you give: the run is recorded in the store (``adatune runs``, ``adatune
report`` show it), checkpoints go to ``checkpoint_dir/run-ID/`` (by default the
store's own folder: ``runs-runs/`` beside ``runs.db``), and
``resume=RUN_ID`` continues a killed or interrupted run from its last
checkpoint, given the same parts again. ``fit`` checks and completes the parts
you give, then calls :func:`adatune.running.assembly.train_run`, as the command
does with the parts it builds; its defaults are the command's
(:class:`~adatune.running.config.TrainConfig`'s).

Under ``torch.distributed`` (a process group initialised, e.g. by
``torchrun`` and :func:`adatune.distributed.launch`), call ``fit`` on every
rank with the same arguments and the whole datasets: each rank trains on its
slice of every batch (``batch_size`` is the global batch), rank 0 alone
writes the store and the checkpoints, and every rank returns the same result.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import lr_scheduler
from torch.utils.data import Dataset

from adatune.data.factory import as_dataset
from adatune.errors import ConfigError
from adatune.methods.peers import optimizer_view, peer_name
from adatune.methods.schedules import Schedule, build_schedule, canonical_schedule
from adatune.methods.tuners import HypergradientTuner
from adatune.methods.tuners.collectives import active_group
from adatune.running import distributed
from adatune.running.assembly import Resume, train_run
from adatune.running.build import build_tuner, loop_config
from adatune.running.config import (
    DEFAULT_LR,
    DEFAULT_MOMENTUM,
    DEFAULT_OPTIMIZER,
    TUNER_NAMES,
    TrainConfig,
)
from adatune.running.folder import checkpoint_root
from adatune.running.loop import Parts
from adatune.running.losses import loss_from
from adatune.running.runtypes import Events, RunResult
from adatune.store import DEFAULT_STORE, Store
from adatune.store.records import NewRun

DataArg = Dataset | tuple[Tensor, Tensor]
_DEFAULT = object()
#: The run configuration's defaults, which are fit's too (read, never written again here).
_D = {f.name: f.default for f in dataclasses.fields(TrainConfig)}


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
    loss: str | Callable[[Tensor, Tensor], Tensor] = _D["loss"],
    classification: bool | None = None,
    epochs: int = _D["epochs"],
    batch_size: int = _D["batch_size"],
    seed: int = _D["seed"],
    patience: int | None = _D["patience"],
    log_every: int = _D["log_every"],
    grad_clip: float | None = _D["grad_clip"],
    hvp_fraction: float = _D["hvp_fraction"],
    workers: int = _D["workers"],
    divergence_factor: float = _D["divergence_factor"],
    device: str | torch.device | None = None,
    store: str | Store = DEFAULT_STORE,
    name: str | None = None,
    experiment: str | None = None,
    dataset_name: str = "custom",
    checkpoint_dir: str | None = _D["checkpoint_dir"],
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
    Schedule-Free, DoG, Mechanic; see :mod:`adatune.methods.peers`). A
    ``schedule`` is a baseline name (``"constant"``, ``"staircase"``,
    ``"exponential"``, ``"cosine"``, with the command's settings) or a
    ``torch.optim.lr_scheduler`` instance, stepped every ``schedule_interval``
    (``"epoch"`` or ``"step"``). With neither, the LR stays constant (or, for
    a peer, as the peer sets it; Mechanic scales whatever LR a schedule sets).
    ``optimizer`` defaults to SGD with the command's momentum and LR (0.9,
    0.05), or is taken from the tuner. A peer's effective LR is what the run
    records (an optimizer of ``mechanic_pytorch.mechanize`` is recognised over
    any base class), and a Schedule-Free
    optimizer is switched to ``eval()`` for evaluation and checkpoints (its
    averaged weights are judged, saved and left in ``model`` at the end) and
    to ``train()`` for training steps.

    ``loss``: ``"cross_entropy"`` (accuracies recorded; the best epoch is the
    best validation accuracy), ``"mse"``, or a callable ``loss(output,
    target)`` returning the batch mean (the best epoch is then the lowest
    validation loss; ``classification=True`` records accuracies anyway).

    ``hvp_fraction`` < 1: MARTHE and RTHO take their Hessian-vector product on
    that leading fraction of each batch, an unbiased estimate of the batch's
    (docs/math.md, "The HVP on part of the batch").

    ``device`` defaults to the model's. ``store`` is a path, an SQLAlchemy
    URL or an open :class:`~adatune.store.Store`. Returns the
    :class:`~adatune.running.runtypes.RunResult` (``run_id`` names it in the store).
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
        optimizer = torch.optim.SGD(model.parameters(), lr=DEFAULT_LR[DEFAULT_OPTIMIZER],
                                    momentum=DEFAULT_MOMENTUM)
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ConfigError(f"Invalid optimizer: {type(optimizer).__name__} "
                          "(expected a torch.optim.Optimizer)")
    if tuner is not None and schedule is not None:
        raise ConfigError("fit takes a tuner or a schedule, not both")
    # The loop's settings, checked as the command checks them.
    settings = loop_config(TrainConfig(
        epochs=epochs, batch_size=batch_size, seed=seed, patience=patience, log_every=log_every,
        grad_clip=grad_clip, workers=workers, divergence_factor=divergence_factor,
        hvp_fraction=hvp_fraction))
    device = torch.device(device) if device is not None else _device_of(model)
    model.to(device)
    loss_fn, is_classification, loss_name = loss_from(loss)
    if classification is not None:
        is_classification = bool(classification)
    train_ds = as_dataset("train", train)
    val_ds = as_dataset("val", val)
    test_ds = None if test is None else as_dataset("test", test)
    kind_name = _optimizer_name(optimizer)
    tuner_obj, method = _tuner(tuner, optimizer, model, kind_name)
    if settings.hvp_fraction != 1 and (tuner_obj is None or tuner_obj.outer == "training"):
        raise ConfigError("hvp_fraction applies to marthe and rtho only (the tuners with a "
                          "Hessian-vector product)")
    steps_per_epoch = math.ceil(len(train_ds) / settings.batch_size)
    sched, sched_name = _schedule(schedule, schedule_interval, optimizer, steps_per_epoch)
    parts = Parts(model=model, optimizer=optimizer, train=train_ds, val=val_ds, test=test_ds,
                  loss=loss_fn, classification=is_classification, device=device,
                  tuner=tuner_obj, schedule=sched)
    if resume is None:
        torch.manual_seed(seed)
    if method is None:  # a peer without a schedule is its own method
        method = kind_name if schedule is None and parts.view.adaptive else sched_name
    group = optimizer.param_groups[0]
    config = {
        "entry": "fit", "method": method, "optimizer": kind_name,
        "optimizer_settings": _group_settings(optimizer),
        "lr": tuner_obj.lr if tuner_obj is not None else float(group["lr"]),
        "model": type(model).__name__, "dataset": dataset_name, "loss": loss_name,
        "classification": is_classification,
        "checkpoint_dir": str(checkpoint_root(checkpoint_dir, store)),
        "tuner": None if tuner_obj is None else _tuner_settings(tuner_obj),
        **{k: v for k, v in dataclasses.asdict(settings).items() if k != "rules"},
        "divergence_factor": divergence_factor,
    }
    fingerprint = {**config, "checkpoint_dir": None, "resume": resume, "name": name,
                   "experiment": experiment, "parameters": [list(p.shape) for p in
                                                            model.parameters()]}
    if active_group(getattr(tuner_obj, "process_group", None)) is not None:
        # the data: each set's length and a few of its examples, alike on every rank
        fingerprint["data"] = distributed.data_fingerprint(train=train_ds, val=val_ds,
                                                           test=test_ds)
    distributed.agree(fingerprint, lambda: None, batch_size=settings.batch_size,
                      group=getattr(tuner_obj, "process_group", None))
    new = None if resume is not None else NewRun(
        kind="train" if tuner_obj is not None else "baseline", method=method,
        optimizer=kind_name, network=type(model).__name__[:64], dataset=dataset_name[:64],
        seed=seed, config={}, name=name, experiment=experiment)
    return train_run(store, parts, settings, config, new=new,
                     resume=None if resume is None else Resume(resume),
                     events=events, started=started)


def _device_of(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    raise ConfigError("Invalid model: it has no parameters")


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
        name = canonical_schedule(schedule)  # with the command's settings for it
        return build_schedule(optimizer, TrainConfig(method=name).schedule,
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
            "first_order": tuner.first_order, "grad_clip": tuner.grad_clip, "hvp": tuner.hvp,
            "hyper_every": tuner.hyper_every,
            "anneal": tuner.anneal, "warmup": tuner.warmup, "online": tuner.online}
