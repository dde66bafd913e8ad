"""The learning-rate-free optimizers users would pick instead of a tuner: the *peers*.

Prodigy (``prodigyopt``), D-Adaptation SGD and Adam (``dadaptation``),
Schedule-Free SGD and AdamW (``schedulefree``), DoG (``dog-optimizer``) and
Mechanic over SGD and AdamW (``mechanic-pytorch``), each from its maintained
package and used by its public API, with its authors' defaults. A peer is an
optimizer: :func:`build_peer` constructs it, and the loop trains it as it
trains SGD (no tuner, no schedule).

Beside torch's optimizer interface the loop asks every optimizer, through
:func:`optimizer_view`, two things, and peers answer them their own way:

* the *effective LR*: the step size each step actually used (recorded as the
  tuners' LR is). Prodigy and D-Adapt Adam: ``d * lr`` (times their bias
  correction when enabled, and D-Adapt Adam's ``layer_scale``); D-Adapt SGD:
  ``d * lr / |g_0|`` (its dual-averaging step size: ``d`` is a distance, and
  the step on the gradient is divided by the first gradient's norm); DoG: its
  step size ``eta``; Schedule-Free: its ``scheduled_lr`` (lr with warm-up);
  Mechanic: ``lr * sum(s)``, the base optimizer's LR times the sum of its
  scales as *after* the step (those scale that step's update).
  A torch optimizer's is ``param_groups[0]["lr"]``.
* train/eval mode switches: an optimizer with ``train()`` and ``eval()``
  methods (the Schedule-Free convention) is switched to ``train()`` before
  training steps and to ``eval()`` before evaluation and checkpoints, so that
  what is evaluated and saved are its averaged weights.

The loop also saves and restores the optimizer's state through the view
(:meth:`OptimizerView.optimizer_state`, :meth:`OptimizerView.load_optimizer_state`):
torch's ``state_dict()`` for every optimizer but Mechanic, whose own state
(``optimizer.state["_mechanic"]``) holds a dict keyed by the parameters
themselves, which torch leaves as they are. Its view keys those entries by the
parameter's index (torch's convention for the rest of the state) on save and
by the parameter again on load, so a checkpoint holds only plain tensors and
containers (``torch.load(weights_only=True)``) and a resumed run continues bit
for bit.

This module imports neither torch nor the peer packages at import time; a
package is imported when its optimizer is built.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import io
import math
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from adatune.errors import ConfigError


@dataclass(frozen=True)
class PeerSpec:
    """One peer: where it comes from and which settings of a run it takes.

    ``lr`` and ``momentum`` are the package's own constructor defaults (a test
    reads them from the installed package), but for a wrapper (below). ``settings``
    are the :class:`~adatune.running.config.TrainConfig` fields passed to the
    constructor; nothing else is (every other argument keeps the package's default).

    A *wrapper* (Mechanic) is a class factory, ``factory``, of the package
    applied to the ``torch.optim`` class ``wraps``; every optimizer it makes is
    an instance of the package's ``cls``. Its constructor is the base
    optimizer's, so its ``lr`` is the one its package documents and its
    ``momentum`` adatune's SGD's (each spec says why).
    """

    name: str
    package: str  # the PyPI distribution
    module: str  # the import name
    cls: str
    lr: float
    settings: tuple[str, ...]
    momentum: float | None = None
    title: str = ""
    wraps: str = ""  # a wrapper's base optimizer: a class of torch.optim
    factory: str = ""  # a wrapper's class factory in the package (called with the base class)


PEERS: dict[str, PeerSpec] = {p.name: p for p in (
    PeerSpec("prodigy", "prodigyopt", "prodigyopt", "Prodigy", 1.0,
             ("lr", "weight_decay"), title="Prodigy"),
    PeerSpec("dadapt-sgd", "dadaptation", "dadaptation", "DAdaptSGD", 1.0,
             ("lr", "momentum", "weight_decay"), momentum=0.0, title="D-Adaptation SGD"),
    PeerSpec("dadapt-adam", "dadaptation", "dadaptation", "DAdaptAdam", 1.0,
             ("lr", "weight_decay"), title="D-Adaptation Adam"),
    PeerSpec("schedulefree-sgd", "schedulefree", "schedulefree", "SGDScheduleFree", 1.0,
             ("lr", "momentum", "weight_decay", "warmup_steps"), momentum=0.9,
             title="Schedule-Free SGD"),
    PeerSpec("schedulefree-adamw", "schedulefree", "schedulefree", "AdamWScheduleFree", 0.0025,
             ("lr", "weight_decay", "warmup_steps"), title="Schedule-Free AdamW"),
    PeerSpec("dog", "dog-optimizer", "dog", "DoG", 1.0, ("lr", "weight_decay"), title="DoG"),
    # Mechanic (Cutkosky, Defazio & Mehta, NeurIPS 2023) learns the scale s of the updates of
    # any base optimizer and schedule. lr 1.0 is its README's (``mechanize(torch.optim.SGD)(
    # model.parameters(), lr=1.0)``; optax's mechanize says the same: a base LR of 1.0 and s
    # learns the scale); s_decay, betas and s_init stay its package's. SGD takes the run's
    # momentum, adatune's SGD default (0.9) unless given. The Adam peer wraps AdamW: the
    # paper's Adam-family experiments (BERT, ViT) mechanize AdamW, and with the run's default
    # weight decay (0) AdamW's step is Adam's bit for bit.
    PeerSpec("mechanic-sgd", "mechanic-pytorch", "mechanic_pytorch", "Mechanic", 1.0,
             ("lr", "momentum", "weight_decay"), momentum=0.9, title="Mechanic SGD",
             wraps="SGD", factory="mechanize"),
    PeerSpec("mechanic-adam", "mechanic-pytorch", "mechanic_pytorch", "Mechanic", 1.0,
             ("lr", "weight_decay"), title="Mechanic AdamW", wraps="AdamW",
             factory="mechanize"),
)}
PEER_NAMES = tuple(PEERS)


def canonical_peer(name: str) -> str | None:
    """The peer's canonical name (``dadapt_sgd`` -> ``dadapt-sgd``), or None if not a peer."""
    key = name.strip().lower().replace("_", "-")
    return key if key in PEERS else None


def missing_message(name: str) -> str | None:
    """Why peer ``name`` cannot be built here (its package is not installed), or None."""
    spec = PEERS[name]
    try:
        found = importlib.util.find_spec(spec.module) is not None
    except (ImportError, ValueError):
        found = False
    if found:
        return None
    return (f"method {name} needs the {spec.package} package, which is not installed "
            f"(pip install {spec.package})")


def check_available(name: str) -> None:
    """ConfigError when peer ``name``'s package is not installed (nothing is imported)."""
    message = missing_message(name)
    if message:
        raise ConfigError(message)


def peer_class(name: str) -> type:
    """The optimizer class of peer ``name``, importing its package (a wrapper's: the same
    class on every call in a process)."""
    spec = PEERS[name]
    check_available(name)
    try:
        module = importlib.import_module(spec.module)
    except ImportError as exc:
        raise ConfigError(f"method {name}: the {spec.package} package does not import: "
                          f"{exc}") from None
    if spec.factory:
        return _wrapped(spec.module, spec.factory, spec.wraps)
    return getattr(module, spec.cls)


@functools.cache
def _wrapped(module: str, factory: str, wraps: str) -> type:
    import torch

    return getattr(importlib.import_module(module), factory)(getattr(torch.optim, wraps))


def build_peer(name: str, params: Iterable[Any], **settings: Any) -> Any:
    """Peer ``name`` over ``params``, with ``settings`` (among its ``PeerSpec.settings``).

    A setting not given is the peer's default: the package's own, and for a
    wrapper (whose constructor is its base optimizer's) its spec's ``lr`` and
    ``momentum`` and no weight decay, as a run of it gets (AdamW's own default
    decay is 0.01). Whatever a package prints while it is built (Prodigy
    announces decoupled weight decay on stdout) is swallowed: the library does
    not print.
    """
    spec = PEERS[name]
    unknown = sorted(set(settings) - set(spec.settings))
    if unknown:
        raise ConfigError(f"method {name} does not take {', '.join(unknown)}")
    if spec.wraps:
        defaults = {"lr": spec.lr, "momentum": spec.momentum, "weight_decay": 0.0}
        settings = {**{k: v for k, v in defaults.items() if k in spec.settings}, **settings}
    cls = peer_class(name)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return cls(params, **settings)
    except ValueError as exc:
        raise ConfigError(f"invalid settings for {name}: {exc}") from None


def _loaded_class(module: str, cls: str) -> type | None:
    """A class of an already imported module: an optimizer of a package never imported
    cannot be an instance of it, so nothing is imported just to ask."""
    mod = sys.modules.get(module)
    found = getattr(mod, cls, None) if mod is not None else None
    return found if isinstance(found, type) else None


def _base_class(optimizer: Any) -> type | None:
    """The ``torch.optim`` class a wrapper's optimizer subclasses (``mechanize`` makes a new
    class per call, over the class it is given)."""
    return next((c for c in type(optimizer).__mro__[1:]
                 if c.__module__.startswith("torch.optim")), None)


def peer_name(optimizer: Any) -> str | None:
    """Which peer ``optimizer`` is (``"prodigy"``, ...), or None.

    A wrapper's optimizer is its peer when it wraps that peer's base class itself
    (Mechanic over ``torch.optim.Adam`` is no peer: ``mechanic-adam`` wraps AdamW).
    """
    for spec in PEERS.values():
        cls = _loaded_class(spec.module, spec.cls)
        if cls is None:
            continue
        if spec.wraps:
            import torch

            if isinstance(optimizer, cls) \
                    and _base_class(optimizer) is getattr(torch.optim, spec.wraps):
                return spec.name
        elif type(optimizer) is cls:
            return spec.name
    return None


# ------------------------------------------------------------ the loop's view
class OptimizerView:
    """What the loop asks of an optimizer beyond torch's interface; torch's answers.

    Per step: :meth:`before_step`, the optimizer's ``step()``, then
    :meth:`after_step` returns the effective LR that step used. :meth:`lr` is
    the current LR (for a torch optimizer the one its next step uses; a
    schedule may have moved it since the last step). :meth:`train` and
    :meth:`eval` switch an optimizer that has such methods (the Schedule-Free
    convention); for others they do nothing.
    """

    #: Whether the optimizer sets its own step size (a tuner or schedule is not its default).
    adaptive = False

    def __init__(self, optimizer: Any) -> None:
        self.optimizer = optimizer
        self._pending = 0.0
        train, evaluate = getattr(optimizer, "train", None), getattr(optimizer, "eval", None)
        self.switches = callable(train) and callable(evaluate)

    @property
    def group(self) -> dict[str, Any]:
        return self.optimizer.param_groups[0]

    def lr(self) -> float:
        return float(self.group["lr"])

    def before_step(self) -> None:
        self._pending = self.lr()

    def after_step(self) -> float:
        return self._pending

    def state(self) -> dict[str, Any]:
        """What the view remembers beyond the optimizer's state (checkpointed with it)."""
        return {}

    def load(self, state: dict[str, Any] | None) -> None:
        """Restore :meth:`state` (None: an older checkpoint; nothing to restore)."""

    def optimizer_state(self) -> dict[str, Any]:
        """The optimizer's state as a checkpoint holds it: its ``state_dict()``."""
        return self.optimizer.state_dict()

    def load_optimizer_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`optimizer_state` into the optimizer."""
        self.optimizer.load_state_dict(state)

    def train(self) -> None:
        if self.switches:
            self.optimizer.train()

    def eval(self) -> None:
        if self.switches:
            self.optimizer.eval()


class _AdaptiveView(OptimizerView):
    """An optimizer that sets its own step size: :meth:`lr` is its latest step's.

    Before any step of this process, :meth:`lr` reads what the optimizer's
    state tells (:meth:`_state_lr`; 0 where it tells nothing yet).
    """

    adaptive = True

    def __init__(self, optimizer: Any) -> None:
        super().__init__(optimizer)
        self._last: float | None = None

    def lr(self) -> float:
        return self._state_lr() if self._last is None else self._last

    def state(self) -> dict[str, Any]:
        # Prodigy's and D-Adaptation's state holds d after the last step, not the d that
        # step used: a run resumed right after an epoch's last step records this one.
        return {"last_lr": self._last}

    def load(self, state: dict[str, Any] | None) -> None:
        if state and state.get("last_lr") is not None:
            self._last = float(state["last_lr"])

    def before_step(self) -> None:
        self._pending = self._next_lr()

    def after_step(self) -> float:
        self._last = self._used_lr()
        return self._last

    def _state_lr(self) -> float:
        return self._next_lr()

    def _next_lr(self) -> float:  # the step size the next step uses, where known before it
        return 0.0

    def _used_lr(self) -> float:  # the step size of the step just taken
        return self._pending


def _top_lr(optimizer: Any) -> float:
    # D-Adaptation and Prodigy scale every group by the largest group LR.
    return max(float(g["lr"]) for g in optimizer.param_groups)


class _DistanceAdamView(_AdaptiveView):
    """Prodigy and D-Adapt Adam: the step uses ``d * lr`` (``d`` as before the step)."""

    def _next_lr(self) -> float:
        g = self.group
        lr = _top_lr(self.optimizer) * float(g["d"]) * float(g.get("layer_scale", 1.0))
        if g.get("use_bias_correction"):
            beta1, beta2 = g["betas"]
            k = g["k"]
            lr *= math.sqrt(1 - beta2 ** (k + 1)) / (1 - beta1 ** (k + 1))
        return lr


class _DistanceSGDView(_AdaptiveView):
    """D-Adapt SGD: step size ``d * lr / |g_0|`` (``|g_0|`` is known after the first step)."""

    def before_step(self) -> None:
        self._pending = float(self.group["d"])

    def _next_lr(self) -> float:
        return self._step_size(float(self.group["d"]))

    def _used_lr(self) -> float:
        return self._step_size(self._pending)

    def _step_size(self, d: float) -> float:
        g0 = float(self.group.get("g0_norm", 0.0) or 0.0)
        return d * _top_lr(self.optimizer) / g0 if g0 > 0 else 0.0


class _DoGView(_AdaptiveView):
    """DoG: its step size ``eta``, set during each step (the mean over parameters: one
    value for DoG)."""

    def _state_lr(self) -> float:
        return self._used_lr()

    def _used_lr(self) -> float:
        etas = self.group.get("eta")
        if not etas:
            return 0.0
        return sum(float(e) for e in etas) / len(etas)


class _ScheduledView(_AdaptiveView):
    """Schedule-Free (any optimizer logging ``scheduled_lr``): lr with warm-up, as used."""

    def _state_lr(self) -> float:
        return self._used_lr()

    def _used_lr(self) -> float:
        return float(self.group["scheduled_lr"])


_MECHANIC = "_mechanic"  # Mechanic's key in optimizer.state


class _MechanicView(_AdaptiveView):
    """Mechanic (``mechanic_pytorch``): ``lr * sum(s)``, and its state saved by parameter index.

    A step runs the base optimizer's step, whose update ``u`` (``-lr`` times its
    direction) it adds to the offset ``delta`` from the starting point
    ``ref`` (``delta`` being the previous offset over ``sum(s) + eps``), then
    updates ``s`` and sets ``x = ref + sum(s) * delta``: the step's own update is
    scaled by ``s`` as after the step. (The same line also rescales the offset
    already travelled by ``s_new / (s_old + eps)``; that is no step size.) ``lr``
    is the base optimizer's group 0's as the step began (a schedule may move it).
    """

    def before_step(self) -> None:
        self._pending = float(self.group["lr"])

    def _used_lr(self) -> float:
        return self._pending * self._scale()

    def _state_lr(self) -> float:  # the latest step's s (0 before the first step)
        return float(self.group["lr"]) * self._scale()

    def _scale(self) -> float:
        import torch

        state = self.optimizer.state.get(_MECHANIC)
        return 0.0 if state is None else max(float(torch.sum(state["s"])), 0.0)

    def _params(self) -> list[Any]:  # in torch's order of state_dict() indices
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def optimizer_state(self) -> dict[str, Any]:
        import torch

        saved = self.optimizer.state_dict()
        own = saved["state"].get(_MECHANIC)
        if own is not None:
            index = {id(p): i for i, p in enumerate(self._params())}
            saved["state"] = {**saved["state"], _MECHANIC: {
                index[id(k)] if isinstance(k, torch.Tensor) else k: v for k, v in own.items()}}
        return saved

    def load_optimizer_state(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state)
        own = self.optimizer.state.get(_MECHANIC)
        if own is None:
            return
        params = self._params()
        if any(isinstance(k, int) and not 0 <= k < len(params) for k in own):
            raise ValueError(f"Mechanic's state names parameters this optimizer does not have "
                             f"({len(params)})")
        self.optimizer.state[_MECHANIC] = {
            params[k] if isinstance(k, int) else k: (
                {n: v.to(params[k].device) for n, v in entry.items()}
                if isinstance(k, int) else entry)
            for k, entry in own.items()}


_VIEWS = (
    ("prodigyopt", "Prodigy", _DistanceAdamView),
    ("dadaptation", "DAdaptAdam", _DistanceAdamView),
    ("dadaptation", "DAdaptSGD", _DistanceSGDView),
    ("dog", "DoG", _DoGView),
    ("mechanic_pytorch", "Mechanic", _MechanicView),
)


def optimizer_view(optimizer: Any) -> OptimizerView:
    """How the loop reads ``optimizer``'s effective LR and switches its mode (module doc)."""
    for module, cls_name, view in _VIEWS:
        cls = _loaded_class(module, cls_name)
        if cls is not None and isinstance(optimizer, cls):
            return view(optimizer)
    if "scheduled_lr" in optimizer.param_groups[0]:
        return _ScheduledView(optimizer)
    return OptimizerView(optimizer)


__all__ = [
    "PEERS",
    "PEER_NAMES",
    "OptimizerView",
    "PeerSpec",
    "build_peer",
    "canonical_peer",
    "check_available",
    "missing_message",
    "optimizer_view",
    "peer_class",
    "peer_name",
]
