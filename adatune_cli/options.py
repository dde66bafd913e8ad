"""The training options, defined once and shared by train, baseline, find-alpha, sweep.

``@run_options`` adds every option below to a command's signature and hands
them to the command as one ``opts: dict``; ``make_config`` turns that into a
validated :class:`adatune.running.config.TrainConfig`. The original AdaTune scripts'
flag names are accepted beside the modern ones (``--num-epoch``/``--epochs``,
``--wd``/``--weight-decay``, ``--grad-clipping``/``--grad-clip``,
``--model-loc``/``--checkpoint-dir``).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable
from typing import Annotated, Any

import typer

from adatune.errors import ConfigError
from adatune.methods.horizon import ANNEALS, HORIZON_HYPER_LR
from adatune.methods.hyper_update import ADDITIVE, MAX_HYPER_LR, SCALE_FREE
from adatune.methods.peers import PEERS
from adatune.methods.schedules import DEFAULT_LR_DECAY
from adatune.methods.tuners.settings import HVP_MODES
from adatune.running.config import (
    DEFAULT_DATASET,
    DEFAULT_HYPER_LR,
    DEFAULT_LR,
    DEFAULT_MOMENTUM,
    DEFAULT_NETWORK,
    DEFAULT_OPTIMIZER,
    TrainConfig,
)

PANEL_RUN = "Run"
PANEL_TUNER = "Hypergradient tuner"
PANEL_SCHED = "Baseline schedule"
PANEL_PEER = "Peer optimizer"
PANEL_DATA = "Data and protocol"


def _hyper_lr_help() -> str:
    d = DEFAULT_HYPER_LR
    free = sorted({d[(SCALE_FREE, m, "sgd")] for m in ("marthe", "rtho", "hd")})
    free_text = " / ".join(f"{v:g}" for v in free)
    return (f"Hyper-learning rate beta. With --hyper-update {SCALE_FREE}: dimensionless, in "
            f"[0, {MAX_HYPER_LR:g}] (the most log(LR) moves up in one step) \\[default: "
            f"{HORIZON_HYPER_LR:g}; {free_text} with --online; for every optimizer]. With "
            f"{ADDITIVE}: LR per unit of "
            f"hypergradient \\[default: {d[(ADDITIVE, 'marthe', 'sgd')]:g} marthe/rtho, "
            f"{d[(ADDITIVE, 'hd', 'sgd')]:g} hd with sgd; {d[(ADDITIVE, 'marthe', 'adam')]:g} / "
            f"{d[(ADDITIVE, 'hd', 'adam')]:g} with adam].")


def _opt(*names: str, help: str, panel: str = PANEL_RUN, **kw: Any) -> Any:
    return typer.Option(*names, help=help, rich_help_panel=panel, **kw)


#: Every option's default is the run configuration's own (the very object): see
#: tests/test_defaults.py. Defaults that depend on other options are said in the help,
#: from the library's tables.
_D = {f.name: f.default for f in dataclasses.fields(TrainConfig)}


def _peer_defaults(key: str) -> str:
    """``1.0, schedulefree-adamw 0.0025``: the peers' own defaults of ``key``, commonest first."""
    values = {name: getattr(spec, key) for name, spec in PEERS.items()
              if getattr(spec, key) is not None}
    common = max(set(values.values()), key=list(values.values()).count)
    return ", ".join([f"{common:g}", *(f"{n} {v:g}" for n, v in values.items() if v != common)])


def _lr_help() -> str:
    adam = DEFAULT_LR["adam"] if DEFAULT_LR["adam"] == DEFAULT_LR["adamw"] else None
    mine = (f"{DEFAULT_LR['sgd']:g} for sgd, {adam:g} for adam/adamw" if adam is not None
            else ", ".join(f"{v:g} for {k}" for k, v in DEFAULT_LR.items()))
    return f"Initial learning rate \\[default: {mine}; a peer's own: {_peer_defaults('lr')}]."


def _momentum_help() -> str:
    peers = ", ".join(f"{name} {spec.momentum:g}" for name, spec in PEERS.items()
                      if spec.momentum is not None)
    return f"SGD momentum \\[default: {DEFAULT_MOMENTUM:g}; {peers}]."


