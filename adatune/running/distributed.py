"""One run on many processes: the training loop under ``torch.distributed``.

Data parallelism: every rank holds the whole model and trains on a disjoint
shard of every batch; ``batch_size`` is the global batch. The tuners average
what their math needs across the ranks (:mod:`adatune.methods.tuners.collectives`);
this module gives the loop the rest, and every piece of it is a no-op on one
process:

* :class:`Ranks`: this process's place in the group and the collectives the
  loop needs: each rank's slice of a batch and the weight of its loss, sums
  for the epoch's metrics, averaged gradients for untuned steps, batch-norm
  statistics, rank 0's weights at the start, every rank's RNG state (and,
  mid-epoch, batch-norm statistics) for the checkpoint, the per-step agreement
  on SIGTERM/SIGUSR1 requests, and a view of the store that writes nothing on
  other ranks.
* :func:`launch`: joins the process group from the environment that
  ``torchrun`` sets (gloo on the CPU, NCCL on CUDA), with a bounded timeout,
  and handles SIGTERM and SIGUSR1 as :mod:`adatune.running.signals` says: the loop's
  ranks agree after every step on whether any of them was asked to stop or to
  checkpoint, and all do it after the same step. A SIGTERM while a rank on this
  host is gone is :class:`RankFailure` (the run failed) instead.
* :func:`agree` and :func:`on_main`: every rank takes the same decisions at
  the start (the same configuration, no rank failed to build its parts; rank
  0 alone reads and writes the store and shares what it found).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import io
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

from adatune import errors
from adatune._process import owner_record, process_may_be_alive
from adatune.data.batching import shard_bounds
from adatune.errors import AdatuneError, ConfigError
from adatune.methods.tuners import collectives
from adatune.methods.tuners.collectives import RankFailure, active_group, all_reduce_
from adatune.running import checkpoint, signals
from adatune.store.protocols import RunLog
from adatune.store.records import EpochRecord, StepRecord

if TYPE_CHECKING:
    from adatune.store import Store

__all__ = ["LazyStore", "RankFailure", "Ranks", "Terminated", "agree", "data_fingerprint",
           "launch", "on_main", "timeout_s"]

T = TypeVar("T")

#: Seconds a collective (or joining the group) may wait for the other ranks.
TIMEOUT_ENV = "ADATUNE_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 300.0
BACKEND_ENV = "ADATUNE_DIST_BACKEND"


#: A SIGTERM stopped the run (:class:`adatune.running.signals.Terminated`, a
#: :class:`KeyboardInterrupt`: the loop ends the run as ``interrupted``).
Terminated = signals.Terminated


# ------------------------------------------------------------ the group
def timeout_s() -> float:
    """The collectives' timeout: ``ADATUNE_DIST_TIMEOUT`` seconds, default 300."""
    raw = os.environ.get(TIMEOUT_ENV)
    if raw is None or raw.strip() == "":
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise ConfigError(f"invalid {TIMEOUT_ENV}: {raw!r} (seconds, a number > 0)")
    return value


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"invalid {name}: {raw!r} (torchrun sets it to a whole number)") \
            from None


def _backend(local_rank: int) -> str:
    """gloo on the CPU; NCCL for CUDA tensors when every local rank has its own GPU."""
    chosen = os.environ.get(BACKEND_ENV)
    if chosen:
        return chosen
    if not torch.cuda.is_available():
        return "gloo"
    count = torch.cuda.device_count()
    torch.cuda.set_device(local_rank % count)
    if _env_int("LOCAL_WORLD_SIZE", 1) > count:  # ranks share a GPU: NCCL refuses that
        return "gloo"
    return "cpu:gloo,cuda:nccl"


