"""Exceptions the library raises for conditions a user can fix.

The CLI turns every :class:`AdatuneError` into one line on stderr and exit
code 2; anything else is a bug and keeps its traceback.
"""


class AdatuneError(Exception):
    """Base class: a problem with the user's input or environment."""


class ConfigError(AdatuneError, ValueError):
    """An invalid option value or an impossible combination of options."""


class DatasetError(AdatuneError):
    """A dataset cannot be found or read."""


class StoreError(AdatuneError):
    """The experiment store cannot be opened, created or migrated."""


class RunNotFound(StoreError):
    """No run with the given id in the store."""


class RunBusy(StoreError):
    """Another process holds or just took the run (resuming it, or still training it)."""


class CheckpointError(AdatuneError):
    """A checkpoint file cannot be read, or does not fit the run it should restore."""


class MissingExtra(AdatuneError, ImportError):
    """An optional package (an integration's framework) is not installed."""
