"""Build the parts of a run from its :class:`~adatune.running.config.TrainConfig`.

The device, the built-in datasets and networks or the user's own (``model``
and ``data`` import paths), the loss, the optimizer, and the tuner or schedule:
everything :class:`~adatune.running.loop.Loop` trains, and the loop's settings.
Every check that can fail on user input happens here, before a run is written:
a factory that does not import, is not callable, raises, or returns the wrong
type, and a model whose output the loss cannot take (one forward pass on two
training examples, in eval mode, checks it). :mod:`adatune.running.engine`
builds a run's parts here; :func:`adatune.fit` is given them.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from adatune import imports
from adatune.catalog import DataSpec
from adatune.data.datasets import DataSplits, load_splits
from adatune.data.factory import user_splits
from adatune.data.models import MLP, build_model, check_compatible
from adatune.errors import ConfigError
from adatune.methods.replay import build_replay
from adatune.methods.schedule_file import LRSchedule
from adatune.methods.schedules import build_schedule
from adatune.methods.tuners import HD, MARTHE, RTHO, HypergradientTuner
from adatune.running.config import REPLAY, TrainConfig
from adatune.running.loop import Parts
from adatune.running.losses import build_loss
from adatune.running.runtypes import DivergenceRules, LoopConfig

__all__ = ["build_optimizer", "build_parts", "build_tuner", "loop_config", "resolve_device"]


def resolve_device(name: str | torch.device | None) -> torch.device:
    """``auto`` (or None) picks CUDA, then MPS, then the CPU."""
    if isinstance(name, torch.device):
        return name
    if name is None or name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda': no CUDA device is available here (try device='auto')")
    if name == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ConfigError("device='mps': MPS is not available here (try device='auto')")
    try:
        return torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device {name!r} (choose from: auto, cpu, cuda, mps)") from None


def loop_config(config: TrainConfig, rules: DivergenceRules | None = None) -> LoopConfig:
    """The loop's settings: ``config``'s, and its divergence rule unless ``rules`` replaces it."""
    return LoopConfig(epochs=config.epochs, batch_size=config.batch_size, seed=config.seed,
                      patience=config.patience, log_every=config.log_every,
                      grad_clip=config.grad_clip, workers=config.workers,
                      rules=rules or DivergenceRules(loss_factor=config.divergence_factor),
                      precision=config.precision, hvp_fraction=config.hvp_fraction)


def build_parts(config: TrainConfig, replay: LRSchedule | None = None) -> Parts:
    """Data, model, loss, optimizer and tuner or schedule for ``config``, on its device.

    A replay (method ``replay``) needs its schedule: ``replay`` is the
    :class:`~adatune.methods.schedule_file.LRSchedule` to replay
    (:func:`adatune.methods.replay.read_schedule`).
    """
    if config.is_peer:  # before any data is read
        from adatune.methods.peers import check_available

        check_available(config.method)
    device = resolve_device(config.device)
    loss, classification = build_loss(config.loss)
    splits = _data(config, classification)
    torch.manual_seed(config.seed)
    model = _model(config, splits.spec, classification).to(device)
    _check_forward(config, model, splits.train, loss, device,
                   classes=splits.spec.num_classes if classification else None)
    optimizer = build_optimizer(config, model)
    tuner = schedule = None
    try:
        steps_per_epoch = math.ceil(len(splits.train) / config.batch_size)
        if config.is_tuner:
            tuner = build_tuner(config, optimizer, model)
        elif config.method == REPLAY:
            if replay is None:
                raise ConfigError("a replay run needs the schedule to replay")
            schedule = build_replay(optimizer, replay, epochs=config.epochs,
                                    steps_per_epoch=steps_per_epoch, stretch=config.stretch,
                                    scale=config.scale)
        elif not config.is_peer:  # a peer sets its own step size: no schedule
            schedule = build_schedule(optimizer, config.schedule, steps_per_epoch=steps_per_epoch)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return Parts(model=model, optimizer=optimizer, train=splits.train, val=splits.val,
                 test=splits.test, loss=loss, classification=classification, device=device,
                 tuner=tuner, schedule=schedule)


# ------------------------------------------------------------------- the data
def _data(config: TrainConfig, classification: bool) -> DataSplits:
    if config.data is None:
        return load_splits(config.dataset, data_dir=config.data_dir, download=config.download,
                           val_fraction=config.val_fraction, val_source=config.val_source,
                           seed=config.seed, train_subset=config.train_subset)
    return user_splits(config.data, seed=config.seed, data_dir=config.data_dir,
                       val_source=config.val_source, train_subset=config.train_subset,
                       classification=classification)


# ------------------------------------------------------------------ the model
def _model(config: TrainConfig, spec: DataSpec, classification: bool) -> nn.Module:
    if config.model is None:
        return _built_in_model(config.network, spec, classification)
    path = config.model
    factory = imports.load_callable("model", path)
    arity = imports.positional_arity(factory)
    args = [] if arity == 0 else [spec]
    model = imports.call("model", path, factory, *args)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model={path!r} returned {imports.describe_type(model)}, not a "
                          "torch.nn.Module")
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError(f"model={path!r} returned a model with no trainable parameters")
    return model


def _built_in_model(network: str, spec: DataSpec, classification: bool) -> nn.Module:
    shape = tuple(spec.input_shape)
    if network == "mlp":  # flattens any input shape
        outputs = spec.num_classes if classification else 1
        return MLP(math.prod(shape), outputs)
    if len(shape) != 3:
        raise ConfigError(f"network={network!r} needs image inputs (channels, height, width); "
                          f"{spec.name} has inputs of shape {shape} (use network='mlp' or your "
                          "own model=)")
    spec3 = DataSpec(spec.name, shape, spec.num_classes)
    check_compatible(network, spec3)
    return build_model(network, spec3)


def _check_forward(config: TrainConfig, model: nn.Module, train: Dataset, loss,
                   device: torch.device, *, classes: int | None = None) -> None:
    """One forward pass and loss on two training examples, in eval mode, without gradients.

    With ``classes`` (a classification), the model must give a score for each of
    them: fewer would fail only at the first example of a class it lacks. It
    draws nothing from torch's random streams (augmentation does, so they are forked).
    """
    what = f"model={config.model!r}" if config.model else f"network={config.network!r}"
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
            except SystemExit as exc:
                raise ConfigError(f"{what} {imports.exited(exc)}") from exc
            except Exception as exc:  # noqa: BLE001 - the user's model failed
                raise ConfigError(f"{what} failed on a batch of the training data: "
                                  f"{imports.one_line(exc)}") from exc
            if not isinstance(output, Tensor):
                raise ConfigError(f"{what} returned {imports.describe_type(output)} from "
                                  "forward(); the loss needs a tensor")
            if classes is not None and (output.dim() < 2 or output.shape[1] < classes):
                width = output.shape[1] if output.dim() >= 2 else 1
                raise ConfigError(f"{what} gives {width} class score{'s' * (width != 1)} per "
                                  f"example (output of shape {tuple(output.shape)}), but the "
                                  f"data has {classes} classes: it needs one score per class")
            try:
                value = loss(output, y)
            except SystemExit as exc:
                raise ConfigError(f"the loss {config.loss!r} {imports.exited(exc)}") from exc
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
    """The tuner ``config`` names, around ``optimizer``, with ``config``'s settings.

    Its horizon (``total_steps``) is the run's length, which the loop sets.
    """
    horizon = {"anneal": config.anneal, "warmup": config.warmup, "online": config.online}
    if config.method == "hd":
        return HD(optimizer, hyper_lr=config.hyper_lr, alpha=config.alpha,
                  grad_clip=config.grad_clip, hyper_update=config.hyper_update, **horizon)
    common = {"alpha": config.alpha, "first_order": config.first_order,
              "grad_clip": config.grad_clip, "hvp": config.hvp, "model": model,
              "hyper_every": config.hyper_every,
              "hyper_update": config.hyper_update, **horizon}
    if config.method == "rtho":
        return RTHO(optimizer, hyper_lr=config.hyper_lr, **common)
    return MARTHE(optimizer, hyper_lr=config.hyper_lr, mu=config.mu, **common)
