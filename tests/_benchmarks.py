"""A script of ``benchmarks/`` imported as a module, for the tests of its machinery."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(script: str, name: str) -> Iterator[ModuleType]:
    """``benchmarks/SCRIPT`` as module ``name`` for a fixture's life (the scripts import
    their sibling ``robustness``, which goes with it)."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]
    sys.modules.pop("robustness", None)
