"""Launching a command as several ranks of one torch.distributed run, for tests.

The ranks are plain subprocesses with the environment ``torchrun`` would give
them (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``),
so a test can kill one of them, or give them different arguments.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: Generous: the machine running the tests may be shared and slow.
WAIT_S = 600.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_env(rank: int, world: int, port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "ADATUNE_STORE"}
    env.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
               LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
               PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1", **extra)
    return env


def start(argvs: Sequence[Sequence[str]], cwd: Path, **extra: str) -> list[subprocess.Popen]:
    """One process per rank: ``argvs[r]`` is rank r's command after ``python``."""
    port = free_port()
    world = len(argvs)
    return [subprocess.Popen([sys.executable, *argv], cwd=cwd, env=rank_env(r, world, port,
                                                                          **extra),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for r, argv in enumerate(argvs)]


def finish(procs: Sequence[subprocess.Popen],
           timeout: float = WAIT_S) -> list[tuple[int, str, str]]:
    """Wait for every rank (killing all of them if one outlives ``timeout``)."""
    deadline = time.monotonic() + timeout
    out = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            out.append((p.returncode, stdout, stderr))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    return out


def run(argvs: Sequence[Sequence[str]], cwd: Path, timeout: float = WAIT_S,
        **extra: str) -> list[tuple[int, str, str]]:
    return finish(start(argvs, cwd, **extra), timeout)
