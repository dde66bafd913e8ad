"""``module.path:attr`` import paths: the user's own model, data and loss.

The convention of uvicorn and of entry points. The current directory is on the
import path, as with ``python -m``. Every failure is one :class:`ConfigError`
line naming the argument (``model='pkg:make'``), the path and what was wrong
(a ``sys.exit()`` in the user's code too: it does not end adatune);
the original exception is kept as ``__cause__`` (the CLI shows its traceback
with ``ADATUNE_DEBUG=1``).

This module imports nothing heavy itself: checking the *form* of a path is
cheap, and only :func:`load` imports the user's module.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import re
import sys
from collections.abc import Callable
from typing import Any

from adatune.errors import ConfigError

_PATH_RE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


def is_import_path(text: str) -> bool:
    """Whether ``text`` has the form ``module.path:attr``."""
    return isinstance(text, str) and bool(_PATH_RE.match(text.strip()))


def check_import_path(option: str, text: str) -> str:
    """``text`` stripped, or one ConfigError line (naming argument ``option``) if it is not
    ``module.path:attr``."""
    if not is_import_path(text):
        raise ConfigError(f"invalid {option}={text!r}: expected an import path "
                          "module.path:name (e.g. mypkg.models:make_net)")
    return text.strip()


def attr_name(path: str) -> str:
    """The last name of an import path: ``pkg.mod:make_net`` -> ``make_net``."""
    return path.rsplit(":", 1)[1].rsplit(".", 1)[-1]


def _cwd_on_path() -> None:
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


def _not_found(option: str, path: str, name: str) -> ConfigError:
    return ConfigError(f"cannot import {option}={path!r}: no module named {name!r} (is it on "
                       "the import path, or in the current directory?)")


def check_findable(option: str, path: str) -> None:
    """ConfigError (as :func:`load` words it) when the path's top-level package is not found.

    Looks the package up without importing anything, so that a mistyped module
    is refused before the training stack is loaded; whatever else can go wrong
    (a submodule, an attribute, the module's own errors) :func:`load` reports.
    """
    path = check_import_path(option, path)
    top = path.split(":", 1)[0].split(".", 1)[0]
    _cwd_on_path()
    try:
        found = importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        found = True  # unsure: let load() import it and say what is wrong
    if not found:
        raise _not_found(option, path, top)


def load(option: str, path: str) -> Any:
    """Import the object an import path names (the current directory on ``sys.path``)."""
    path = check_import_path(option, path)
    module_name, attrs = path.split(":", 1)
    _cwd_on_path()
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise _not_found(option, path, exc.name) from exc
        raise ConfigError(f"cannot import {option}={path!r}: {one_line(exc)}") from exc
    except SystemExit as exc:  # the user's module ended the process: its error, not ours
        raise ConfigError(f"cannot import {option}={path!r}: {exited(exc)}") from exc
    except Exception as exc:  # noqa: BLE001 - the user's module failed while importing
        raise ConfigError(f"cannot import {option}={path!r}: {one_line(exc)}") from exc
    for name in attrs.split("."):
        try:
            obj = getattr(obj, name)
        except AttributeError as exc:
            raise ConfigError(f"cannot import {option}={path!r}: {module_name} has no "
                              f"attribute {attrs!r}") from exc
    return obj


def load_callable(option: str, path: str) -> Callable[..., Any]:
    obj = load(option, path)
    if not callable(obj):
        raise ConfigError(f"{option}={path!r} is not callable (it is {_a(obj)})")
    return obj


def call(option: str, path: str, factory: Callable[..., Any], *args: Any,
         **kwargs: Any) -> Any:
    """Call the user's factory; its exception becomes one line naming it."""
    try:
        return factory(*args, **kwargs)
    except SystemExit as exc:  # sys.exit() in the user's code: its error, not adatune's exit
        raise ConfigError(f"{option}={path!r} {exited(exc)}") from exc
    except Exception as exc:  # noqa: BLE001 - the user's code failed
        raise ConfigError(f"{option}={path!r} raised {one_line(exc)}") from exc


def positional_arity(func: Callable[..., Any]) -> int | None:
    """How many positional arguments ``func`` takes (None: any number, or unknown)."""
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        return None
    count = 0
    for p in sig.parameters.values():
        if p.kind is p.VAR_POSITIONAL:
            return None
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            count += 1
    return count


def accepts_keyword(func: Callable[..., Any], name: str) -> bool:
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return False
    p = params.get(name)
    if p is not None and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
        return True
    return any(q.kind is q.VAR_KEYWORD for q in params.values())


def describe_type(obj: Any) -> str:
    """'a list', 'an int': how messages name what a factory returned."""
    return _a(obj)


def _a(obj: Any) -> str:
    name = type(obj).__name__
    return f"an {name}" if name[:1].lower() in "aeiou" else f"a {name}"


def exited(exc: SystemExit) -> str:
    """What a ``SystemExit`` from the user's code says: ``called sys.exit(0)``."""
    return f"called sys.exit({exc.code!r}), which adatune takes as an error in that code"


def one_line(exc: BaseException) -> str:
    """An exception as one line: its type and its message."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
