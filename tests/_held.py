"""``adatune`` that holds still once it has recorded a number of epochs, for tests that
kill a run part-way: ``python -m tests._held N ARGS...`` is ``adatune ARGS...`` that,
after its N-th epoch is committed to the store (its checkpoint written before), waits
for ever. A SIGKILL then lands after exactly N epochs, however fast the run and however
loaded the machine: the test waits on that event, never on the run being slow.
"""

from __future__ import annotations

import sys
import threading

from adatune.store.repository import Store
from adatune_cli.main import main


def _hold_after(epochs: int) -> None:
    record = Store.record_epoch
    done = 0

    def held(self, *args, **kwargs):
        nonlocal done
        result = record(self, *args, **kwargs)
        done += 1
        if done >= epochs:
            threading.Event().wait()  # until the test kills this process
        return result

    Store.record_epoch = held


if __name__ == "__main__":
    _hold_after(int(sys.argv[1]))
    sys.argv = ["adatune", *sys.argv[2:]]
    main()
