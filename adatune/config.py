"""The configuration of one training run: a frozen dataclass, validated on creation.

Every check that can fail on user input happens here (or in the data/model
lookups it calls), before a run is written to the store.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from adatune.data import canonical_dataset, dataset_spec
from adatune.errors import ConfigError
from adatune.imports import attr_name, check_import_path
from adatune.models import canonical_network, check_compatible
from adatune.schedules import SCHEDULE_NAMES, canonical_schedule

TUNER_NAMES = ("marthe", "rtho", "hd")
REPLAY = "replay"  # a recorded schedule replayed step for step (adatune.ReplayLR)
OPTIMIZER_NAMES = ("sgd", "adam", "adamw")
DEVICES = ("auto", "cpu", "cuda", "mps")
HVP_NAMES = ("exact", "finite-difference")

# Defaults measured on the embedded task (digits, MLP, 15 epochs, 2 seeds): the LR
# visibly adapts and no run diverges. Adam needs a hyper-LR orders lower than SGD.
DEFAULT_LR = {"sgd": 0.05, "adam": 1e-3, "adamw": 1e-3}
DEFAULT_HYPER_LR = {
    ("marthe", "sgd"): 1e-4, ("rtho", "sgd"): 1e-4, ("hd", "sgd"): 1e-3,
    ("marthe", "adam"): 1e-7, ("rtho", "adam"): 1e-7, ("hd", "adam"): 1e-6,
}
DEFAULT_LR_DECAY = {"staircase": 0.5, "exponential": 0.85}


MAX_WORKERS = 256
LOSS_NAMES = ("cross_entropy", "mse")
_LOSS_ALIASES = {"ce": "cross_entropy", "crossentropy": "cross_entropy",
                 "cross-entropy": "cross_entropy", "l2": "mse"}


def canonical_loss(name: str) -> str:
    """cross_entropy, mse, or an import path ``module:fn`` (a loss function or class)."""
    if not isinstance(name, str):
        raise ConfigError(f"invalid loss: {name!r}")
    key = name.strip()
    if ":" in key:
        return check_import_path("--loss", key)
    key = key.lower()
    key = _LOSS_ALIASES.get(key, key)
    if key not in LOSS_NAMES:
        raise ConfigError(f"unknown loss {name!r} (choose from: {', '.join(LOSS_NAMES)}, "
                          "or an import path module:fn)")
    return key


def _built_in(kind: str, name: str | None, custom_kind: str, custom: str | None,
              default: str, canonical) -> str | None:
    """The canonical built-in name, or None when the user's own (``custom``) replaces it."""
    if custom is None:
        return canonical(default if name is None else name)
    if name is not None:
        raise ConfigError(f"give --{kind} or --{custom_kind}, not both")
    return None


def canonical_method(name: str) -> str:
    """A tuner (marthe, rtho, hd) or a baseline schedule name, canonicalised."""
    key = name.strip().lower()
    if key in TUNER_NAMES or key == REPLAY:
        return key
    try:
        return canonical_schedule(key)
    except ConfigError:
        raise ConfigError(f"unknown method {name!r} (tuners: {', '.join(TUNER_NAMES)}; "
                          f"schedules: {', '.join(SCHEDULE_NAMES)}, {REPLAY})") from None


