"""Averaging across ranks (``torch.distributed``) for the tuners, in few all-reduces.

Data parallelism splits every batch over the ranks. The training loss of the
global batch is the mean over ranks of each rank's (weighted) local loss, so
its gradient is the mean of the local gradients, and so is its
Hessian-vector product ``H z``: both are linear in the loss, and ``z`` is the
same on every rank. :func:`average_step` averages both, with the loss itself
and a mark of which parameters got a gradient, in one bucketed all-reduce:
afterwards every rank holds the same numbers and takes the same step.

The validation gradient is averaged through the only numbers the tuner takes
from it, its dot products with vectors that are the same on every rank
(``h = <grad E, Z>`` and automatic mu's ``<grad E, g_t>``):
:func:`average_scalars` all-reduces those two scalars, which equals averaging
the whole gradient in exact arithmetic.

Every collective goes through :func:`_all_reduce`, which counts what it sends
(:func:`counting`, for the benchmark) and turns a failed collective (a rank
died, or did not answer within the group's timeout) into :class:`RankFailure`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

#: Largest all-reduce in bytes (DistributedDataParallel's default bucket size):
#: tensors are packed into flat buffers up to this size, one collective each.
BUCKET_BYTES = 25 * 2**20


class RankFailure(RuntimeError):
    """A collective failed: another rank died, or did not answer within the timeout."""


@dataclass
class CommCount:
    """What the collectives sent while :func:`counting` was active (per rank)."""

    collectives: int = 0
    bytes: int = 0  # payload of each all-reduce (what each rank contributes)


_counters: list[CommCount] = []
_stopping = [False]  # a collective failed (or a SIGTERM came): the run is ending


def stopping(value: bool) -> None:
    """Mark the process as ending its run (a SIGTERM then no longer interrupts it)."""
    _stopping[0] = bool(value)


def is_stopping() -> bool:
    return _stopping[0]


@contextlib.contextmanager
def counting() -> Iterator[CommCount]:
    """Count the collectives this module runs inside the block."""
    count = CommCount()
    _counters.append(count)
    try:
        yield count
    finally:
        _counters.remove(count)


def active_group(group: Any = None) -> Any:
    """The process group to average over, or None when this is one process.

    ``group`` given: that group (None if it has one rank). Otherwise the default
    group, if :func:`torch.distributed.init_process_group` has been called.
    """
    if not dist.is_available():
        return None
    if group is None:
        if not dist.is_initialized():
            return None
        group = dist.group.WORLD
    return group if dist.get_world_size(group) > 1 else None


def _collective(op: str, flat: Tensor, group: Any, *, async_op: bool = False):
    for count in _counters:
        count.collectives += 1
        count.bytes += flat.numel() * flat.element_size()
    try:
        if op == "broadcast":
            return dist.broadcast(flat, src=0, group=group, async_op=async_op)
        reduce_op = dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM
        return dist.all_reduce(flat, op=reduce_op, group=group, async_op=async_op)
    except RuntimeError as exc:  # DistBackendError, DistNetworkError, timeouts
        raise _failure(exc) from exc


def _all_reduce(flat: Tensor, group: Any, *, async_op: bool = False):
    return _collective("all_reduce", flat, group, async_op=async_op)


def _wait(work) -> None:
    try:
        work.wait()
    except RuntimeError as exc:
        raise _failure(exc) from exc


def _failure(exc: BaseException) -> RankFailure:
    stopping(True)
    text = " ".join(str(exc).split())
    return RankFailure(f"a collective across ranks failed (a rank died or timed out): "
                       f"{text[:300]}")


def _buckets(tensors: Sequence[Tensor], cap: int) -> list[list[int]]:
    """Indices of ``tensors`` packed into buckets of one dtype and device, up to ``cap`` bytes."""
    out: list[list[int]] = []
    open_by_kind: dict[tuple, tuple[list[int], int]] = {}
    for i, t in enumerate(tensors):
        kind = (t.dtype, t.device)
        size = t.numel() * t.element_size()
        current = open_by_kind.get(kind)
        if current is None or (current[1] + size > cap and current[0]):
            bucket: list[int] = []
            out.append(bucket)
            current = (bucket, 0)
        current[0].append(i)
        open_by_kind[kind] = (current[0], current[1] + size)
    return out


def all_reduce_(tensors: Sequence[Tensor], group: Any, *, mean: bool = True,
                bucket_bytes: int | None = None) -> None:
    """Replace every tensor by its sum (or mean) over the ranks, in place.

    The tensors are packed into flat buffers (one per dtype and device, split at
    ``bucket_bytes``, default :data:`BUCKET_BYTES`); the buckets' all-reduces
    are all started before any is waited on.
    """
    _bucketed("all_reduce", tensors, group, mean=mean, bucket_bytes=bucket_bytes)


def broadcast_(tensors: Sequence[Tensor], group: Any, *, bucket_bytes: int | None = None) -> None:
    """Replace every tensor by rank 0's, in place (bucketed as :func:`all_reduce_`)."""
    _bucketed("broadcast", tensors, group, mean=False, bucket_bytes=bucket_bytes)


