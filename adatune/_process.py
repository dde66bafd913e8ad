"""Whether the process recorded as owning a run (or a sweep trial) may still be alive."""

from __future__ import annotations

import os
import socket
from typing import Any


def owner_record() -> dict[str, Any]:
    """This process, as recorded by its runs: host and pid."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


def process_may_be_alive(owner: Any) -> bool:
    """False only when ``owner`` names a process on this host that is gone.

    On another host (or without a usable record) only the store's heartbeat can
    tell, so the answer is True.
    """
    if not isinstance(owner, dict) or owner.get("host") != socket.gethostname():
        return True
    if os.name == "nt":  # os.kill would terminate the process there
        return True
    try:
        os.kill(int(owner["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, KeyError, TypeError, ValueError):
        return True
    return True