# name -> its annotation (type and typer.Option). Order is the order in --help. Every
# option is a field of TrainConfig, and its default is that field's default (DEFAULTS).
OPTIONS: dict[str, Any] = {
    "network": Annotated[str | None, _opt("--network", help="mlp, lenet, vgg11, resnet18, "
                                           "wrn28_10, densenet_bc100, transformer (or vgg, resnet, "
                                           "wide_resnet, densenet) "
                                           f"\\[default: {DEFAULT_NETWORK}].")],
    "model": Annotated[str | None, _opt(
        "--model", metavar="MODULE:FACTORY",
        help="Your own network instead of --network: an import path module.path:factory; the "
             "factory takes the data's spec (input_shape, num_classes) or nothing and returns "
             "an nn.Module. The current directory is on the import path.")],
    "dataset": Annotated[str | None, _opt("--dataset", help="digits (embedded, offline), mnist, "
                                           "fashion_mnist, cifar10, cifar100 (or cifar_10, "
                                           f"cifar_100) \\[default: {DEFAULT_DATASET}].")],
    "data": Annotated[str | None, _opt(
        "--data", metavar="MODULE:FACTORY",
        help="Your own data instead of --dataset: an import path module.path:factory; the "
             "factory takes the seed (and data_dir) and returns (train, val) or (train, val, "
             "test), each a torch Dataset or an (x, y) tensor pair.")],
    "loss": Annotated[str, _opt(
        "--loss", help="cross_entropy (class scores; accuracy picks the best epoch), mse, or "
                       "an import path module:fn (the lowest validation loss picks the best "
                       "epoch).")],
    "optimizer": Annotated[str | None, _opt(
        "--optimizer", help=f"sgd, adam or adamw \\[default: {DEFAULT_OPTIMIZER}; a peer "
                            "--method is its own optimizer].")],
    "lr": Annotated[float | None, _opt("--lr", help=_lr_help())],
    "momentum": Annotated[float | None, _opt("--momentum", help=_momentum_help())],
    "nesterov": Annotated[bool, _opt("--nesterov", help="Nesterov momentum (SGD).")],
    "weight_decay": Annotated[float, _opt("--weight-decay", "--wd",
                                           help="Weight decay (L2; decoupled for adamw).")],
    "epochs": Annotated[int, _opt("--epochs", "--num-epoch", help="Epochs to train.")],
    "batch_size": Annotated[int, _opt("--batch-size", help="Minibatch size.")],
    "seed": Annotated[int, _opt("--seed", help="Random seed (data split, init, order).")],
    "device": Annotated[str, _opt("--device", help="auto, cpu, cuda or mps.")],
    "precision": Annotated[str, _opt(
        "--precision", help="The training forward's precision: fp32, or bf16 / fp16 under "
                            "torch.autocast (fp16 with a gradient scaler); the weights, the "
                            "optimizer and the tuner stay fp32.")],
    "grad_clip": Annotated[float | None, _opt("--grad-clip", "--grad-clipping",
                                               help="Clip the gradient norm at this value.")],
    "hyper_update": Annotated[str, _opt(
        "--hyper-update", panel=PANEL_TUNER,
        help=f"How the hypergradient moves the LR: {SCALE_FREE} (in log space, by a normalized "
             f"hypergradient; bounded steps, LR > 0) or {ADDITIVE} (LR - hyper_lr * h, the "
             "papers' rule).")],
    "hyper_lr": Annotated[float | None, _opt(
        "--hyper-lr", panel=PANEL_TUNER, help=_hyper_lr_help())],
    "mu": Annotated[str, _opt("--mu", panel=PANEL_TUNER,
                               help="MARTHE's mu in [0, 1], or 'auto' (a negative value means "
                                    "auto, as in the original).")],
    "alpha": Annotated[float, _opt("--alpha", panel=PANEL_TUNER,
                                    help="Rate at which the hyper-LR adapts (0 keeps it fixed; "
                                         f"dimensionless, in [0, {MAX_HYPER_LR:g}], with "
                                         f"{SCALE_FREE}).")],
    "first_order": Annotated[bool, _opt("--first-order", panel=PANEL_TUNER,
                                         help="Drop the Hessian term (no HVP).")],
    "hvp": Annotated[str, _opt("--hvp", panel=PANEL_TUNER,
                                help=f"{HVP_MODES[0]} (double backward) or {HVP_MODES[1]} "
                                     "(faster; on ReLU networks in fp32 its error can exceed "
                                     "the product itself: docs/math.md).")],
    "hvp_fraction": Annotated[float, _opt(
        "--hvp-fraction", panel=PANEL_TUNER,
        help="marthe/rtho: take the Hessian-vector product on this leading fraction of each "
             "batch, an unbiased estimate of the batch's (1: the whole batch).",
        metavar="F")],
    "hyper_every": Annotated[int, _opt(
        "--hyper-every", panel=PANEL_TUNER,
        help="marthe/rtho: take the HVP and the validation gradient, and move the LR, on one "
             "step in K (the tangent advances every step; 1: exact, every step).",
        metavar="K")],
    "anneal": Annotated[str, _opt(
        "--anneal", panel=PANEL_TUNER,
        help=f"After the warm-up the LR anneals to 0 at the run's end: {' or '.join(ANNEALS[:2])}, "
             f"or {ANNEALS[2]} (it stays at the tuned scale).")],
    "warmup": Annotated[float, _opt(
        "--warmup", panel=PANEL_TUNER,
        help="The warm-up, where the hypergradient tunes the LR's scale both ways: a fraction "
             "of the run's steps, in (0, 1). After it the scale may only rise, while the "
             "hypergradient says so; then plain steps.")],
    "online": Annotated[bool, _opt(
        "--online", panel=PANEL_TUNER,
        help="The papers' tuner instead: no warm-up, no annealing, the LR moved by every "
             "step's hypergradient (prone to short-horizon bias on long runs).")],
    "step_size": Annotated[int, _opt("--step-size", panel=PANEL_SCHED,
                                      help="Staircase: epochs between decays.")],
    "lr_decay": Annotated[float | None, _opt(
        "--lr-decay", panel=PANEL_SCHED,
        help="Decay factor \\[default: " + ", ".join(
            f"{v:g} {k}" for k, v in DEFAULT_LR_DECAY.items()) + " per epoch].")],
    "t_0": Annotated[int, _opt("--t-0", panel=PANEL_SCHED,
                                help="Cosine: epochs of the first period.")],
    "t_mult": Annotated[int, _opt("--t-mult", panel=PANEL_SCHED,
                                   help="Cosine: period multiplier after each restart.")],
    "warmup_steps": Annotated[int, _opt("--warmup-steps", panel=PANEL_PEER,
                                         help="Schedule-Free: steps of linear LR warm-up.")],
    "data_dir": Annotated[str | None, _opt("--data-dir", panel=PANEL_DATA,
                                            help="Where datasets live \\[default: "
                                                 "$ADATUNE_DATA or ~/.cache/adatune/data].")],
    "download": Annotated[bool, _opt("--download", panel=PANEL_DATA,
                                      help="Download a missing dataset (needs a network).")],
    "val_fraction": Annotated[float, _opt("--val-fraction", panel=PANEL_DATA,
                                           help="Share of the training set held out for "
                                                "validation.")],
    "val_source": Annotated[str, _opt("--val-source", panel=PANEL_DATA,
                                       help="train (a split of it), or test: the original's "
                                            "protocol, for reproducing old numbers only.")],
    "patience": Annotated[int | None, _opt("--patience", panel=PANEL_DATA,
                                            help="Stop after this many epochs without a better "
                                                 "validation accuracy.")],
    "workers": Annotated[int, _opt("--workers", panel=PANEL_DATA,
                                    help="DataLoader worker processes for --data datasets that "
                                         "are not in-memory tensors.")],
    "log_every": Annotated[int, _opt("--log-every", panel=PANEL_DATA,
                                      help="Record a step trace every N steps.")],
    "checkpoint_dir": Annotated[str | None, _opt("--checkpoint-dir", "--model-loc",
                                                  panel=PANEL_DATA,
                                                  help="Where checkpoints go (run-ID/ "
                                                       "inside) \\[default: beside the store, "
                                                       "named after it: ./adatune-runs for "
                                                       "./adatune.db].")],
}

