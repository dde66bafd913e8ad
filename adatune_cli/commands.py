"""Importing this module registers every subcommand on the app."""

# Each command module adds its commands to adatune_cli.main.app on import.
from adatune_cli import (  # noqa: F401
    bench,
    db,
    findalpha,
    report,
    runs,
    schedule,
    sweep,
    train,
)
