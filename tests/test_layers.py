"""The layout shows the layers, and no module imports from a layer above its own.

Every import in the package counts, those inside functions too (a lazy import
is still a dependency). The layers, bottom up, and what each may import
besides itself:

* base: errors, checks, names, imports, redaction, the catalog of names, reading and
  writing the files a user names;
* store: the experiment store;
* methods (what moves the LR; a learned schedule is read from the store) and data
  (datasets, batches, networks);
* report (records to HTML) reads only the store;
* running: a run's configuration, assembly, loop, checkpoints, ranks;
* search and bench: made of runs;
* integrations: the tuners inside other frameworks' loops (Lightning, the
  Hugging Face Trainer), recording into the store;
* public: ``adatune`` itself and the module paths kept for users
  (``adatune.distributed``, ``adatune.replay``, ...);
* the command line, over all of it.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BASE = {"adatune._version", "adatune._lazy", "adatune._names", "adatune._durable",
        "adatune._reading", "adatune._process", "adatune.errors", "adatune.redact",
        "adatune.imports", "adatune.checks", "adatune.catalog"}
PUBLIC = {"adatune", "adatune.distributed", "adatune.replay",
          "adatune.signals", "adatune.checkpoint"}
MAY_IMPORT = {
    "base": {"base"},
    "store": {"base", "store"},
    "methods": {"base", "store", "methods"},  # a learned schedule is read from the store
    "data": {"base", "data"},
    "report": {"base", "store", "report"},
    "running": {"base", "store", "methods", "data", "running"},
    "search": {"base", "store", "methods", "running", "search"},
    "bench": {"base", "methods", "data", "running", "bench"},
    "integrations": {"base", "store", "methods", "data", "running", "integrations"},
    "public": {"base", "store", "methods", "data", "report", "running", "search", "bench",
               "integrations", "public"},
    "cli": {"base", "store", "methods", "data", "report", "running", "search", "bench",
            "integrations", "public", "cli"},
}


def layer(module: str) -> str:
    if module.startswith("adatune_cli") or module == "adatune.__main__":
        return "cli"
    if module in BASE:
        return "base"
    if module in PUBLIC:
        return "public"
    return module.split(".")[1]


def _modules() -> dict[str, Path]:
    found = {}
    for package in ("adatune", "adatune_cli"):
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = _modules()


def _imports(module: str, path: Path) -> set[str]:
    """The package's modules ``module`` imports (``from adatune import x``: the module x, or
    the package itself for one of its public names)."""
    out = set()
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")[: len(module.split(".")) - node.level + is_package]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                whole = f"{base}.{alias.name}"
                out.add(whole if whole in MODULES else base)
    return {m for m in out if m.split(".")[0] in ("adatune", "adatune_cli")}


def test_the_package_has_the_layers_it_says() -> None:
    layers = {layer(m) for m in MODULES}
    assert layers == set(MAY_IMPORT), layers
    flat = sorted(m for m, path in MODULES.items() if m.startswith("adatune.")
                  and m.count(".") == 1 and path.name != "__init__.py"
                  and layer(m) not in ("base", "public", "cli"))
    assert flat == [], f"modules outside a layer's folder: {flat}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_imports_from_a_layer_above_its_own(module: str) -> None:
    allowed = MAY_IMPORT[layer(module)]
    upward = sorted(m for m in _imports(module, MODULES[module]) if layer(m) not in allowed)
    assert upward == [], f"{module} ({layer(module)}) imports {upward}"


_FLAG = re.compile(r"(?<![\w-])--[a-z]")


def _message_strings(node: ast.AST) -> list[str]:
    return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant)
            and isinstance(n.value, str)]


@pytest.mark.parametrize("module", sorted(m for m in MODULES if layer(m) != "cli"))
def test_library_errors_name_arguments_not_flags(module: str) -> None:
    """The library raises with argument names (``epochs=``); the command maps them to flags.
    A whole command quoted as advice (```adatune db upgrade --store X```) is not a flag."""
    tree = ast.parse(MODULES[module].read_text())
    flags = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) and node.exc is not None:
            text = "".join(_message_strings(node.exc))
            text = re.sub(r"`[^`]*`", "", text)
            flags += _FLAG.findall(text)
    assert flags == [], f"{module} raises errors that name command-line flags"


def test_every_package_ships_in_the_wheel() -> None:
    """A new folder of the package must be in pyproject.toml's list, or a wheel leaves it out."""
    import sys

    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        tomllib = pytest.importorskip("tomli")
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
                 ["packages"])
    packages = {m for m, path in MODULES.items() if path.name == "__init__.py"}
    assert packages <= listed, sorted(packages - listed)
