"""Search spaces of sweeps: what each method may tune, and the space file format.

A space is plain data: :func:`parse_space` checks it, :func:`load_space` reads a
TOML or JSON file, :func:`space_toml` writes one, and :func:`sample` draws a
configuration from an Optuna trial (:mod:`adatune.search.sweep` runs the
trials). It maps parameter names (fields of
:class:`~adatune.running.config.TrainConfig`) to distributions, in the format
of space files (TOML or JSON, one table per parameter)::

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

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adatune._reading import read_text
from adatune.errors import ConfigError
from adatune.methods.hyper_update import ADDITIVE, DEFAULT_HYPER_UPDATE, HYPER_UPDATES, SCALE_FREE
from adatune.methods.peers import PEERS
from adatune.running.config import TrainConfig, canonical_method

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
# 0.98), D-Adapt SGD its momentum (0 by default), Mechanic SGD its base SGD's (0.9 by default).
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
    "mechanic-sgd": {"lr": _PEER_LR,
                     "momentum": {"type": "categorical", "choices": [0.0, 0.9]}},
    "mechanic-adam": {"lr": _PEER_LR},
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


def _shown(value: Any) -> str:
    """A value as an error line quotes it: at most 40 characters."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**30:
        return f"a {len(str(abs(value)))}-digit number"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _finite(value: Any) -> bool:
    """A number a double can hold (an integer too large for one is not)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _number(value: Any, where: str, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not _finite(value):
        raise ConfigError(f"{where}: {key} must be a finite number, not {_shown(value)}")
    return value


def _choice(value: Any, kind: str, where: str) -> Any:
    ok = {
        "real": not isinstance(value, bool) and isinstance(value, (int, float)),
        "whole": not isinstance(value, bool) and isinstance(value, int),
        "flag": isinstance(value, bool),
        "mu": (not isinstance(value, bool) and isinstance(value, (int, float)))
        or (isinstance(value, str) and value.strip().lower() == "auto"),
    }[kind]
    if ok and isinstance(value, (int, float)) and not isinstance(value, bool) \
            and not _finite(value):
        ok = False
    if not ok:
        expected = {"real": "numbers", "whole": "whole numbers", "flag": "true/false",
                    "mu": "numbers or \"auto\""}[kind]
        raise ConfigError(f"{where}: choices must be {expected}, not {_shown(value)}")
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


#: The largest space file read: a space is a few tables of a few numbers.
MAX_SPACE_BYTES = 2**20


def load_space(path: str | os.PathLike[str], *, method: str) -> Space:
    """Read a space file: ``.toml`` or ``.json`` (by its suffix).

    The path is opened as given (a pipe works); only a regular file or a pipe
    is read, and at most :data:`MAX_SPACE_BYTES` of it.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".json"):
        raise ConfigError(f"space file {path}: unknown format {suffix or '(no suffix)'!r} "
                          "(use a .toml or .json file)")
    text = read_text(path, f"space file {path}", MAX_SPACE_BYTES)
    if suffix == ".json":
        try:
            data = json.loads(text)
        except ValueError as exc:  # also an integer of more digits than Python reads
            raise ConfigError(f"space file {path} is not valid JSON: {exc}") from None
        except RecursionError:
            raise ConfigError(f"space file {path} is not valid JSON: nested too deeply") \
                from None
    else:
        toml = _tomllib()
        try:
            data = toml.loads(text)
        except ValueError as exc:  # TOMLDecodeError, or an integer of too many digits
            raise ConfigError(f"space file {path} is not valid TOML: {exc}") from None
        except RecursionError:
            raise ConfigError(f"space file {path} is not valid TOML: nested too deeply") \
                from None
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


__all__ = [
    "DEFAULT_SPACES",
    "MAX_SPACE_BYTES",
    "PARAM_TYPES",
    "PEER_SPACES",
    "TUNABLE",
    "Param",
    "Space",
    "check_space",
    "default_space",
    "describe_space",
    "load_space",
    "optimizer_family",
    "parse_space",
    "sample",
    "space_dict",
    "space_toml",
    "without",
]