_CONFIG_KEYS = tuple(OPTIONS)
#: Each option's default: the run configuration's field default, the very object.
DEFAULTS: dict[str, Any] = {name: _D[name] for name in OPTIONS}


def panel_of(name: str) -> str:
    """The --help panel option ``name`` is listed under."""
    return typing.get_args(OPTIONS[name])[1].rich_help_panel


def _hidden(annotation: Any) -> Any:
    kind, info = typing.get_args(annotation)
    info = copy.copy(info)
    info.hidden = True
    return Annotated[kind, info]


def run_options(func: Callable[..., Any] | None = None, *,
                hide: tuple[str, ...] = ()) -> Any:
    """Add the shared options to ``func``'s CLI signature; pass them as ``opts``.

    The options of the panels in ``hide`` are still parsed (the command refuses
    them with :func:`refuse_given`) but left out of its ``--help``.
    """
    if func is None:
        return functools.partial(run_options, hide=hide)
    sig = inspect.signature(func)
    hints = typing.get_type_hints(func, include_extras=True)  # resolve string annotations
    own = [p.replace(annotation=hints.get(name, p.annotation))
           for name, p in sig.parameters.items() if name != "opts"]
    shown = {name: (_hidden(annotation) if panel_of(name) in hide else annotation,
                    DEFAULTS[name])
             for name, annotation in OPTIONS.items()}
    extra = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                          annotation=annotation)
        for name, (annotation, default) in shown.items()
    ]

    @functools.wraps(func)
    def wrapper(**kwargs: Any) -> Any:
        opts = {k: kwargs.pop(k) for k in _CONFIG_KEYS}
        return func(opts=opts, **kwargs)

    wrapper.__signature__ = sig.replace(parameters=own + extra)  # type: ignore[attr-defined]
    annotations = {k: v for k, v in hints.items() if k != "opts"}
    annotations.update({name: annotation for name, (annotation, _) in shown.items()})
    wrapper.__annotations__ = annotations
    del wrapper.__wrapped__  # typer must see the new signature, not the original
    return wrapper


