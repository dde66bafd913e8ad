"""``python -m adatune`` is the ``adatune`` command (``torchrun ... -m adatune train ...``)."""

from adatune_cli.main import main

if __name__ == "__main__":
    main()
