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
