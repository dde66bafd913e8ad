"""Sweeps: draw configurations of one method at random (or by TPE) and train each one.

The protocol of the MARTHE paper's comparison: sample configurations from each
method's search space, train each with early stopping over several seeds, and
follow the best model found so far against time. Optuna does the sampling and
the bookkeeping of trials; its study lives in the store's own database, so that
every process pointed at the same store (one SQLite file on one machine, or one
PostgreSQL URL for many machines) shares it. Nothing here schedules work:
each worker asks the study for the next trial until the study has enough.

    from adatune.search.sweep import SweepConfig, run_sweep
    result = run_sweep(TrainConfig(method="marthe", epochs=30, patience=10),
                       SweepConfig("marthe", trials=20, seeds=3), store)

How trials, seeds and runs map
------------------------------
* One Optuna trial is one sampled configuration, trained once per seed: seeds
  ``base.seed, base.seed + 1, ..., base.seed + seeds - 1``, one after the other
  in the worker that asked for the trial.
* Every training is a normal run of the store: kind ``sweep``, experiment = the
  study name, name ``<study>/trial-<n>``. The run's config carries
  ``extra["sweep"] = {"study", "trial", "seed_index", "params"}`` (``params``:
  the sampled values). The trial's user attributes carry the run ids
  (``adatune_runs``), the sampled values (``adatune_values``), the runs'
  statuses (``adatune_statuses``) and the worker (``adatune_worker``).
* Objective (maximised): the mean over seeds of the best validation accuracy
  (with a loss other than cross-entropy: minus the best validation loss).
* Trial states: COMPLETE when every seed completed (early stopping included);
  PRUNED when a seed diverged or the sampled combination is invalid (final: it
  counts and is never retried); FAIL when interrupted (Ctrl-C) or crashed.
* ``trials`` counts the study's COMPLETE, PRUNED and RUNNING trials, over all
  workers: a worker asks for a trial only while fewer than ``trials`` count,
  and gives a trial back (FAIL, user attribute ``adatune_surplus``) when
  another worker took the last place at the same moment. FAIL trials do not
  count, so running the same command again fills the places of interrupted
  trials.
* A RUNNING trial whose worker is gone (its process died on this host, or all
  its runs stopped with no sign of life for ``STALE_AFTER_S`` seconds) is
  marked FAIL by the next worker that asks for a trial.

Search spaces
-------------
A space maps parameter names (fields of :class:`TrainConfig`) to distributions,
in the format of space files (TOML or JSON, one table per parameter)::

    [lr]
    type = "float"        # float | int | categorical
    low = 0.001
    high = 1.0
    log = true            # log-uniform (float and int)
    zero = false          # 0 is also a candidate (an extra yes/no choice first)

    [mu]
    type = "categorical"
    choices = ["auto", 0.99, 0.999]

:data:`DEFAULT_SPACES` holds each method's default space per hyper-LR update
rule (``scale-free``, ``additive``) and optimizer family (``sgd``; ``adam`` for
adam and adamw); a space file replaces it entirely.
Parameters not in the space keep the base configuration's value.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import random
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adatune._process import owner_record, process_may_be_alive
from adatune.errors import ConfigError, StoreError
from adatune.methods.hyper_update import ADDITIVE, DEFAULT_HYPER_UPDATE, HYPER_UPDATES, SCALE_FREE
from adatune.methods.peers import PEERS, check_available
from adatune.redact import mask_secrets
from adatune.running.config import MAX_SEED, TrainConfig, canonical_method, whole
from adatune.running.runtypes import Events, RunResult
from adatune.store.records import EpochRecord

if TYPE_CHECKING:
    from adatune.store import Store

# Spaces, configs and results are plain Python: the training stack (adatune.running.engine,
# torch), the store's SQL layer and Optuna are imported where a sweep runs.

SAMPLERS = ("random", "tpe")
DEFAULT_TRIALS = 20
DEFAULT_SEEDS = 3
#: Early stopping used by ``adatune sweep`` when ``--patience`` is not given.
DEFAULT_PATIENCE = 10
RUN_KIND = "sweep"
MAX_STUDY_NAME = 200
#: Bounds of a study's size: trials of the whole study, and seeds per trial.
MAX_TRIALS = 100_000
MAX_SEEDS = 1_000
STUDY_ATTR = "adatune"  # study user attribute: what defines the sweep
PARAM_TYPES = ("float", "int", "categorical")

# What each parameter is: a real number, a whole number, a flag, or mu (a number or "auto").
_VALUE_KINDS = {
    "lr": "real", "momentum": "real", "weight_decay": "real", "grad_clip": "real",
    "hyper_lr": "real", "alpha": "real", "lr_decay": "real",
    "batch_size": "whole", "step_size": "whole", "t_0": "whole", "t_mult": "whole",
    "warmup_steps": "whole",
    "nesterov": "flag", "first_order": "flag", "mu": "mu",
}
_COMMON = ("lr", "momentum", "nesterov", "weight_decay", "batch_size", "grad_clip")
#: The parameters a sweep of each method may tune (the others have no effect on it).
TUNABLE: dict[str, tuple[str, ...]] = {
    "marthe": (*_COMMON, "hyper_lr", "mu", "alpha", "first_order"),
    "rtho": (*_COMMON, "hyper_lr", "alpha", "first_order"),
    "hd": (*_COMMON, "hyper_lr", "alpha"),
    "constant": _COMMON,
    "staircase": (*_COMMON, "step_size", "lr_decay"),
    "exponential": (*_COMMON, "lr_decay"),
    "cosine": (*_COMMON, "t_0", "t_mult"),
    # a peer: its own settings (PeerSpec.settings), the batch size and gradient clipping
    **{name: (*spec.settings, "batch_size", "grad_clip") for name, spec in PEERS.items()},
}
# Fields that say where or how verbosely a run goes, not what it computes: workers of
# one study may differ in them.
_LOCAL_FIELDS = ("device", "data_dir", "download", "checkpoint_dir", "log_every", "extra")


# --------------------------------------------------------------------------- spaces


def _log(low: float, high: float, *, zero: bool = False) -> dict[str, Any]:
    spec: dict[str, Any] = {"type": "float", "low": low, "high": high, "log": True}
    if zero:
        spec["zero"] = True
    return spec


def _uniform(low: float, high: float) -> dict[str, Any]:
    return {"type": "float", "low": low, "high": high}


def _whole(low: int, high: int) -> dict[str, Any]:
    return {"type": "int", "low": low, "high": high}


_LR = {"sgd": _log(1e-3, 1.0), "adam": _log(1e-5, 1e-1)}
# Additive rule: hyper-LRs and alphas act on the LR's own scale (Adam's are about 1000x
# smaller). Scale-free rule: both are dimensionless, the same for every optimizer.
_HYPER_LR = {
    (ADDITIVE, "sgd"): _log(1e-6, 1e-2), (ADDITIVE, "adam"): _log(1e-9, 1e-5),
    (SCALE_FREE, "sgd"): _log(1e-3, 0.1), (SCALE_FREE, "adam"): _log(1e-3, 0.1),
}
_HD_HYPER_LR = {
    (ADDITIVE, "sgd"): _log(1e-5, 1e-1), (ADDITIVE, "adam"): _log(1e-8, 1e-4),
    (SCALE_FREE, "sgd"): _log(1e-3, 0.1), (SCALE_FREE, "adam"): _log(1e-3, 0.1),
}
_ALPHA = {
    (ADDITIVE, "sgd"): _log(1e-8, 1e-4, zero=True),
    (ADDITIVE, "adam"): _log(1e-11, 1e-7, zero=True),
    (SCALE_FREE, "sgd"): _log(1e-3, 0.3, zero=True),
    (SCALE_FREE, "adam"): _log(1e-3, 0.3, zero=True),
}
_MU = {"type": "categorical", "choices": ["auto", 0.99, 0.999]}
# Peers: lr scales the step size each estimates (1.0 is their authors' setting); Schedule-Free
# also has its warm-up (0 or 10 to 1000 steps) and its momentum beta (its README names 0.9 to
# 0.98), D-Adapt SGD its momentum (0 by default).
_PEER_LR = _log(0.1, 10.0)
_WARMUP = {"type": "int", "low": 10, "high": 1000, "log": True, "zero": True}
PEER_SPACES: dict[str, dict[str, dict[str, Any]]] = {
    "prodigy": {"lr": _PEER_LR},
    "dadapt-sgd": {"lr": _PEER_LR, "momentum": {"type": "categorical", "choices": [0.0, 0.9]}},
    "dadapt-adam": {"lr": _PEER_LR},
    "schedulefree-sgd": {"lr": _PEER_LR, "warmup_steps": _WARMUP,
                         "momentum": {"type": "categorical", "choices": [0.9, 0.95, 0.98]}},
    "schedulefree-adamw": {"lr": _log(2.5e-4, 2.5e-2), "warmup_steps": _WARMUP},
    "dog": {"lr": _PEER_LR},
}

#: The default search space of each method, per hyper-LR update rule and optimizer family
#: ("sgd"; "adam" for adam and adamw), in the format of space files.
DEFAULT_SPACES: dict[str, dict[str, dict[str, dict[str, dict[str, Any]]]]] = {
    rule: {
        family: {
            "marthe": {"lr": _LR[family], "hyper_lr": _HYPER_LR[rule, family],
                       "alpha": _ALPHA[rule, family], "mu": _MU},
            "rtho": {"lr": _LR[family], "hyper_lr": _HYPER_LR[rule, family],
                     "alpha": _ALPHA[rule, family]},
            "hd": {"lr": _LR[family], "hyper_lr": _HD_HYPER_LR[rule, family]},
            "constant": {"lr": _LR[family]},
            "staircase": {"lr": _LR[family], "step_size": _whole(1, 10),
                          "lr_decay": _uniform(0.1, 0.9)},
            "exponential": {"lr": _LR[family], "lr_decay": _uniform(0.8, 0.99)},
            "cosine": {"lr": _LR[family], "t_0": _whole(1, 10), "t_mult": _whole(1, 3)},
            **PEER_SPACES,  # a peer is its own optimizer: one space for either family
        }
        for family in ("sgd", "adam")
    }
    for rule in HYPER_UPDATES
}


@dataclass(frozen=True)
class Param:
    """One dimension of a search space (see the module doc for the file format)."""

    name: str
    type: str  # float | int | categorical
    low: float | None = None
    high: float | None = None
    log: bool = False
    zero: bool = False
    choices: tuple[Any, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The parameter as in a space file (without its name)."""
        if self.type == "categorical":
            return {"type": self.type, "choices": list(self.choices)}
        spec: dict[str, Any] = {"type": self.type, "low": self.low, "high": self.high}
        if self.log:
            spec["log"] = True
        if self.zero:
            spec["zero"] = True
        return spec

    def describe(self) -> str:
        """``lr: log-uniform [0.001, 1]`` and the like."""
        if self.type == "categorical":
            return f"{self.name}: one of {', '.join(_show(c) for c in self.choices)}"
        what = ("log-uniform" if self.log else "uniform") if self.type == "float" else (
            "integer, log scale" if self.log else "integer")
        text = f"{what} [{self.low:g}, {self.high:g}]"
        return f"{self.name}: {'0 or ' if self.zero else ''}{text}"


