"""The configuration of one training run: a frozen dataclass, validated on creation.

Every check that can fail on user input happens here (or in the data/model
lookups it calls), before a run is written to the store. This module stays
light: it reads the name tables of :mod:`adatune.catalog` and never imports
torch, so a configuration is checked before the training stack is loaded.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from adatune.catalog import (
    OPTIMIZER_NAMES,
    SCHEDULE_NAMES,
    TUNER_NAMES,
    canonical_dataset,
    canonical_network,
    canonical_schedule,
    check_compatible,
    dataset_spec,
)
from adatune.checks import MAX_EPOCHS, MAX_SEED, finite, whole
from adatune.errors import ConfigError
from adatune.imports import attr_name, check_import_path
from adatune.methods.horizon import (
    ANNEALS,
    DEFAULT_ANNEAL,
    DEFAULT_WARMUP,
    HORIZON_HYPER_LR,
    canonical_anneal,
    check_warmup,
)
from adatune.methods.hyper_update import (
    ADDITIVE,
    DEFAULT_HYPER_UPDATE,
    HYPER_UPDATES,
    SCALE_FREE_HYPER_LR,
    canonical_hyper_update,
    hyper_lr_range,
)
from adatune.methods.peers import PEER_NAMES, PEERS, canonical_peer
from adatune.methods.schedules import ScheduleConfig
from adatune.methods.tuners.settings import (
    DEFAULT_ALPHA,
    DEFAULT_HVP,
    DEFAULT_HVP_FRACTION,
    DEFAULT_HYPER_EVERY,
    DEFAULT_MU,
    HVP_MODES,
)
from adatune.running.losses import canonical_loss
from adatune.running.runtypes import DEFAULT_PRECISION, PRECISIONS, DivergenceRules

REPLAY = "replay"  # a recorded schedule replayed step for step (adatune.ReplayLR)
DEVICES = ("auto", "cpu", "cuda", "mps")

#: The built-in parts a run uses unless told otherwise (or given its own model and data).
DEFAULT_NETWORK = "mlp"
DEFAULT_DATASET = "digits"
DEFAULT_OPTIMIZER = "sgd"
DEFAULT_LR = {"sgd": 0.05, "adam": 1e-3, "adamw": 1e-3}
#: SGD's momentum unless told otherwise (a peer has its own default: PeerSpec.momentum).
DEFAULT_MOMENTUM = 0.9
# The hyper-LR of the online tuners by (update rule, tuner, optimizer family); with a
# horizon, the scale-free rule's is HORIZON_HYPER_LR. Scale-free: dimensionless, one
# value per tuner for every optimizer and task (chosen by benchmarks/robustness.py).
# Additive: in LR per unit of hypergradient, measured on the embedded task (digits, MLP,
# 15 epochs, 2 seeds: the LR visibly adapts and no run diverges); Adam needs a hyper-LR
# orders lower than SGD, and other tasks need others again.
DEFAULT_HYPER_LR = {
    **{(rule, method, family): SCALE_FREE_HYPER_LR[method]
       for rule in HYPER_UPDATES if rule != ADDITIVE
       for method in SCALE_FREE_HYPER_LR for family in ("sgd", "adam")},
    (ADDITIVE, "marthe", "sgd"): 1e-4, (ADDITIVE, "rtho", "sgd"): 1e-4,
    (ADDITIVE, "hd", "sgd"): 1e-3,
    (ADDITIVE, "marthe", "adam"): 1e-7, (ADDITIVE, "rtho", "adam"): 1e-7,
    (ADDITIVE, "hd", "adam"): 1e-6,
}

# Bounds of the whole-number options: what the code and the store can hold (seeds and
# epoch counts: adatune.checks).
#: Batch sizes and step intervals fit the 32-bit integers of kernels and the store.
MAX_BATCH_SIZE = 2**31 - 1
MAX_LOG_EVERY = 2**31 - 1


MAX_WORKERS = 256
MAX_WARMUP_STEPS = 2**31 - 1
MAX_HYPER_EVERY = 2**31 - 1


def _built_in(kind: str, name: str | None, custom_kind: str, custom: str | None,
              default: str, canonical) -> str | None:
    """The canonical built-in name, or None when the user's own (``custom``) replaces it."""
    if custom is None:
        return canonical(default if name is None else name)
    if name is not None:
        raise ConfigError(f"give {kind}= or {custom_kind}=, not both")
    return None