def refuse_given(ctx: typer.Context, panels: tuple[str, ...], why: str) -> None:
    """One line for options of ``panels`` that were given but do not apply (``why``)."""
    wrong = [flag(name) for name in OPTIONS if panel_of(name) in panels and given(ctx, name)]
    if wrong:
        raise ConfigError(f"{', '.join(wrong)}: {why}")


def given(ctx: typer.Context, name: str) -> bool:
    """Whether the user gave option ``name`` (on the command line or via its variable)."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT")


def option_names() -> frozenset[str]:
    """The arguments the commands take as options: the run's, and replay's and export's."""
    return frozenset({*OPTIONS, "method", "from_run", "from_file", "stretch", "scale",
                      "per_epoch", "study", "trials", "seeds", "sampler", "space", "timeout"})


def flag(name: str) -> str:
    """The command-line flag of a parameter name: ``weight_decay`` -> ``--weight-decay``."""
    return "--" + name.replace("_", "-")


def parse_mu(text: str | float) -> float | str:
    if isinstance(text, (int, float)):  # the default, as the configuration holds it
        return text
    value = text.strip().lower()
    if value == "auto":
        return "auto"
    try:
        return float(value)
    except ValueError:
        raise ConfigError(f"invalid mu: {text!r} (a number in [0, 1] or 'auto')") from None


def make_config(method: str, opts: dict[str, Any], **overrides: Any) -> TrainConfig:
    """A validated TrainConfig from the shared options (ConfigError on bad input)."""
    values = dict(opts)
    values["mu"] = parse_mu(values["mu"])
    values.update(overrides)
    return TrainConfig(method=method, **values)


def command_line(kind: str, config: dict[str, Any], *, name: str | None = None,
                 experiment: str | None = None) -> str:
    """The ``adatune`` command that reproduces a run with this configuration."""
    import shlex

    from adatune.methods.peers import PEERS

    method = config["method"]
    tuner = kind == "train"
    peer = method in PEERS
    flag = "--tuner" if tuner else ("--method" if peer else "--lr-scheduler")
    parts = ["adatune", "train" if tuner else "baseline", flag, method]
    skip = {"checkpoint_dir", "download", "device"}  # machine-specific
    if peer:
        skip.add("optimizer")  # a peer is its own optimizer
    if tuner:
        skip |= {"step_size", "lr_decay", "t_0", "t_mult"}
        # runs stored before the rule was a choice used the additive one, and before the
        # horizon, the online tuner
        config = {"hyper_update": ADDITIVE, "online": True, **config}
        if config["online"]:
            skip |= {"anneal", "warmup"}
    else:
        skip |= {"hyper_update", "hyper_lr", "mu", "alpha", "first_order", "hvp", "hvp_fraction",
                 "hyper_every", "anneal", "warmup", "online"}
    keys = list(OPTIONS)
    if method == "replay":  # where the schedule comes from
        skip |= {"step_size", "lr_decay", "t_0", "t_mult"}
        keys += ["from_run", "from_file", "stretch", "scale"]
    for key in keys:  # every value spelled out: defaults may change between versions
        if key in skip or key not in config:
            continue
        value = config[key]
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            if value:
                parts.append(flag)
        elif value is not None:
            parts += [flag, str(value)]
    if name:
        parts += ["--name", name]
    if experiment:
        parts += ["--experiment", experiment]
    return shlex.join(parts)