Space = tuple[Param, ...]


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def optimizer_family(optimizer: str) -> str:
    return "sgd" if optimizer.strip().lower() == "sgd" else "adam"


def default_space(method: str, optimizer: str = "sgd",
                  hyper_update: str = DEFAULT_HYPER_UPDATE) -> Space:
    """The documented default space of ``method`` for ``optimizer`` and the update rule."""
    method = canonical_method(method)
    data = DEFAULT_SPACES[hyper_update][optimizer_family(optimizer)][method]
    return parse_space(data, method=method, source=f"the default {method} space")


def _number(value: Any, where: str, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{where}: {key} must be a finite number, not {value!r}")
    return value


def _choice(value: Any, kind: str, where: str) -> Any:
    ok = {
        "real": not isinstance(value, bool) and isinstance(value, (int, float)),
        "whole": not isinstance(value, bool) and isinstance(value, int),
        "flag": isinstance(value, bool),
        "mu": (not isinstance(value, bool) and isinstance(value, (int, float)))
        or (isinstance(value, str) and value.strip().lower() == "auto"),
    }[kind]
    if ok and isinstance(value, float) and not math.isfinite(value):
        ok = False
    if not ok:
        expected = {"real": "numbers", "whole": "whole numbers", "flag": "true/false",
                    "mu": "numbers or \"auto\""}[kind]
        raise ConfigError(f"{where}: choices must be {expected}, not {value!r}")
    if kind in ("real", "mu") and isinstance(value, int):
        return float(value)
    if kind == "mu" and isinstance(value, str):
        return "auto"
    return value


def _parse_param(name: str, spec: Any, *, method: str, where: str) -> Param:
    here = f"{where}: {name}"
    if name not in _VALUE_KINDS:
        raise ConfigError(f"{where}: unknown parameter {name!r} "
                          f"(tunable for {method}: {', '.join(TUNABLE[method])})")
    if name not in TUNABLE[method]:
        raise ConfigError(f"{where}: {name!r} has no effect on {method} "
                          f"(tunable for {method}: {', '.join(TUNABLE[method])})")
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{here} must be a table such as "
                          "{type = \"float\", low = 0.001, high = 1.0, log = true}")
    kind = _VALUE_KINDS[name]
    ptype = spec.get("type")
    if ptype not in PARAM_TYPES:
        raise ConfigError(f"{here}: type must be one of {', '.join(PARAM_TYPES)}, not {ptype!r}")
    allowed = {"type", "choices"} if ptype == "categorical" else {"type", "low", "high", "log",
                                                                    "zero"}
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise ConfigError(f"{here}: unknown key {unknown[0]!r} for a {ptype} parameter "
                          f"(expected: {', '.join(sorted(allowed))})")
    if ptype == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, (list, tuple)) or not choices:
            raise ConfigError(f"{here}: choices must be a non-empty list")
        values = tuple(_choice(c, kind, here) for c in choices)
        if len(set(map(repr, values))) != len(values):
            raise ConfigError(f"{here}: choices repeat a value")
        return Param(name, "categorical", choices=values)
    if kind == "flag":
        raise ConfigError(f"{here} is true/false: use type = \"categorical\" with "
                          "choices = [false, true]")
    if ptype == "float" and kind == "whole":
        raise ConfigError(f"{here} is a whole number: use type = \"int\"")
    if ptype == "int" and kind in ("real", "mu"):
        raise ConfigError(f"{here} is a real number: use type = \"float\"")
    for key in ("low", "high"):
        if key not in spec:
            raise ConfigError(f"{here}: {key} is missing")
    low, high = _number(spec["low"], here, "low"), _number(spec["high"], here, "high")
    if ptype == "int":
        for key, value in (("low", low), ("high", high)):
            if not float(value).is_integer():
                raise ConfigError(f"{here}: {key} must be a whole number, not {value!r}")
        low, high = int(low), int(high)
    else:
        low, high = float(low), float(high)
    log, zero = spec.get("log", False), spec.get("zero", False)
    for key, value in (("log", log), ("zero", zero)):
        if not isinstance(value, bool):
            raise ConfigError(f"{here}: {key} must be true or false, not {value!r}")
    if not low < high:
        raise ConfigError(f"{here}: low ({low:g}) must be below high ({high:g})")
    if log and low <= 0:
        raise ConfigError(f"{here}: a log scale needs low > 0, not {low:g} "
                          "(add zero = true to allow exactly 0)")
    return Param(name, ptype, low=low, high=high, log=log, zero=zero)


