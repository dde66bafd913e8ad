"""Run adatune on many processes: ``from adatune.distributed import launch``.

The public path of :mod:`adatune.running.distributed`, where the code lives.
Under ``torchrun`` call :func:`launch` (it joins the process group from the
environment ``torchrun`` sets, and handles SIGTERM and SIGUSR1 as every rank
agrees), then :func:`adatune.fit` on every rank; docs/distributed.md says more.
"""

from adatune.running.distributed import (
    DEFAULT_TIMEOUT_S,
    TIMEOUT_ENV,
    LazyStore,
    RankFailure,
    Terminated,
    launch,
    timeout_s,
)

__all__ = ["DEFAULT_TIMEOUT_S", "TIMEOUT_ENV", "LazyStore", "RankFailure", "Terminated", "launch",
           "timeout_s"]
