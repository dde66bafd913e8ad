"""Build the parts of a run from its :class:`~adatune.running.config.TrainConfig`.

The built-in datasets and networks, or the user's own (``model``/``data``
import paths), the loss, the optimizer, and the tuner or schedule: everything
:func:`adatune.running.loop.run_loop` trains. Every check that can fail on user input
happens here, before a run is written: a factory that does not import, is not
callable, raises, or returns the wrong type, and a model whose output the loss
cannot take (one forward pass on two training examples, in eval mode, checks it).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, Subset, TensorDataset

import adatune
from adatune import imports
from adatune.data.datasets import DataSpec, DataSplits, load_splits
from adatune.data.models import build_model, check_compatible
from adatune.errors import ConfigError
from adatune.methods.schedules import ReplayLR, Schedule, ScheduleConfig, build_schedule
from adatune.methods.tuners import HypergradientTuner
from adatune.running.config import REPLAY, TrainConfig
from adatune.running.loop import DivergenceRules, LoopConfig, Parts, resolve_device


def loop_config(config: TrainConfig, rules: DivergenceRules | None = None) -> LoopConfig:
    return LoopConfig(epochs=config.epochs, batch_size=config.batch_size, seed=config.seed,
                      patience=config.patience, log_every=config.log_every,
                      grad_clip=config.grad_clip, workers=config.workers,
                      rules=rules or DivergenceRules(loss_factor=config.divergence_factor))


def build_parts(config: TrainConfig, replay: Any = None) -> Parts:
    """Data, model, loss, optimizer and tuner or schedule for ``config``, on its device.

    A replay (method ``replay``) needs its schedule: ``replay`` is the
    :class:`~adatune.methods.schedule_file.LRSchedule` to replay.
    """
    if config.is_peer:  # before any data is read
        from adatune.methods.peers import check_available

        check_available(config.method)
    device = resolve_device(config.device)
    loss, classification = build_loss(config.loss)
    splits = _data(config, classification)
    torch.manual_seed(config.seed)
    model = _model(config, splits.spec, classification).to(device)
    _check_forward(config, model, splits.train, loss, device)
    optimizer = build_optimizer(config, model)
    tuner = schedule = None
    try:
        steps_per_epoch = math.ceil(len(splits.train) / config.batch_size)
        if config.is_tuner:
            tuner = build_tuner(config, optimizer, model)
        elif config.method == REPLAY:
            schedule = build_replay(config, optimizer, replay, steps_per_epoch)
        elif not config.is_peer:  # a peer sets its own step size: no schedule
            schedule = build_schedule(
                optimizer,
                ScheduleConfig(config.method, step_size=config.step_size,
                               lr_decay=config.lr_decay, t_0=config.t_0, t_mult=config.t_mult),
                steps_per_epoch=steps_per_epoch)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return Parts(model=model, optimizer=optimizer, train=splits.train, val=splits.val,
                 test=splits.test, loss=loss, classification=classification, device=device,
                 tuner=tuner, schedule=schedule)


def replay_steps(config: TrainConfig, replay: Any, steps_per_epoch: int) -> int:
    """How many schedule points this run uses: its steps, or its epochs per epoch."""
    return config.epochs * (steps_per_epoch if replay.interval == "step" else 1)


def build_replay(config: TrainConfig, optimizer: torch.optim.Optimizer, replay: Any,
                 steps_per_epoch: int) -> Schedule:
    """The :class:`ReplayLR` of a replay run, stepped per step or per epoch like its schedule.

    Without ``stretch`` the schedule must cover the run: a shorter one is refused.
    """
    if replay is None:
        raise ConfigError("a replay run needs the schedule to replay")
    unit = replay.interval
    needed = replay_steps(config, replay, steps_per_epoch)
    if not config.stretch and len(replay) < needed:
        per = f" ({config.epochs} epochs of {steps_per_epoch} steps)" if unit == "step" else ""
        raise ConfigError(f"the schedule has {len(replay)} {unit}s but this run trains "
                          f"{needed}{per}: add --stretch to map it onto the run, or train "
                          "fewer epochs")
    scheduler = ReplayLR(optimizer, replay.lrs, scale=config.scale,
                         total_steps=needed if config.stretch else None)
    return Schedule(scheduler, unit)


# ------------------------------------------------------------------- the loss
def _cross_entropy(output: Tensor, target: Tensor) -> Tensor:
    return nn.functional.cross_entropy(output, target)


def _align(output: Tensor, target: Tensor) -> Tensor:
    """(N,) targets for (N, 1) outputs, and the like: the target in the output's shape.

    Without it, torch's element-wise losses broadcast (N, 1) against (N,) to an
    (N, N) loss matrix, with a warning only.
    """
    if output.shape != target.shape and output.numel() == target.numel():
        return target.reshape(output.shape)
    return target


def _mse(output: Tensor, target: Tensor) -> Tensor:
    return nn.functional.mse_loss(output, _align(output, target).to(output.dtype))


class AlignedLoss:
    """A user's loss, given targets in the output's shape when only the shape differs."""

    def __init__(self, loss: Any) -> None:
        self.loss = loss

    def __call__(self, output: Tensor, target: Tensor) -> Tensor:
        return self.loss(output, _align(output, target))


def build_loss(name: str) -> tuple[Any, bool]:
    """(loss(output, target), classification) for ``cross_entropy``, ``mse`` or a path.

    A path may name a loss function or a loss class (``torch.nn:SmoothL1Loss``),
    which is instantiated without arguments.
    """
    if name == "cross_entropy":
        return _cross_entropy, True
    if name == "mse":
        return _mse, False
    obj = imports.load_callable("--loss", name)
    if isinstance(obj, type):
        obj = imports.call("--loss", name, obj)
        if not callable(obj):
            raise ConfigError(f"--loss {name!r} built {imports.describe_type(obj)}, "
                              "which is not callable")
    return AlignedLoss(obj), False


# ------------------------------------------------------------------- the data
def _data(config: TrainConfig, classification: bool) -> DataSplits:
    if config.data is None:
        return load_splits(config.dataset, data_dir=config.data_dir, download=config.download,
                           val_fraction=config.val_fraction, val_source=config.val_source,
                           seed=config.seed, train_subset=config.train_subset)
    return custom_splits(config, classification)


def custom_splits(config: TrainConfig, classification: bool) -> DataSplits:
    """Call the ``data`` factory with the seed (and data directory) and check what it returns."""
    path = config.data
    factory = imports.load_callable("--data", path)
    kwargs: dict[str, Any] = {}
    args: list[Any] = []
    if imports.accepts_keyword(factory, "seed"):
        kwargs["seed"] = config.seed
        if imports.accepts_keyword(factory, "data_dir"):
            kwargs["data_dir"] = config.data_dir
    else:
        arity = imports.positional_arity(factory)
        args = [config.seed, config.data_dir][: 2 if arity is None else min(arity, 2)]
    returned = imports.call("--data", path, factory, *args, **kwargs)
    expected = ("(train, val) or (train, val, test), each a torch Dataset or an (x, y) "
                "tensor pair")
    if not isinstance(returned, (tuple, list)) or len(returned) not in (2, 3):
        raise ConfigError(f"--data {path!r} returned {imports.describe_type(returned)}; "
                          f"expected {expected}")
    names = ("train", "val", "test")
    sets = [_as_dataset(path, names[i], part, expected) for i, part in enumerate(returned)]
    train, val = sets[0], sets[1]
    test = sets[2] if len(sets) == 3 else None
    for name, ds in zip(names, sets):
        if ds is not None and len(ds) == 0:
            raise ConfigError(f"--data {path!r} returned an empty {name} set")
    if train is None or val is None:
        raise ConfigError(f"--data {path!r} returned no {'train' if train is None else 'val'} "
                          "set")
    if config.val_source == "test":
        if test is None:
            raise ConfigError(f"--val-source test: --data {path!r} returned no test set")
        val = test
    if config.train_subset is not None and config.train_subset < 1.0:
        keep = max(1, round(config.train_subset * len(train)))
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(config.seed))
        train = Subset(train, sorted(order[:keep].tolist()))
    x0, _ = train[0]
    num_classes = _num_classes(path, returned[0], [train, val, test]) if classification else None
    spec = DataSpec(imports.attr_name(path), tuple(torch.as_tensor(x0).shape), num_classes)
    return DataSplits(spec=spec, train=train, val=val, test=test)


def _as_dataset(path: str, name: str, part: Any, expected: str) -> Dataset | None:
    if part is None and name == "test":
        return None
    if isinstance(part, Dataset):
        return part
    if isinstance(part, (tuple, list)) and len(part) == 2 \
            and all(isinstance(t, Tensor) for t in part):
        x, y = part
        if x.shape[0] != y.shape[0]:
            raise ConfigError(f"--data {path!r}: the {name} set has {x.shape[0]} inputs but "
                              f"{y.shape[0]} targets")
        return TensorDataset(x, y)
    raise ConfigError(f"--data {path!r} returned {imports.describe_type(part)} as its {name} "
                      f"set; expected {expected}")


def _num_classes(path: str, raw: Any, sets: Sequence[Dataset | None]) -> int:
    """The class count: a ``classes``/``num_classes`` attribute, else the largest label + 1."""
    for source in (raw, sets[0]):
        if isinstance(getattr(source, "num_classes", None), int):
            return source.num_classes
        classes = getattr(source, "classes", None)
        if isinstance(classes, (list, tuple)) and classes:
            return len(classes)
    top = -1
    for ds in sets:
        if ds is None:
            continue
        labels = _labels(ds)
        if labels.dtype.is_floating_point or labels.dim() != 1:
            raise ConfigError(f"--data {path!r}: cross-entropy needs integer class labels, got "
                              f"{labels.dtype} targets of shape {tuple(labels.shape[1:])} per "
                              "example (use --loss mse for regression)")
        if labels.numel():
            top = max(top, int(labels.max()))
    return top + 1


def _labels(ds: Dataset) -> Tensor:
    base, index = ds, None
    if isinstance(ds, Subset):
        base, index = ds.dataset, torch.as_tensor(ds.indices, dtype=torch.long)
    if isinstance(base, TensorDataset) and len(base.tensors) == 2:
        y = base.tensors[1]
        return y if index is None else y[index]
    return torch.stack([torch.as_tensor(ds[i][1]) for i in range(len(ds))])


# ------------------------------------------------------------------ the model
def _model(config: TrainConfig, spec: DataSpec, classification: bool) -> nn.Module:
    if config.model is None:
        return _built_in_model(config.network, spec, classification)
    path = config.model
    factory = imports.load_callable("--model", path)
    arity = imports.positional_arity(factory)
    args = [] if arity == 0 else [spec]
    model = imports.call("--model", path, factory, *args)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"--model {path!r} returned {imports.describe_type(model)}, not a "
                          "torch.nn.Module")
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError(f"--model {path!r} returned a model with no trainable parameters")
    return model


def _built_in_model(network: str, spec: DataSpec, classification: bool) -> nn.Module:
    shape = tuple(spec.input_shape)
    if network == "mlp":  # flattens any input shape
        outputs = spec.num_classes if classification else 1
        from adatune.data.models import MLP

        return MLP(math.prod(shape), outputs)
    if len(shape) != 3:
        raise ConfigError(f"--network {network} needs image inputs (channels, height, width); "
                          f"{spec.name} has inputs of shape {shape} (use --network mlp or your "
                          "own --model)")
    spec3 = DataSpec(spec.name, shape, spec.num_classes)
    check_compatible(network, spec3)
    return build_model(network, spec3)


def _check_forward(config: TrainConfig, model: nn.Module, train: Dataset, loss,
                   device: torch.device) -> None:
    """One forward pass and loss on two training examples, in eval mode, without gradients.

    It draws nothing from torch's random streams (augmentation does, so they are forked).
    """
    what = f"--model {config.model!r}" if config.model else f"--network {config.network}"
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a failure below says what went wrong
            items = [train[i] for i in range(min(2, len(train)))]
            x = torch.stack([torch.as_tensor(a) for a, _ in items]).to(device)
            y = torch.stack([torch.as_tensor(b) for _, b in items]).to(device)
            try:
                output = model(x)
            except Exception as exc:  # noqa: BLE001 - the user's model failed
                raise ConfigError(f"{what} failed on a batch of the training data: "
                                  f"{imports.one_line(exc)}") from exc
            if not isinstance(output, Tensor):
                raise ConfigError(f"{what} returned {imports.describe_type(output)} from "
                                  "forward(); the loss needs a tensor")
            try:
                value = loss(output, y)
            except Exception as exc:  # noqa: BLE001
                raise ConfigError(f"the loss {config.loss!r} failed on {what}'s output of shape "
                                  f"{tuple(output.shape)} and targets of shape "
                                  f"{tuple(y.shape)}: {imports.one_line(exc)}") from exc
            if not isinstance(value, Tensor) or value.numel() != 1:
                raise ConfigError(f"the loss {config.loss!r} must return a scalar tensor, "
                                  f"got {imports.describe_type(value)}")
    finally:
        model.train(was_training)


# ------------------------------------------------------ optimizer and tuner
def build_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """The run's optimizer: torch's SGD, Adam or AdamW, or a peer from its package."""
    params = model.parameters()
    if config.is_peer:
        from adatune.methods.peers import build_peer

        return build_peer(config.method, params, **config.optimizer_settings)
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                               nesterov=config.nesterov, weight_decay=config.weight_decay)
    cls = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=config.lr, weight_decay=config.weight_decay)


def build_tuner(config: TrainConfig, optimizer: torch.optim.Optimizer,
                model: nn.Module) -> HypergradientTuner:
    if config.method == "hd":
        return adatune.HD(optimizer, hyper_lr=config.hyper_lr, alpha=config.alpha,
                          grad_clip=config.grad_clip, hyper_update=config.hyper_update)
    common = {"alpha": config.alpha, "first_order": config.first_order,
              "grad_clip": config.grad_clip, "hvp": config.hvp, "model": model,
              "hyper_update": config.hyper_update}
    if config.method == "rtho":
        return adatune.RTHO(optimizer, hyper_lr=config.hyper_lr, **common)
    return adatune.MARTHE(optimizer, hyper_lr=config.hyper_lr, mu=config.mu, **common)
