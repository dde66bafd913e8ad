"""The ``adatune`` command: a thin Typer app over the library.

Starting it must stay cheap (``--help``, shell completion and the store
commands never load torch): command modules import the library's heavy parts
inside the command, after the input is checked.
"""

from __future__ import annotations

import os
import sys
import traceback
import warnings

import typer

import adatune
from adatune.errors import AdatuneError
from adatune.redact import mask_secrets, printable
from adatune.running import signals

app = typer.Typer(
    name="adatune",
    help="Tune a network's learning rate online from hypergradients and keep every run.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"adatune {adatune.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Show the version and exit."
    ),
) -> None:
    """Tune a network's learning rate online from hypergradients and keep every run."""


def _register() -> None:
    """Attach the command modules (each adds its commands to ``app``)."""
    from adatune_cli import commands  # noqa: F401


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(printable(mask_secrets(f"adatune: warning: {message}")), file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Entry point: every user error is one line on stderr and exit code 2.

    The library's errors name arguments (``epochs=30``); the line says the
    flags instead (``--epochs 30``).

    SIGTERM is handled as :mod:`adatune.running.signals` says (a run checkpoints and
    stops; the exit code is 143), SIGUSR1 checkpoints a run and goes on.
    """
    warnings.showwarning = _show_warning
    _register()
    try:
        with signals.handle_preemption():
            rv = app(args=argv, prog_name="adatune", standalone_mode=False)
    except typer.Exit as exc:
        return _exit(exc.exit_code)
    except typer.TyperException as exc:  # usage errors: bad option, bad value, ...
        msg = " ".join(exc.format_message().split())
        if not msg:  # bare `adatune`: the help was printed
            return _exit(0)
        owners = _owners(exc)
        if owners:  # `train --lr-scheduler`: say which command takes it
            msg = (f"No such option: {exc.option_name} for `{exc.ctx.command_path}`; it is an "
                   f"option of {' and '.join(f'`{o}`' for o in owners[:3])}")
        if not _follower():
            print(printable(mask_secrets(f"adatune: error: {msg}")), file=sys.stderr)
        return _exit(exc.exit_code or 2)
    except signals.Terminated as exc:
        if not _follower():
            print(printable(f"adatune: {exc}"), file=sys.stderr)
        return _exit(128 + exc.signum)
    except (typer.Abort, KeyboardInterrupt):
        if not _follower():
            print("adatune: aborted", file=sys.stderr)
        return _exit(130)
    except AdatuneError as exc:
        if os.environ.get("ADATUNE_DEBUG") and exc.__cause__ is not None:
            traceback.print_exception(exc.__cause__, file=sys.stderr)
        if not _follower():
            from adatune_cli._common import error_line  # the library names arguments

            print(printable(mask_secrets(f"adatune: error: {error_line(exc)}")), file=sys.stderr)
        return _exit(2)
    return _exit(rv if isinstance(rv, int) else 0)


def _owners(exc: Exception) -> list[str]:
    """The other commands that take the unknown option of ``exc`` (a usage error)."""
    option, ctx = getattr(exc, "option_name", None), getattr(exc, "ctx", None)
    if not option or ctx is None:
        return []
    here = ctx.command_path
    found: list[str] = []

    def walk(command, path: str) -> None:  # noqa: ANN001 - a click command
        subcommands = getattr(command, "commands", None)
        if subcommands:
            for name in sorted(subcommands):
                walk(subcommands[name], f"{path} {name}")
        elif path != here and any(option in p.opts or option in p.secondary_opts
                                  for p in command.params):
            found.append(path)

    root = ctx.find_root()
    walk(root.command, root.info_name or "adatune")
    return found


def _follower() -> bool:
    """A rank other than 0 of a torchrun launch: rank 0 prints the (same) error line."""
    return os.environ.get("RANK", "0").strip() not in ("", "0") \
        and os.environ.get("WORLD_SIZE", "1").strip() not in ("", "0", "1")


def _exit(code: int) -> int:
    sys.exit(code)
