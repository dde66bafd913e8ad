"""Running the `adatune` entry point in-process, for tests."""

from __future__ import annotations

from adatune_cli.main import main


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """Run `adatune ARGS` in-process; return (exit code, stdout, stderr)."""
    try:
        code = main(list(args))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err
