"""adatune where people already train: PyTorch Lightning and the Hugging Face ``Trainer``.

Each framework's module imports it (``adatune.integrations.lightning``,
``adatune.integrations.huggingface``); a missing one is a
:class:`~adatune.errors.MissingExtra` naming the extra to install. HD also runs
as a plain ``torch.optim.Optimizer`` in any loop: :class:`adatune.HDOptimizer`.
docs/integrations.md has an example of each.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from adatune.catalog import TUNER_NAMES
from adatune.errors import ConfigError, MissingExtra


def require(modules: tuple[str, ...], what: str, extra: str) -> ModuleType:
    """The first of ``modules`` that imports, or one line naming the extra to install."""
    for name in modules:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise MissingExtra(f"{what} is not installed: pip install 'adatune[{extra}]'")


def tuner_name(name: Any) -> str:
    """``name`` as a tuner's canonical name (ConfigError naming ``tuner`` otherwise)."""
    key = name.strip().lower() if isinstance(name, str) else None
    if key not in TUNER_NAMES:
        raise ConfigError(f"Invalid tuner: {name!r} (choose from {', '.join(TUNER_NAMES)})")
    return key


def make_tuner(name: str, optimizer: Any, options: dict[str, Any]) -> Any:
    """The tuner ``name`` ("marthe", "rtho" or "hd") around ``optimizer``."""
    from adatune.methods.tuners import HD, MARTHE, RTHO

    return {"marthe": MARTHE, "rtho": RTHO, "hd": HD}[tuner_name(name)](optimizer, **options)
