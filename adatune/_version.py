"""The installed distribution's version (read on first use of ``adatune.__version__``)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("adatune")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