@contextlib.contextmanager
def launch() -> Iterator[int]:
    """Join the process group that ``torchrun`` (or ``RANK``/``WORLD_SIZE``/``MASTER_*``) describes.

    Yields this process's rank (0 on one process). With ``WORLD_SIZE`` unset
    or 1, or a group already initialised, it does nothing but yield the rank.
    Collectives (and joining) wait at most :func:`timeout_s` for the other ranks. While
    inside, SIGTERM and SIGUSR1 are handled as :func:`adatune.running.signals.handle_preemption`
    handles them (a run stops, or checkpoints, after a step every rank agrees on),
    except that a SIGTERM while a rank on this host has died raises
    :class:`RankFailure` (torchrun stops the survivors that way), and one after
    the run began to end (a failed collective, an agreed stop) is ignored.
    On leaving, the group is destroyed.
    """
    world = _env_int("WORLD_SIZE", 1)
    if dist.is_available() and dist.is_initialized():
        yield dist.get_rank()
        return
    if world <= 1:
        yield 0
        return
    if not dist.is_available():
        raise ConfigError("WORLD_SIZE > 1, but this torch build has no torch.distributed")
    rank = _env_int("RANK", -1)
    if not 0 <= rank < world:
        raise ConfigError(f"invalid RANK: {os.environ.get('RANK')!r} (need 0 <= RANK < "
                          f"WORLD_SIZE = {world}; launch with torchrun)")
    limit = timeout_s()
    backend = _backend(_env_int("LOCAL_RANK", 0))
    try:
        dist.init_process_group(backend, timeout=dt.timedelta(seconds=limit))
    except (RuntimeError, ValueError) as exc:
        raise RankFailure(f"rank {rank} could not join the {world} ranks within {limit:g} s: "
                          f"{' '.join(str(exc).split())[:300]}") from exc
    collectives.stopping(False)
    handler_set = threading.current_thread() is threading.main_thread()
    try:
        with signals.handle_preemption():
            previous = signal.signal(signal.SIGTERM, _on_sigterm) if handler_set else None
            try:
                yield rank
            finally:
                if handler_set:
                    signal.signal(signal.SIGTERM, previous)
    finally:
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


_rank_owners: list[dict[str, Any]] = []  # (host, pid) of every rank, set by the latest Ranks


def _alive(owner: Mapping[str, Any]) -> bool:
    """Whether a rank's process may be alive (a zombie on this host is not)."""
    if not process_may_be_alive(dict(owner)):
        return False
    if owner.get("host") != socket.gethostname():
        return True  # another host: only its own ranks can tell
    try:
        with open(f"/proc/{int(owner['pid'])}/stat") as stat:
            state = stat.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError, ValueError, KeyError):
        return True


def _dead_ranks() -> list[int]:
    return [r for r, owner in enumerate(_rank_owners) if not _alive(owner)]


#: How long a rank that lost the other ranks waits to see rank 0's process gone (a killed
#: process closes its sockets a moment before it is seen dead) before leaving the
#: run's status to rank 0.
MAIN_EXIT_WAIT_S = 10.0


def _gone(rank: int, wait_s: float) -> bool:
    """Whether ``rank``'s process (on this host) is gone, waiting up to ``wait_s`` for it."""
    deadline = time.monotonic() + wait_s
    while rank not in _dead_ranks():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _on_sigterm(signum: int, frame: Any) -> None:
    if collectives.is_stopping():
        return  # already ending the run: let it finish writing its status
    dead = _dead_ranks()
    if dead:
        collectives.stopping(True)
        raise RankFailure(f"rank {', '.join(map(str, dead))} died (this rank was then stopped "
                          "by SIGTERM)")
    signals.on_stop(signum, frame)  # the loop stops after a step the ranks agree on


# ------------------------------------------------------ objects across ranks
def _describe(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]


def _gather(obj: Any, group: Any) -> list[Any]:
    out: list[Any] = [None] * dist.get_world_size(group)
    try:
        dist.all_gather_object(out, obj, group=group)
    except RuntimeError as exc:
        collectives.stopping(True)
        raise RankFailure(f"ranks could not exchange data (a rank died or timed out): "
                          f"{_describe(exc)}") from exc
    return out


def _broadcast(obj: Any, group: Any) -> Any:
    box = [obj]
    try:
        dist.broadcast_object_list(box, src=0, group=group)
    except RuntimeError as exc:
        collectives.stopping(True)
        raise RankFailure(f"rank 0 could not share data (a rank died or timed out): "
                          f"{_describe(exc)}") from exc
    return box[0]


def _error_class(name: str) -> type[AdatuneError]:
    cls = getattr(errors, name, None)
    return cls if isinstance(cls, type) and issubclass(cls, AdatuneError) else AdatuneError


