"""Importing this module registers every subcommand on the app."""

# Each command module adds its commands to adatune_cli.main.app on import.
import adatune_cli.report  # noqa: F401
from adatune_cli import db  # noqa: F401