def _finite(name: str, value: float, *, low: float | None = None, low_open: bool = False,
            high: float | None = None, high_open: bool = False) -> None:
    ok = isinstance(value, (int, float)) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        lo = "" if low is None else ("(" if low_open else "[") + f"{low:g}"
        hi = "" if high is None else f"{high:g}" + (")" if high_open else "]")
        where = f" (must be in {lo or '(-inf'}, {hi or 'inf)'})" if (lo or hi) else ""
        raise ConfigError(f"invalid {name}: {value!r}{where}")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a run; stored as JSON with the run."""

    method: str = "marthe"
    network: str | None = None  # default: mlp, unless ``model`` is given
    dataset: str | None = None  # default: digits, unless ``data`` is given
    optimizer: str = "sgd"
    lr: float | None = None  # default: DEFAULT_LR by optimizer
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    epochs: int = 15
    batch_size: int = 64
    seed: int = 0
    device: str = "auto"
    # hypergradient tuners
    hyper_lr: float | None = None  # default: DEFAULT_HYPER_LR by method and optimizer
    mu: float | str = 0.99
    alpha: float = 0.0
    first_order: bool = False
    grad_clip: float | None = None
    hvp: str = "exact"
    # baseline schedules (epochs)
    step_size: int = 5
    lr_decay: float | None = None  # default: DEFAULT_LR_DECAY by schedule
    t_0: int = 2
    t_mult: int = 2
    # replay (method "replay"): the schedule of a recorded run, or of a schedule file
    from_run: int | None = None
    from_file: str | None = None
    stretch: bool = False  # map the schedule onto this run's steps, linearly in progress
    scale: float = 1.0  # multiplies every replayed LR
    # data and protocol
    data_dir: str | None = None
    download: bool = False
    val_fraction: float = 0.1
    val_source: str = "train"
    train_subset: float | None = None
    patience: int | None = None
    log_every: int = 10
    divergence_factor: float = 10.0
    checkpoint_dir: str | None = None
    # the user's own parts: import paths module.path:name
    model: str | None = None  # a factory returning an nn.Module (instead of ``network``)
    data: str | None = None  # a factory returning (train, val[, test]) (instead of ``dataset``)
    loss: str = "cross_entropy"  # cross_entropy, mse, or an import path
    workers: int = 0  # DataLoader worker processes for datasets that are not tensors
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        canon = {
            "method": canonical_method(self.method),
            "network": _built_in("network", self.network, "model", self.model, "mlp",
                                 canonical_network),
            "dataset": _built_in("dataset", self.dataset, "data", self.data, "digits",
                                 canonical_dataset),
            "model": None if self.model is None else check_import_path("--model", self.model),
            "data": None if self.data is None else check_import_path("--data", self.data),
            "loss": canonical_loss(self.loss),
            "optimizer": self.optimizer.strip().lower(),
        }
        for key, value in canon.items():
            object.__setattr__(self, key, value)
        if self.optimizer not in OPTIMIZER_NAMES:
            raise ConfigError(f"unknown optimizer {self.optimizer!r} "
                              f"(choose from: {', '.join(OPTIMIZER_NAMES)})")
        family = "sgd" if self.optimizer == "sgd" else "adam"
        defaults = {
            "lr": DEFAULT_LR[self.optimizer],
            "hyper_lr": DEFAULT_HYPER_LR.get((self.method, family), 0.0),
            "lr_decay": DEFAULT_LR_DECAY.get(self.method, 0.5),
        }
        for key, value in defaults.items():
            if getattr(self, key) is None:
                object.__setattr__(self, key, value)
        _finite("lr", self.lr, low=0, low_open=True)
        _finite("momentum", self.momentum, low=0, high=1, high_open=True)
        _finite("weight_decay", self.weight_decay, low=0)
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0):
            raise ConfigError("nesterov needs --optimizer sgd with a momentum > 0")
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"invalid {name}: {value!r} (must be a whole number >= 1)")
        if self.device not in DEVICES:
            raise ConfigError(f"unknown device {self.device!r} (choose from: {', '.join(DEVICES)})")
        _finite("hyper_lr", self.hyper_lr, low=0)
        if isinstance(self.mu, str):
            if self.mu.strip().lower() != "auto":
                raise ConfigError(f"invalid mu: {self.mu!r} (a number in [0, 1] or 'auto')")
            object.__setattr__(self, "mu", "auto")
        elif self.mu < 0:  # the original's convention: negative means automatic
            object.__setattr__(self, "mu", "auto")
        else:
            _finite("mu", self.mu, low=0, high=1)
        _finite("alpha", self.alpha, low=0)
        if self.grad_clip is not None:
            _finite("grad_clip", self.grad_clip, low=0, low_open=True)
        if self.hvp not in HVP_NAMES:
            raise ConfigError(f"unknown hvp {self.hvp!r} (choose from: {', '.join(HVP_NAMES)})")
        for name in ("step_size", "t_0", "t_mult"):
            if getattr(self, name) < 1:
                raise ConfigError(f"invalid {name}: {getattr(self, name)!r} (must be >= 1)")
        _finite("lr_decay", self.lr_decay, low=0, low_open=True, high=1)
        self._check_replay()
        _finite("val_fraction", self.val_fraction, low=0, low_open=True, high=1, high_open=True)
        if self.val_source not in ("train", "test"):
            raise ConfigError(f"invalid val_source: {self.val_source!r} (train or test)")
        if self.train_subset is not None:
            _finite("train_subset", self.train_subset, low=0, low_open=True, high=1)
        if self.patience is not None and self.patience < 1:
            raise ConfigError(f"invalid patience: {self.patience!r} (must be >= 1)")
        if self.log_every < 1:
            raise ConfigError(f"invalid log_every: {self.log_every!r} (must be >= 1)")
        _finite("divergence_factor", self.divergence_factor, low=1, low_open=True)
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) \
                or not 0 <= self.workers <= MAX_WORKERS:
            raise ConfigError(f"invalid workers: {self.workers!r} (must be a whole number in "
                              f"[0, {MAX_WORKERS}])")
        if self.network is not None and self.dataset is not None:
            check_compatible(self.network, dataset_spec(self.dataset))
        elif self.data is not None and self.network is not None \
                and not self.classification and self.network != "mlp":
            raise ConfigError(f"--network {self.network} is a classifier; with --loss "
                              f"{self.loss} use --network mlp or your own --model")

    def _check_replay(self) -> None:
        sources = [flag for flag, value in (("--from-run", self.from_run),
                                            ("--from-file", self.from_file)) if value is not None]
        if self.method != REPLAY:
            given = sources + ["--stretch"] * bool(self.stretch) \
                + ["--scale"] * (self.scale != 1.0)
            if given:
                raise ConfigError(f"{given[0]} needs --lr-scheduler replay")
            return
        if len(sources) != 1:
            raise ConfigError("--lr-scheduler replay needs --from-run RUN_ID or --from-file "
                              "FILE" + (" (not both)" if sources else ""))
        if self.from_run is not None and (isinstance(self.from_run, bool)
                                          or not isinstance(self.from_run, int)
                                          or self.from_run < 1):
            raise ConfigError(f"invalid from_run: {self.from_run!r} (a run id)")
        _finite("scale", self.scale, low=0, low_open=True)

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
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)