def on_main(fn: Callable[[], T], group: Any = None) -> T:
    """``fn()`` on rank 0 only; every rank returns its result (or raises its error).

    A user error (:class:`~adatune.errors.AdatuneError`) on rank 0 is raised
    on every rank with the same message; anything else raises on rank 0 and
    is a :class:`RankFailure` elsewhere.
    """
    group = active_group(group)
    if group is None:
        return fn()
    message: tuple
    error: BaseException | None = None
    if dist.get_rank(group) == 0:
        try:
            message = ("ok", fn())
        except AdatuneError as exc:
            message, error = ("error", type(exc).__name__, str(exc)), exc
        except BaseException as exc:
            message, error = ("crash", f"{type(exc).__name__}: {exc}"), exc
        _broadcast(message, group)
        if error is not None:
            raise error
        return message[1]
    message = _broadcast(None, group)
    if message[0] == "ok":
        return message[1]
    if message[0] == "error":
        raise _error_class(message[1])(message[2])
    raise RankFailure(f"rank 0 failed: {message[1]}")


def _digest(fingerprint: Mapping[str, Any]) -> str:
    text = json.dumps(fingerprint, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


#: Examples of each set a data fingerprint reads (evenly spaced, the first and last among them).
FINGERPRINT_EXAMPLES = 16


def _tensor_bytes(value: Any) -> bytes:
    t = torch.as_tensor(value).detach().cpu().contiguous()
    head = f"{t.dtype}{tuple(t.shape)}".encode()
    return head + t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else head


def data_fingerprint(**sets: Any) -> dict[str, Any]:
    """A cheap fingerprint of datasets: each one's length and a hash of a few of its examples.

    :data:`FINGERPRINT_EXAMPLES` examples per set, evenly spaced, read with
    torch's random streams forked and seeded alike (augmentation draws the
    same on every rank), so that ranks given the same data agree, and ranks
    given different data (other files, another split) almost surely do not.
    """
    found: dict[str, Any] = {}
    with torch.random.fork_rng(devices=[]):
        for name, dataset in sets.items():
            if dataset is None:
                found[name] = None
                continue
            n = len(dataset)
            picks = sorted({round(i * (n - 1) / max(FINGERPRINT_EXAMPLES - 1, 1))
                            for i in range(min(n, FINGERPRINT_EXAMPLES))})
            digest = hashlib.sha256()
            for index in picks:
                torch.manual_seed(index)
                item = dataset[index]
                for part in item if isinstance(item, (tuple, list)) else (item,):
                    digest.update(_tensor_bytes(part))
            found[name] = {"examples": n, "sample": digest.hexdigest()}
    return found


def agree(fingerprint: Mapping[str, Any], build: Callable[[], T], *,
          batch_size: int | None = None, group: Any = None,
          check: Callable[[T], Mapping[str, Any]] | None = None) -> T:
    """``build()`` on every rank, once all ranks were given the same ``fingerprint``.

    One process: just ``build()``. Several: the fingerprints' hashes are
    compared first (a mismatch names the keys that differ), and the batch must
    have an example for every rank; then every rank builds, and a user error
    on any rank is raised on all of them (prefixed with its rank when it is
    not rank 0). ``check(built)`` (e.g. :func:`data_fingerprint` of the data
    built) must then agree too: ranks given different data are refused before
    a run is written. Every rank raises the same :class:`~adatune.errors.AdatuneError`.
    """
    group = active_group(group)
    if group is None:
        return build()
    world = dist.get_world_size(group)
    digests = _gather(_digest(fingerprint), group)
    odd = [r for r, d in enumerate(digests) if d != digests[0]]
    if odd:
        prints = _gather(json.loads(json.dumps(fingerprint, default=repr)), group)
        keys = sorted(k for k in set(prints[0]) | set(prints[odd[0]])
                      if prints[0].get(k) != prints[odd[0]].get(k))
        raise ConfigError(f"the ranks were launched with different run configurations (rank "
                          f"{odd[0]} differs from rank 0 in: {', '.join(keys)}); give every "
                          "rank the same arguments")
    if batch_size is not None and batch_size < world:
        raise ConfigError(f"batch_size={batch_size} is smaller than the {world} ranks: the "
                          "batch size is the global one, and every rank needs at least one "
                          "example of each batch")
    result: Any = None
    failure: tuple[str, str] | None = None
    try:
        result = build()
    except AdatuneError as exc:
        failure = (type(exc).__name__, str(exc))
    failures = _gather(failure, group)
    for r, found in enumerate(failures):
        if found is not None:
            name, text = found
            raise _error_class(name)(text if r == 0 else f"rank {r}: {text}")
    if check is not None:
        built = json.loads(json.dumps(check(result), default=repr))
        prints = _gather(built, group)
        odd = [r for r, p in enumerate(prints) if p != prints[0]]
        if odd:
            keys = sorted(k for k in set(prints[0]) | set(prints[odd[0]])
                          if prints[0].get(k) != prints[odd[0]].get(k))
            raise ConfigError(f"the ranks were given different data (rank {odd[0]}'s "
                              f"{', '.join(keys)} differ from rank 0's: their lengths or "
                              "examples); give every rank the same data")
    return result


# ------------------------------------------------------------- the store
class LazyStore:
    """A store that a rank other than 0 opens only to mark the run failed when rank 0 died."""

    def __init__(self, spec: Store | str) -> None:
        self.spec = spec  # a path or URL, or an open Store

    @contextlib.contextmanager
    def opened(self) -> Iterator[Store]:
        from adatune.store import Store, open_store

        if isinstance(self.spec, Store):
            yield self.spec
            return
        with open_store(self.spec) as db:
            yield db


class _Follower:
    """What the loop records into on ranks other than 0 (a
    :class:`~adatune.store.protocols.RunLog`): nothing, except a dead rank 0's status."""

    def __init__(self, store: Store | LazyStore | str | None) -> None:
        self.store = store if isinstance(store, LazyStore | None) else LazyStore(store)

    def record_epoch(self, run_id: int, epoch: EpochRecord, steps: Sequence[StepRecord] = (),
                     *, best: bool | None = None,
                     lrs: Sequence[float] | None = None) -> None: ...

    def heartbeat(self, run_id: int) -> None: ...

    def finish_run(self, run_id: int, status: str, *, error: str | None = None,
                   summary: Mapping[str, Any] | None = None) -> None:
        if status != "failed" or self.store is None or not _gone(0, MAIN_EXIT_WAIT_S):
            return  # rank 0 (alive) records the run
        with contextlib.suppress(Exception), self.store.opened() as db:
            if db.get_run(run_id, steps=False).run.status == "running":
                db.finish_run(run_id, "failed", error=f"rank 0 died; {error}")


# ------------------------------------------------------------ the ranks
class Ranks:
    """This process's place among the ranks of a run, and the loop's collectives.

    One process (no initialised group, or a group of one): rank 0 of 1, and
    every method returns its input or does nothing.
    """

    def __init__(self, group: Any = None) -> None:
        self.group = active_group(group)
        self.rank = 0 if self.group is None else dist.get_rank(self.group)
        self.world = 1 if self.group is None else dist.get_world_size(self.group)
        if self.group is not None:
            _rank_owners[:] = _gather(owner_record(), self.group)

    @property
    def active(self) -> bool:
        return self.group is not None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def shard(self) -> tuple[int, int] | None:
        """``(rank, world)`` for :func:`adatune.data.batching.batches`, or None on one process."""
        return (self.rank, self.world) if self.active else None

    def weight(self, n_global: int) -> float:
        """The factor on this rank's mean loss over its slice of an ``n_global`` batch.

        ``world * n_rank / n_global``: the mean over ranks of the weighted
        losses is the global batch's mean loss (uneven slices included).
        """
        if not self.active:
            return 1.0
        lo, hi = shard_bounds(n_global, self.rank, self.world)
        return self.world * (hi - lo) / n_global

    @staticmethod
    def zero_loss(model: nn.Module) -> Tensor:
        """The loss of a rank whose slice is empty: zero, with a zero gradient and HVP."""
        params = [p for p in model.parameters() if p.requires_grad]
        return sum((p * p).sum() for p in params) * 0.0

    def sum(self, values: Sequence[float], device: torch.device) -> list[float]:
        """Each number summed over the ranks (one float64 all-reduce)."""
        if not self.active:
            return list(values)
        buf = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
        all_reduce_([buf], self.group, mean=False)
        return buf.tolist()

    def average_gradients(self, params: Iterator[Tensor] | Sequence[Tensor],
                          loss: Tensor) -> Tensor:
        """An untuned step: ``p.grad`` and the loss averaged over the ranks."""
        if not self.active:
            return loss
        return collectives.average_gradients(list(params), loss, self.group)

    def sync_buffers(self, model: nn.Module) -> None:
        """Average the floating-point buffers (batch-norm running statistics) over the ranks."""
        if self.active:
            all_reduce_([b for b in model.buffers() if b.is_floating_point()], self.group)

    def broadcast_module(self, model: nn.Module) -> None:
        """Give every rank rank 0's parameters and buffers (a fresh run starts from them)."""
        if not self.active:
            return
        with torch.no_grad():
            collectives.broadcast_([t.detach() for t in (*model.parameters(),
                                                          *model.buffers())], self.group)

    def rng_states(self, device: torch.device) -> list[dict[str, Any]] | None:
        """Every rank's torch (and CUDA) RNG state, in rank order; None on one process."""
        if not self.active:
            return None
        mine = {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else None}
        return _gather(mine, self.group)

    def restore_rng(self, rng: Mapping[str, Any], device: torch.device, seed: int) -> None:
        """Set this rank's RNG state from a checkpoint's ``rng`` entry.

        Rank 0 (or one process) takes the main state; another rank takes its own
        entry when the checkpoint was written by as many ranks, else a state
        derived from ``seed`` and its rank.
        """
        own = rng
        if self.rank != 0:
            ranks = rng.get("ranks")
            if ranks is not None and len(ranks) == self.world:
                own = ranks[self.rank]
            else:
                self.seed_rank(seed)
                return
        torch.set_rng_state(own["torch"].cpu())
        if own.get("cuda") is not None and device.type == "cuda":
            torch.cuda.set_rng_state_all([s.cpu() for s in own["cuda"]])

    def seed_rank(self, seed: int) -> None:
        """Give a rank other than 0 its own torch RNG stream (dropout masks differ by rank)."""
        if self.active and self.rank != 0:
            digest = hashlib.sha256(f"adatune/{seed}/{self.rank}".encode()).digest()
            torch.manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))

    def on_main(self, fn: Callable[[], T]) -> T:
        """``fn()`` on rank 0, its result on every rank (:func:`on_main` over this group)."""
        return fn() if not self.active else on_main(fn, self.group)

    def readable(self, path: Path) -> io.BytesIO | None:
        """Several ranks: rank 0's bytes of checkpoint ``path`` (no shared disk needed).

        For :func:`adatune.running.checkpoint.load`'s ``file``; None on one process (read
        ``path`` itself). Rank 0 failing to read it is a
        :class:`~adatune.errors.CheckpointError` on every rank.
        """
        if not self.active:
            return None
        return io.BytesIO(self.on_main(lambda: checkpoint.read_bytes(path)))

    def any_of(self, values: Sequence[int], device: torch.device) -> list[int]:
        """Each number's maximum over the ranks (one int64 all-reduce; itself on one process)."""
        if not self.active:
            return [int(v) for v in values]
        return collectives.max_(values, self.group, device)

    def requests(self, device: torch.device, *, agree: bool = True) -> tuple[bool, bool]:
        """(stop, checkpoint): what SIGTERM and SIGUSR1 ask of the loop after a step.

        One process (or ``agree=False``): the requests this process received
        (:mod:`adatune.running.signals`). Several ranks: their maximum over the ranks, in
        one all-reduce of two int64 numbers, so that a signal that reached one
        rank, or reached the ranks at different steps, stops or checkpoints every
        rank after the same step. A stop another rank received counts as this
        rank's (:func:`adatune.running.signals.stop_agreed`); a SIGTERM that reaches this
        rank later (torchrun's, forwarded to every rank) is then ignored
        (:func:`launch`): the run is already ending.
        """
        stop = signals.stop_requested()
        asked = stop is None and signals.take_checkpoint_request()
        if agree and self.active:
            signum, asked = self.any_of([stop or 0, int(asked)], device)
            if signum and stop is None:
                signals.stop_agreed(signum)
                collectives.stopping(True)
            stop = signum or None
        return stop is not None, bool(asked)

    def buffer_states(self, model: nn.Module) -> list[list[Tensor]] | None:
        """Every rank's floating-point buffers (batch norm's, which differ by rank mid-epoch).

        In rank order, on the CPU; None on one process or for a model without such buffers.
        """
        mine = [b.detach().cpu().clone() for b in model.buffers() if b.is_floating_point()]
        if not self.active or not mine:
            return None
        return _gather(mine, self.group)

    def restore_buffers(self, model: nn.Module, states: Sequence[Sequence[Tensor]] | None
                        ) -> None:
        """This rank's buffers from :meth:`buffer_states` of as many ranks (else: unchanged)."""
        if not self.active or self.rank == 0 or states is None or len(states) != self.world:
            return
        own = [b for b in model.buffers() if b.is_floating_point()]
        with torch.no_grad():
            for b, saved in zip(own, states[self.rank], strict=True):
                b.copy_(saved.to(b.device))

    def store_view(self, store: Store | LazyStore) -> RunLog:
        """What a rank other than 0 records into: nothing, unless rank 0 died (then: failed)."""
        return store if self.is_main else _Follower(store)