def canonical_method(name: str) -> str:
    """A tuner (marthe, rtho, hd), a baseline schedule or a peer optimizer, canonicalised."""
    if not isinstance(name, str):
        raise ConfigError(f"invalid method: {name!r}")
    key = name.strip().lower()
    if key in TUNER_NAMES or key == REPLAY:
        return key
    peer = canonical_peer(key)
    if peer is not None:
        return peer
    try:
        return canonical_schedule(key)
    except ConfigError:
        raise ConfigError(f"unknown method {name!r} (tuners: {', '.join(TUNER_NAMES)}; "
                          f"schedules: {', '.join(SCHEDULE_NAMES)}; "
                          f"peers: {', '.join(PEER_NAMES)}; {REPLAY})") from None


# What a field is for: a peer's record keeps only the fields that apply to it (the
# general ones and its PeerSpec.settings); warmup_steps is recorded for peers only.
_TUNER_FIELDS = ("hyper_update", "hyper_lr", "mu", "alpha", "first_order", "hvp",
                 "hvp_fraction", "hyper_every", "anneal", "warmup", "online")
_SCHEDULE_FIELDS = ("step_size", "lr_decay", "t_0", "t_mult")
_OPTIMIZER_FIELDS = ("momentum", "nesterov", "warmup_steps")
_REPLAY_FIELDS = ("from_run", "from_file", "stretch", "scale")
# The schedule fields each schedule reads (one not named here keeps all four).
_FIELDS_OF_SCHEDULE = {"constant": (), "staircase": ("step_size", "lr_decay"),
                       "exponential": ("lr_decay",), "cosine": ("t_0", "t_mult"), REPLAY: ()}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a run; stored as JSON with the run.

    A default that belongs to a part is read from the part (a tuner's from
    :mod:`adatune.methods.tuners.settings`, a schedule's from
    :class:`~adatune.methods.schedules.ScheduleConfig`, the divergence rule's
    from :class:`~adatune.running.runtypes.DivergenceRules`); the command line
    and :func:`adatune.fit` read theirs from these fields.
    """

    method: str = "marthe"
    network: str | None = None  # default: DEFAULT_NETWORK, unless ``model`` is given
    dataset: str | None = None  # default: DEFAULT_DATASET, unless ``data`` is given
    optimizer: str | None = None  # default: DEFAULT_OPTIMIZER (a peer is its own optimizer)
    lr: float | None = None  # default: DEFAULT_LR by optimizer, or the peer's own default
    momentum: float | None = None  # default: DEFAULT_MOMENTUM, or the peer's own default
    nesterov: bool = False
    weight_decay: float = 0.0
    epochs: int = 15
    batch_size: int = 64
    seed: int = 0
    device: str = "auto"
    precision: str = DEFAULT_PRECISION  # the forward's: fp32, or autocast to bf16 / fp16
    # hypergradient tuners
    hyper_update: str = DEFAULT_HYPER_UPDATE  # how h moves the LR: scale-free or additive
    hyper_lr: float | None = None  # default: DEFAULT_HYPER_LR online, else HORIZON_HYPER_LR
    mu: float | str = DEFAULT_MU
    alpha: float = DEFAULT_ALPHA
    first_order: bool = False
    grad_clip: float | None = None
    hvp: str = DEFAULT_HVP
    hvp_fraction: float = DEFAULT_HVP_FRACTION  # the HVP on this fraction of each batch
    hyper_every: int = DEFAULT_HYPER_EVERY  # HVP, validation gradient and LR move: 1 step in k
    anneal: str = DEFAULT_ANNEAL  # after the warm-up: cosine, linear or none
    warmup: float = DEFAULT_WARMUP  # the warm-up (and tuning) phase: a fraction of the run
    online: bool = False  # the papers' tuner: no horizon, the LR moved at every step
    # baseline schedules (epochs)
    step_size: int = ScheduleConfig.step_size
    lr_decay: float | None = ScheduleConfig.lr_decay  # None: the schedule's own default
    t_0: int = ScheduleConfig.t_0
    t_mult: int = ScheduleConfig.t_mult
    # replay (method "replay"): the schedule of a recorded run, or of a schedule file
    from_run: int | None = None
    from_file: str | None = None
    stretch: bool = False  # map the schedule onto this run's steps, linearly in progress
    scale: float = 1.0  # multiplies every replayed LR
    # peers: Schedule-Free's linear warm-up (steps; 0: none, its default)
    warmup_steps: int = 0
    # data and protocol
    data_dir: str | None = None
    download: bool = False
    val_fraction: float = 0.1
    val_source: str = "train"
    train_subset: float | None = None
    patience: int | None = None
    log_every: int = 10
    divergence_factor: float = DivergenceRules.loss_factor
    checkpoint_dir: str | None = None
    # the user's own parts: import paths module.path:name
    model: str | None = None  # a factory returning an nn.Module (instead of ``network``)
    data: str | None = None  # a factory returning (train, val[, test]) (instead of ``dataset``)
    loss: str = "cross_entropy"  # cross_entropy, mse, or an import path
    workers: int = 0  # DataLoader worker processes for datasets that are not tensors
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", canonical_method(self.method))
        canon = {
            "network": _built_in("network", self.network, "model", self.model,
                                 DEFAULT_NETWORK, canonical_network),
            "dataset": _built_in("dataset", self.dataset, "data", self.data, DEFAULT_DATASET,
                                 canonical_dataset),
            "model": None if self.model is None else check_import_path("model", self.model),
            "data": None if self.data is None else check_import_path("data", self.data),
            "loss": canonical_loss(self.loss),
            "optimizer": self._optimizer(),
        }
        try:
            canon["hyper_update"] = canonical_hyper_update(self.hyper_update)
        except ValueError:
            raise ConfigError(f"unknown hyper_update {self.hyper_update!r} "
                              f"(choose from: {', '.join(HYPER_UPDATES)})") from None
        for key, value in canon.items():
            object.__setattr__(self, key, value)
        peer = PEERS.get(self.method)
        family = "sgd" if self.optimizer == "sgd" else "adam"
        defaults = {
            "lr": DEFAULT_LR[self.optimizer] if peer is None else peer.lr,
            "momentum": DEFAULT_MOMENTUM if peer is None else peer.momentum,
            "hyper_lr": self._default_hyper_lr(family),
        }
        for key, value in defaults.items():
            if getattr(self, key) is None:
                object.__setattr__(self, key, value)
        finite("lr", self.lr, low=0, low_open=True)
        if peer is not None:
            self._check_peer_settings()
        if self.momentum is not None:
            low_open = self.method == "schedulefree-sgd"  # its momentum must be > 0
            finite("momentum", self.momentum, low=0, low_open=low_open, high=1, high_open=True)
        finite("weight_decay", self.weight_decay, low=0)
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0):
            raise ConfigError("nesterov needs optimizer='sgd' with a momentum > 0")
        whole("epochs", self.epochs, 1, MAX_EPOCHS)
        whole("batch_size", self.batch_size, 1, MAX_BATCH_SIZE)
        whole("seed", self.seed, 0, MAX_SEED)
        if self.device not in DEVICES:
            raise ConfigError(f"unknown device {self.device!r} (choose from: {', '.join(DEVICES)})")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {self.precision!r} "
                              f"(choose from: {', '.join(PRECISIONS)})")
        low, high = hyper_lr_range(self.hyper_update)
        bound = {} if math.isinf(high) else {"high": high}
        finite("hyper_lr", self.hyper_lr, low=low, **bound, rule=self.hyper_update)
        if isinstance(self.mu, str):
            if self.mu.strip().lower() != "auto":
                raise ConfigError(f"invalid mu: {self.mu!r} (a number in [0, 1] or 'auto')")
            object.__setattr__(self, "mu", "auto")
        elif self.mu < 0:  # the original's convention: negative means automatic
            object.__setattr__(self, "mu", "auto")
        else:
            finite("mu", self.mu, low=0, high=1)
        finite("alpha", self.alpha, low=low, **bound, rule=self.hyper_update)
        if self.grad_clip is not None:
            finite("grad_clip", self.grad_clip, low=0, low_open=True)
        if self.hvp not in HVP_MODES:
            raise ConfigError(f"unknown hvp {self.hvp!r} (choose from: {', '.join(HVP_MODES)})")
        whole("hyper_every", self.hyper_every, 1, MAX_HYPER_EVERY)
        if self.hyper_every != 1 and self.method not in ("marthe", "rtho"):
            raise ConfigError(f"hyper_every applies to marthe and rtho only (not {self.method}: "
                              "it has no HVP or validation gradient to space out)")
        finite("hvp_fraction", self.hvp_fraction, low=0, low_open=True, high=1)
        if self.hvp_fraction != 1 and self.method not in ("marthe", "rtho"):
            raise ConfigError(f"hvp_fraction applies to marthe and rtho only (not "
                              f"{self.method}: it has no Hessian-vector product)")
        try:
            object.__setattr__(self, "anneal", canonical_anneal(self.anneal))
        except ValueError:
            raise ConfigError(f"unknown anneal {self.anneal!r} "
                              f"(choose from: {', '.join(ANNEALS)})") from None
        try:
            object.__setattr__(self, "warmup", check_warmup(self.warmup))
        except ValueError:
            raise ConfigError(f"invalid warmup: {self.warmup!r} (a fraction of the run, "
                              "in (0, 1))") from None
        if not isinstance(self.online, bool):
            raise ConfigError(f"invalid online: {self.online!r} (True or False)")
        # the schedule's settings: their defaults and ranges are the schedule's own
        object.__setattr__(self, "lr_decay", self.schedule.lr_decay)
        whole("warmup_steps", self.warmup_steps, 0, MAX_WARMUP_STEPS)
        if self.warmup_steps and "warmup_steps" not in self._settings():
            takes = [p.name for p in PEERS.values() if "warmup_steps" in p.settings]
            raise ConfigError(f"warmup_steps applies to {' and '.join(takes)} only")
        self._check_replay()
        finite("val_fraction", self.val_fraction, low=0, low_open=True, high=1, high_open=True)
        if self.val_source not in ("train", "test"):
            raise ConfigError(f"invalid val_source: {self.val_source!r} (train or test)")
        if self.train_subset is not None:
            finite("train_subset", self.train_subset, low=0, low_open=True, high=1)
        if self.patience is not None:
            whole("patience", self.patience, 1, MAX_EPOCHS)
        whole("log_every", self.log_every, 1, MAX_LOG_EVERY)
        finite("divergence_factor", self.divergence_factor, low=1, low_open=True)
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) \
                or not 0 <= self.workers <= MAX_WORKERS:
            raise ConfigError(f"invalid workers: {self.workers!r} (must be a whole number in "
                              f"[0, {MAX_WORKERS}])")
        if self.network is not None and self.dataset is not None:
            check_compatible(self.network, dataset_spec(self.dataset))
        elif self.data is not None and self.network is not None \
                and not self.classification and self.network != "mlp":
            raise ConfigError(f"network={self.network!r} is a classifier; with "
                              f"loss={self.loss!r} use network='mlp' or your own model=")

    def _default_hyper_lr(self, family: str) -> float:
        if self.hyper_update != ADDITIVE and not self.online and self.method in TUNER_NAMES:
            return HORIZON_HYPER_LR
        return DEFAULT_HYPER_LR.get((self.hyper_update, self.method, family), 0.0)

    def _check_replay(self) -> None:
        sources = [name for name, value in (("from_run=", self.from_run),
                                            ("from_file=", self.from_file)) if value is not None]
        if self.method != REPLAY:
            given = sources + ["stretch=True"] * bool(self.stretch) \
                + ["scale="] * (self.scale != 1.0)
            if given:
                raise ConfigError(f"{given[0]} needs method={REPLAY!r}")
            return
        if len(sources) != 1:
            raise ConfigError(f"method={REPLAY!r} needs from_run=RUN_ID or from_file=FILE"
                              + (" (not both)" if sources else ""))
        if self.from_run is not None and (isinstance(self.from_run, bool)
                                          or not isinstance(self.from_run, int)
                                          or self.from_run < 1):
            raise ConfigError(f"invalid from_run: {self.from_run!r} (a run id)")
        finite("scale", self.scale, low=0, low_open=True)

    def _optimizer(self) -> str:
        """The optimizer's canonical name: a peer method is its own optimizer."""
        given = None if self.optimizer is None else str(self.optimizer).strip().lower()
        if self.method in PEERS:
            if given not in (None, self.method):
                raise ConfigError(f"optimizer {self.optimizer!r} does not apply to method "
                                  f"{self.method}: it is its own optimizer")
            return self.method
        given = given or "sgd"
        if given not in OPTIMIZER_NAMES:
            hint = (f"; {given} is a method: give it as the method" if canonical_peer(given)
                    else "")
            raise ConfigError(f"unknown optimizer {self.optimizer!r} "
                              f"(choose from: {', '.join(OPTIMIZER_NAMES)}{hint})")
        return given

    def _settings(self) -> tuple[str, ...]:
        """The optimizer settings this run's optimizer takes (a peer's PeerSpec.settings)."""
        peer = PEERS.get(self.method)
        return ("lr", "momentum", "nesterov", "weight_decay") if peer is None else peer.settings

    def _check_peer_settings(self) -> None:
        if self.momentum is not None and "momentum" not in self._settings():
            raise ConfigError(f"momentum does not apply to method {self.method}")
        if self.nesterov:
            raise ConfigError(f"nesterov does not apply to method {self.method}")

    @property
    def schedule(self) -> ScheduleConfig:
        """The baseline schedule's settings (a schedule method's; ``constant`` for the others)."""
        name = self.method if self.method in SCHEDULE_NAMES else "constant"
        return ScheduleConfig(name, step_size=self.step_size, lr_decay=self.lr_decay,
                              t_0=self.t_0, t_mult=self.t_mult)

    @property
    def is_peer(self) -> bool:
        """A peer optimizer (Prodigy, D-Adaptation, Schedule-Free, DoG, Mechanic): no tuner, no
        schedule."""
        return self.method in PEERS

    @property
    def optimizer_settings(self) -> dict[str, Any]:
        """What a peer's constructor gets (its PeerSpec.settings); empty for other methods."""
        if not self.is_peer:
            return {}
        return {name: getattr(self, name) for name in self._settings()}

    @property
    def network_label(self) -> str:
        """How runs name the network: the built-in name, or the model factory's name."""
        return (self.network or attr_name(self.model))[:64]

    @property
    def dataset_label(self) -> str:
        """How runs name the data: the built-in name, or the data factory's name."""
        return (self.dataset or attr_name(self.data))[:64]

    @property
    def classification(self) -> bool:
        """Class scores against class indices: accuracy is measured and picks the best epoch."""
        return self.loss == "cross_entropy"

    @property
    def is_tuner(self) -> bool:
        return self.method in TUNER_NAMES

    @property
    def kind(self) -> str:
        return "train" if self.is_tuner else "baseline"

    def to_dict(self) -> dict[str, Any]:
        """The run's recorded configuration: only the fields that apply to its method.

        A tuner's holds no schedule fields, a schedule's no tuner fields and only
        its own schedule's, a peer's only its own settings; only a replay's holds
        where its schedule comes from (``from_run``, ``from_file``, ``stretch``,
        ``scale``). :meth:`from_dict`
        gives the others their defaults, which the method never reads.
        """
        data = dataclasses.asdict(self)
        if self.is_peer:
            drop = {*_TUNER_FIELDS, *_SCHEDULE_FIELDS, *_REPLAY_FIELDS,
                    *(f for f in _OPTIMIZER_FIELDS if f not in self._settings())}
        elif self.is_tuner:
            drop = {*_SCHEDULE_FIELDS, *_REPLAY_FIELDS, "warmup_steps"}
        else:
            used = _FIELDS_OF_SCHEDULE.get(self.method, _SCHEDULE_FIELDS)
            drop = {*_TUNER_FIELDS, "warmup_steps", *(f for f in _SCHEDULE_FIELDS
                                                      if f not in used),
                    *(_REPLAY_FIELDS if self.method != REPLAY else ())}
        return {k: v for k, v in data.items() if k not in drop}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """A stored configuration; a tuner's stored before the rule was a choice is additive.

        (Other methods record no rule: they get the default, which they never read.)
        """
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        if values.get("method", cls.method) in TUNER_NAMES:
            values.setdefault("hyper_update", ADDITIVE)
        return cls(**values)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)