def _bucketed(op: str, tensors: Sequence[Tensor], group: Any, *, mean: bool,
              bucket_bytes: int | None) -> None:
    if not tensors:
        return
    world = dist.get_world_size(group)
    cap = BUCKET_BYTES if bucket_bytes is None else bucket_bytes
    pending = []
    for idx in _buckets(tensors, cap):
        parts = [tensors[i] for i in idx]
        alone = len(parts) == 1 and parts[0].is_contiguous()
        flat = parts[0].view(-1) if alone else torch.cat([t.reshape(-1) for t in parts])
        work = _collective(op, flat, group, async_op=True)
        pending.append((None if alone else parts, flat, work))
    for parts, flat, work in pending:
        _wait(work)
        if mean:
            flat.div_(world)
        if parts is None:  # reduced in place
            continue
        offset = 0
        for t in parts:
            n = t.numel()
            t.copy_(flat[offset:offset + n].view_as(t))
            offset += n


def average_scalars(values: Sequence[float], group: Any, device: torch.device) -> list[float]:
    """The mean over the ranks of each number (one float64 all-reduce)."""
    buf = torch.tensor(list(values), dtype=torch.float64, device=device)
    _all_reduce(buf, group)
    return [v / dist.get_world_size(group) for v in buf.tolist()]


def max_(values: Sequence[int], group: Any, device: torch.device) -> list[int]:
    """The maximum over the ranks of each whole number (one int64 all-reduce)."""
    buf = torch.tensor([int(v) for v in values], dtype=torch.int64, device=device)
    _collective("max", buf, group)
    return [int(v) for v in buf.tolist()]


def _scalar_dtype(params: Sequence[Tensor]) -> torch.dtype:
    dtype = params[0].dtype
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def average_step(params: list[Tensor], used: list[Tensor], grads: list[Tensor],
                 hvps: list[Tensor] | None, loss: Tensor, group: Any):
    """Average a step's gradients, HVPs and loss over the ranks, in one bucketed all-reduce.

    ``used``/``grads``/``hvps`` are this rank's (parameters that got a gradient
    here); a parameter that got none here counts as a zero gradient. Returns
    ``(used, grads, hvps, loss)`` for the global batch: ``used`` are the
    parameters that got a gradient on some rank, in ``params`` order.
    """
    where = {p: i for i, p in enumerate(used)}
    full_g = [grads[where[p]] if p in where else torch.zeros_like(p) for p in params]
    full_h = None
    if hvps is not None:
        full_h = [hvps[where[p]] if p in where else torch.zeros_like(p) for p in params]
    # [loss, 1 per parameter that got a gradient here]: after the mean, > 0 where any did
    marks = torch.zeros(1 + len(params), dtype=_scalar_dtype(params), device=params[0].device)
    marks[0] = loss.detach().reshape(())
    marks[1:] = torch.tensor([p in where for p in params], dtype=marks.dtype)
    all_reduce_([*full_g, *(full_h or []), marks], group)
    keep = [i for i, m in enumerate(marks[1:].tolist()) if m > 0]
    hvps_out = None if full_h is None else [full_h[i] for i in keep]
    return ([params[i] for i in keep], [full_g[i] for i in keep], hvps_out,
            marks[0].to(loss.dtype))


def average_gradients(params: Sequence[Tensor], loss: Tensor, group: Any) -> Tensor:
    """A plain step's ``p.grad`` and loss averaged over the ranks (one bucketed all-reduce).

    A parameter without a gradient on some rank counts as zero there; one that
    got none on any rank keeps ``grad = None``. Returns the averaged loss.
    """
    params = [p for p in params if p.requires_grad]
    had = [p.grad is not None for p in params]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    marks = torch.zeros(1 + len(params), dtype=_scalar_dtype(params), device=params[0].device)
    marks[0] = loss.detach().reshape(())
    marks[1:] = torch.tensor(had, dtype=marks.dtype)
    all_reduce_([*grads, marks], group)
    for p, g, m in zip(params, grads, marks[1:].tolist()):
        p.grad = g if m > 0 else None
    return marks[0].to(loss.dtype)