def parse_space(data: Any, *, method: str, source: str = "the space") -> Space:
    """A space from its file form (a mapping of parameter name to table).

    Raises :class:`ConfigError` naming ``source`` and the problem.
    """
    method = canonical_method(method)
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a table of parameters, not {type(data).__name__}")
    if not data:
        raise ConfigError(f"{source}: no parameters (tunable for {method}: "
                          f"{', '.join(TUNABLE[method])})")
    return tuple(_parse_param(str(name), spec, method=method, where=source)
                 for name, spec in data.items())


def load_space(path: str | os.PathLike[str], *, method: str) -> Space:
    """Read a space file: ``.toml`` or ``.json`` (by its suffix)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".json"):
        raise ConfigError(f"space file {path}: unknown format {suffix or '(no suffix)'!r} "
                          "(use a .toml or .json file)")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the space file {path}: "
                          f"{exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"space file {path} is not UTF-8 text") from None
    if suffix == ".json":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"space file {path} is not valid JSON: {exc}") from None
    else:
        toml = _tomllib()
        try:
            data = toml.loads(text)
        except toml.TOMLDecodeError as exc:
            raise ConfigError(f"space file {path} is not valid TOML: {exc}") from None
    return parse_space(data, method=method, source=f"space file {path}")


def _tomllib() -> Any:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            raise ConfigError("TOML space files need Python 3.11 or the tomli package; "
                              "use a .json space file") from None
    return tomllib


def space_dict(space: Space) -> dict[str, dict[str, Any]]:
    """The space in its file form (what a JSON space file holds)."""
    return {p.name: p.to_dict() for p in space}


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    return "[" + ", ".join(_toml_value(v) for v in value) + "]"


def space_toml(space: Space, *, header: str = "") -> str:
    """The space as a TOML space file (``header`` becomes comment lines on top)."""
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    for p in space:
        lines += ["", f"[{p.name}]"]
        lines += [f"{key} = {_toml_value(value)}" for key, value in p.to_dict().items()]
    return "\n".join(lines).lstrip("\n") + "\n"


def describe_space(space: Space) -> str:
    """One line: ``lr: log-uniform [0.001, 1]; mu: one of auto, 0.99, 0.999``."""
    return "; ".join(p.describe() for p in space)


def without(space: Space, names: Sequence[str]) -> Space:
    """The space without the parameters in ``names`` (they keep the base config's value)."""
    drop = set(names)
    return tuple(p for p in space if p.name not in drop)


def check_space(space: Space, base: TrainConfig) -> None:
    """Every bound and choice must make a valid config of ``base`` (ConfigError otherwise)."""
    for p in space:
        if p.name not in TUNABLE[base.method]:
            raise ConfigError(f"{p.name!r} has no effect on {base.method}")
        candidates = list(p.choices) if p.type == "categorical" else [p.low, p.high]
        if p.zero:
            candidates.append(0)
        for value in candidates:
            try:
                base.replace(**{p.name: value})
            except ConfigError as exc:
                raise ConfigError(f"search space: {p.name} = {_show(value)} is not allowed "
                                  f"({exc})") from None


def sample(trial: Any, space: Space) -> dict[str, Any]:
    """Draw one configuration from an Optuna trial: ``{field: value}`` for TrainConfig.

    A parameter with ``zero`` is first a yes/no choice ``<name>_is_zero``.
    """
    values: dict[str, Any] = {}
    for p in space:
        if p.zero and trial.suggest_categorical(f"{p.name}_is_zero", [False, True]):
            values[p.name] = 0 if p.type == "int" else 0.0
        elif p.type == "float":
            values[p.name] = trial.suggest_float(p.name, p.low, p.high, log=p.log)
        elif p.type == "int":
            values[p.name] = trial.suggest_int(p.name, int(p.low), int(p.high), log=p.log)
        else:
            values[p.name] = trial.suggest_categorical(p.name, list(p.choices))
    return values


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class SweepConfig:
    """What to sweep: the method, the budget, the sampler and the study.

    ``trials`` counts trials of the whole study (all workers); ``seeds`` runs per
    trial; ``timeout`` (seconds) stops this worker from starting new trials;
    ``space`` defaults to :func:`default_space` for the base config's optimizer;
    ``study`` defaults to ``sweep-<method>``.
    """

    method: str
    trials: int = DEFAULT_TRIALS
    seeds: int = DEFAULT_SEEDS
    sampler: str = "random"
    study: str | None = None
    timeout: float | None = None
    space: Space | None = None

    def __post_init__(self) -> None:
        method = canonical_method(self.method)
        if method not in TUNABLE:
            raise ConfigError(f"sweep has no search space for {method} (replay a learned "
                              "schedule with `adatune baseline --lr-scheduler replay`)")
        object.__setattr__(self, "method", method)
        whole("trials", self.trials, 1, MAX_TRIALS)
        whole("seeds", self.seeds, 1, MAX_SEEDS)
        sampler = str(self.sampler).strip().lower()
        if sampler not in SAMPLERS:
            raise ConfigError(f"unknown sampler {self.sampler!r} (choose from: "
                              f"{', '.join(SAMPLERS)})")
        object.__setattr__(self, "sampler", sampler)
        study = f"sweep-{method}" if self.study is None else str(self.study).strip()
        if not study or len(study) > MAX_STUDY_NAME:  # run names add "/trial-<n>"
            raise ConfigError(f"invalid study name {self.study!r} "
                              f"(1 to {MAX_STUDY_NAME} characters)")
        object.__setattr__(self, "study", study)
        if self.timeout is not None and not (
            isinstance(self.timeout, (int, float)) and math.isfinite(self.timeout)
            and self.timeout > 0
        ):
            raise ConfigError(f"invalid timeout: {self.timeout!r} (seconds, > 0)")
        if self.space is not None:
            object.__setattr__(self, "space", tuple(self.space))
            if not self.space:
                raise ConfigError("the search space is empty: nothing to sample")
            for p in self.space:
                if p.name not in TUNABLE[method]:
                    raise ConfigError(f"{p.name!r} has no effect on {method}")

    def check_seeds(self, base: TrainConfig) -> None:
        """The seeds of a trial, base.seed ... base.seed + seeds - 1, must all be valid."""
        if base.seed + self.seeds - 1 > MAX_SEED:
            raise ConfigError(f"invalid seed: {base.seed} with {self.seeds} seeds per trial "
                              f"goes past the largest seed {MAX_SEED}")

    def resolved_space(self, base: TrainConfig) -> Space:
        if self.space is not None:
            return self.space
        return default_space(self.method, base.optimizer, base.hyper_update)


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class TrialOutcome:
    """One trial: its sampled values, its runs, and how it ended.

    ``state``: ``complete``, ``diverged`` (a seed diverged), ``invalid`` (the
    sampled combination is not a valid config), ``interrupted`` or ``running``.
    ``value``: mean best validation accuracy over seeds (complete trials).
    """

    number: int
    state: str
    value: float | None
    values: dict[str, Any]
    run_ids: tuple[int, ...]
    statuses: tuple[str, ...] = ()
    reason: str | None = None


@dataclass(frozen=True)
class StudyStatus:
    """The whole study (all workers) at the end of this worker's sweep."""

    name: str
    counted: int  # complete + pruned + running: what ``trials`` counts
    complete: int
    pruned: int
    failed: int  # interrupted or crashed (surplus trials given back are not counted)
    running: int
    best: TrialOutcome | None


@dataclass(frozen=True)
class SweepResult:
    study: str
    method: str
    target: int  # the ``trials`` this worker aimed at
    stopped: str  # done | timeout | interrupted
    trials: tuple[TrialOutcome, ...]  # the trials this worker ran
    status: StudyStatus
    space: Space = field(default_factory=tuple)


class SweepEvents(Events):
    """Progress callbacks of a sweep; the run callbacks come from each run's training."""

    def trial_started(self, number: int, values: dict[str, Any], seeds: tuple[int, ...]) -> None:
        ...

    def trial_finished(self, outcome: TrialOutcome) -> None: ...


# --------------------------------------------------------------------------- the sweep


def run_sweep(base: TrainConfig, sweep: SweepConfig, store: Store, *,
              events: SweepEvents | None = None) -> SweepResult:
    """Run trials of ``sweep.study`` in this process until the study has ``sweep.trials``.

    ``base`` gives every value the space does not sample (its ``seed`` is the
    first seed; its ``patience`` the early stopping). The study is created in
    ``store``'s database on first use; workers that join it must sweep the same
    method, space, seeds, sampler and base config (ConfigError otherwise).
    Ctrl-C ends the current run as ``interrupted``, marks its trial FAIL and
    returns with ``stopped="interrupted"``.
    """
    import optuna

    if base.method != sweep.method:
        raise ConfigError(f"the base configuration is for {base.method}, the sweep for "
                          f"{sweep.method}")
    sweep.check_seeds(base)
    space = sweep.resolved_space(base)
    check_space(space, base)
    if base.is_peer:  # before the study is created
        check_available(base.method)
    events = events or SweepEvents()
    storage = _storage(store)
    study = _open_study(storage, sweep, base, space, store)
    started = time.monotonic()
    outcomes: list[TrialOutcome] = []
    stopped = "done"
    trial = None
    try:
        while True:
            if sweep.timeout is not None and time.monotonic() - started >= sweep.timeout:
                stopped = "timeout"
                break
            _fail_stale_trials(study, store)
            if _count(study) >= sweep.trials:
                break
            trial = study.ask()
            trial.set_user_attr("adatune_worker", owner_record())
            if _count(study, before=trial.number) >= sweep.trials:
                trial.set_user_attr("adatune_surplus", True)
                _tell(study, trial, optuna.trial.TrialState.FAIL)
                trial = None
                break
            outcome = _run_trial(study, trial, base, sweep, space, store, events)
            trial = None
            outcomes.append(outcome)
            events.trial_finished(outcome)
            if outcome.state == "interrupted":
                stopped = "interrupted"
                break
    except KeyboardInterrupt:
        stopped = "interrupted"
        if trial is not None:
            _tell(study, trial, optuna.trial.TrialState.FAIL)
    return SweepResult(study=sweep.study, method=sweep.method, target=sweep.trials,
                       stopped=stopped, trials=tuple(outcomes), status=study_status(study),
                       space=space)


class _TrialEvents(Events):
    """Forwards to the caller's events; records each new run id on the trial."""

    def __init__(self, trial: Any, events: Events, run_ids: list[int]) -> None:
        self.trial, self.events, self.run_ids = trial, events, run_ids

    def run_started(self, run_id: int, config: TrainConfig, *, steps_per_epoch: int,
                    start_epoch: int) -> None:
        self.run_ids.append(run_id)
        self.trial.set_user_attr("adatune_runs", list(self.run_ids))
        self.events.run_started(run_id, config, steps_per_epoch=steps_per_epoch,
                                start_epoch=start_epoch)

    def step_done(self, epoch: int, batch: int, loss: float, lr: float,
                  mu: float | None) -> None:
        self.events.step_done(epoch, batch, loss, lr, mu)

    def epoch_done(self, record: EpochRecord) -> None:
        self.events.epoch_done(record)


def _run_trial(study: Any, trial: Any, base: TrainConfig, sweep: SweepConfig, space: Space,
               store: Store, events: SweepEvents) -> TrialOutcome:
    from optuna.trial import TrialState

    from adatune.running.engine import train

    values = sample(trial, space)
    trial.set_user_attr("adatune_values", values)
    seeds = tuple(base.seed + k for k in range(sweep.seeds))
    try:
        config = base.replace(**values)
    except ConfigError as exc:  # e.g. nesterov sampled with momentum 0
        trial.set_user_attr("adatune_invalid", str(exc))
        _tell(study, trial, TrialState.PRUNED)
        return TrialOutcome(trial.number, "invalid", None, values, (), reason=str(exc))
    events.trial_started(trial.number, values, seeds)
    run_ids: list[int] = []
    results: list[RunResult] = []
    tracker = _TrialEvents(trial, events, run_ids)
    try:
        for k, seed in enumerate(seeds):
            extra = {**config.extra, "sweep": {"study": sweep.study, "trial": trial.number,
                                               "seed_index": k, "params": values}}
            result = train(config.replace(seed=seed, extra=extra), store,
                           name=f"{sweep.study}/trial-{trial.number}",
                           experiment=sweep.study, kind=RUN_KIND, events=tracker)
            results.append(result)
            trial.set_user_attr("adatune_statuses", [r.status for r in results])
            if result.status == "interrupted":
                break
    except BaseException:
        _tell(study, trial, TrialState.FAIL)
        raise
    statuses = tuple(r.status for r in results)
    ids = tuple(r.run_id for r in results)
    if "interrupted" in statuses:
        _tell(study, trial, TrialState.FAIL)
        return TrialOutcome(trial.number, "interrupted", None, values, ids, statuses,
                            reason=next(r.reason for r in results if r.status == "interrupted"))
    # The objective: validation accuracy, or minus the validation loss without accuracies.
    bests = [r.best_val_acc if config.classification
             else (None if r.best_val_loss is None else -r.best_val_loss) for r in results]
    if "diverged" in statuses or any(b is None or not math.isfinite(b) for b in bests):
        reason = next((r.reason for r in results if r.status == "diverged"), None)
        _tell(study, trial, TrialState.PRUNED)
        return TrialOutcome(trial.number, "diverged", None, values, ids, statuses,
                            reason=reason or "no finite validation score")
    value = math.fsum(bests) / len(bests)
    _tell(study, trial, TrialState.COMPLETE, value)
    return TrialOutcome(trial.number, "complete", value, values, ids, statuses)


def _tell(study: Any, trial: Any, state: Any, value: float | None = None) -> None:
    """Finish a trial; one another worker already closed (as stale) stays as it is."""
    from optuna.exceptions import UpdateFinishedTrialError

    try:
        study.tell(trial, value, state=state, skip_if_finished=True)
    except UpdateFinishedTrialError:
        pass


# --------------------------------------------------------------------------- the study


def _counted_states() -> tuple[Any, ...]:
    from optuna.trial import TrialState

    return (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


def _count(study: Any, *, before: int | None = None) -> int:
    trials = study.get_trials(deepcopy=False, states=_counted_states())
    return sum(1 for t in trials if before is None or t.number < before)


def _storage(store: Store) -> Any:
    """Optuna's storage on the store's database, robust to several processes.

    Each storage call takes its own connection (no pool: nothing stays open
    between trials, which can last hours). SQLite waits for another process's
    write lock as long as the store does. Two workers creating Optuna's tables
    at the same moment may collide: that is retried.
    """
    import optuna
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError
    from sqlalchemy.pool import NullPool, StaticPool

    from adatune.store.connection import SQLITE_BUSY_TIMEOUT_S, sqlite_path, url_secrets

    kwargs: dict[str, Any] = {"poolclass": NullPool}
    if make_url(store.url).get_backend_name() == "sqlite":
        if sqlite_path(store.url) is None:  # in memory: one connection, or the tables vanish
            kwargs = {"poolclass": StaticPool, "connect_args": {"check_same_thread": False}}
        else:
            kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_S}
    # Optuna reads "{...}" in the URL as a template: escape braces (paths, passwords).
    url = store.url.replace("{", "{{").replace("}", "}}")
    last: Exception | None = None
    for attempt in range(6):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
        except (SQLAlchemyError, optuna.exceptions.StorageInternalError) as exc:
            last = exc
            time.sleep(0.1 * (attempt + 1) + random.random() * 0.3)
        except RuntimeError as exc:  # schema of another Optuna version
            reason = mask_secrets(" ".join(str(exc).split()), url_secrets(store.url))
            raise StoreError(f"cannot use Optuna's tables in {store.location}: {reason}") from None
    reason = mask_secrets(" ".join(str(getattr(last, "orig", None) or last).split()),
                          url_secrets(store.url))
    raise StoreError(f"cannot create Optuna's tables in {store.location}: {reason}")


def _definition(base: TrainConfig, sweep: SweepConfig, space: Space) -> dict[str, Any]:
    """What every worker of a study must agree on (JSON, as Optuna stores it)."""
    tuned = {p.name for p in space}
    config = {k: v for k, v in base.to_dict().items()
              if k not in _LOCAL_FIELDS and k not in tuned}
    return json.loads(json.dumps({
        "method": sweep.method, "seeds": sweep.seeds, "sampler": sweep.sampler,
        "space": space_dict(space), "config": config,
    }))


def _mismatch(name: str, stored: dict[str, Any], ours: dict[str, Any]) -> str | None:
    for key in ("method", "seeds", "sampler", "space"):
        if stored.get(key) != ours[key]:
            shown = {"space": "another search space"}.get(key)
            theirs = shown or f"{key} {stored.get(key)!r}"
            mine = "" if shown else f" (this command: {ours[key]!r})"
            return f"study {name!r} was started with {theirs}{mine}"
    theirs, mine = stored.get("config", {}), ours["config"]
    if "hyper_update" in mine:  # studies started before the rule was a choice: additive
        theirs = {"hyper_update": ADDITIVE, **theirs}
    for key in sorted(set(theirs) | set(mine)):
        if theirs.get(key) != mine.get(key):
            return (f"study {name!r} was started with {key} = {theirs.get(key)!r} "
                    f"(this command: {mine.get(key)!r})")
    return None


def _open_study(storage: Any, sweep: SweepConfig, base: TrainConfig, space: Space,
                store: Store) -> Any:
    import optuna

    if sweep.sampler == "tpe":
        with warnings.catch_warnings():  # constant_liar is "experimental" in Optuna 4
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            # constant_liar: running trials of other workers count as bad guesses, so
            # that workers do not all sample the same point.
            sampler: Any = optuna.samplers.TPESampler(constant_liar=True)
    else:
        sampler = optuna.samplers.RandomSampler()
    study = optuna.create_study(storage=storage, study_name=sweep.study, sampler=sampler,
                                direction="maximize", load_if_exists=True)
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise ConfigError(f"study {sweep.study!r} in {store.location} was not made by "
                          "adatune sweep (it minimises); give another --study")
    ours = _definition(base, sweep, space)
    # Trials first, then the marker: a worker writes its marker before its first trial,
    # so trials seen here mean the marker (if adatune made the study) is seen next.
    has_trials = bool(study.get_trials(deepcopy=False))
    stored = study.user_attrs.get(STUDY_ATTR)
    if stored is None:
        if has_trials:
            raise ConfigError(f"study {sweep.study!r} in {store.location} was not made by "
                              "adatune sweep; give another --study")
        study.set_user_attr(STUDY_ATTR, ours)
        stored = study.user_attrs.get(STUDY_ATTR)  # another worker may have written first
    problem = _mismatch(sweep.study, stored, ours)
    if problem:
        raise ConfigError(f"{problem}: run the same command on every worker, or give "
                          "another --study")
    return study


def _fail_stale_trials(study: Any, store: Store) -> None:
    """Mark FAIL the RUNNING trials whose worker is gone (see the module doc)."""
    from optuna.trial import TrialState

    from adatune.store import repository as _repository

    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get("adatune_worker")
        # This process runs no trial while it looks (one sweep per process at a time):
        # a RUNNING trial of its own was left by an earlier, aborted call.
        ours = worker == owner_record()
        gone = ours or not process_may_be_alive(worker)
        run_ids = t.user_attrs.get("adatune_runs") or []
        if not gone and run_ids:
            runs = store.list_runs(ids=run_ids)
            now = dt.datetime.now(dt.timezone.utc)
            beats = [r.heartbeat_at or r.ended_at or r.started_at for r in runs]
            gone = (bool(runs) and all(r.status != "running" for r in runs)
                    and all((now - b).total_seconds() > _repository.STALE_AFTER_S
                            for b in beats))
        if gone:
            _tell(study, t.number, TrialState.FAIL)


def _outcome(t: Any) -> TrialOutcome:
    from optuna.trial import TrialState

    attrs = t.user_attrs
    state = {TrialState.COMPLETE: "complete", TrialState.RUNNING: "running",
             TrialState.FAIL: "interrupted"}.get(t.state)
    if state is None:
        state = "invalid" if "adatune_invalid" in attrs else "diverged"
    return TrialOutcome(number=t.number, state=state, value=t.value,
                        values=dict(attrs.get("adatune_values") or t.params),
                        run_ids=tuple(attrs.get("adatune_runs") or ()),
                        statuses=tuple(attrs.get("adatune_statuses") or ()))


def study_status(study: Any) -> StudyStatus:
    """Counts of the study's trials by state, and its best trial."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    by_state = {s: 0 for s in TrialState}
    for t in trials:
        if t.state == TrialState.FAIL and t.user_attrs.get("adatune_surplus"):
            continue
        by_state[t.state] += 1
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    best = max(complete, key=lambda t: (t.value, -t.number)) if complete else None
    return StudyStatus(
        name=study.study_name,
        counted=sum(by_state[s] for s in _counted_states()),
        complete=by_state[TrialState.COMPLETE], pruned=by_state[TrialState.PRUNED],
        failed=by_state[TrialState.FAIL], running=by_state[TrialState.RUNNING],
        best=None if best is None else _outcome(best))


__all__ = [
    "DEFAULT_PATIENCE",
    "DEFAULT_SEEDS",
    "DEFAULT_SPACES",
    "DEFAULT_TRIALS",
    "SAMPLERS",
    "TUNABLE",
    "Param",
    "Space",
    "StudyStatus",
    "SweepConfig",
    "SweepEvents",
    "SweepResult",
    "TrialOutcome",
    "check_space",
    "default_space",
    "describe_space",
    "load_space",
    "parse_space",
    "run_sweep",
    "sample",
    "space_dict",
    "space_toml",
    "study_status",
    "without",
]
