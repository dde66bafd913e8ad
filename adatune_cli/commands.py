"""Importing this module registers every subcommand on the app."""

# Each command module adds its commands to adatune_cli.main.app on import.
