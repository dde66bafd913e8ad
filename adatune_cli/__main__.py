"""``python -m adatune_cli`` is the ``adatune`` command."""

from adatune_cli.main import main

if __name__ == "__main__":
    main()
