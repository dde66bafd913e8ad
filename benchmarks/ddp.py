"""What data parallelism costs a tuned step: collectives and bytes all-reduced per step.

Every rank trains its own replica on its slice of the same synthetic
CIFAR-shaped global batch, one method at a time, and counts per step:

- ``ddp``: torch's ``DistributedDataParallel`` (gradient buckets counted by a
  communication hook; ``forward_sync_buffers=False``, so batch-norm buffers
  are not broadcast at every forward as DDP does by default);
- ``plain``: adatune's untuned step (``loss.backward()``, then the gradients
  and the loss in one bucketed all-reduce, as the training loop does);
- ``hd``, ``marthe-mu0``, ``marthe``, ``rtho``: the tuners' ``step``, which
  all-reduces the gradient (and, with the curvature term, the Hessian-vector
  product) with the loss in one bucketed all-reduce, plus (MARTHE, RTHO) one
  all-reduce of two float64 scalars for the validation side;
- ``signals``: what the training loop adds to every step of any method when the
  ranks handle SIGTERM/SIGUSR1 (``adatune train`` and ``baseline`` under
  torchrun, ``adatune.running.distributed.launch()``): one all-reduce of two int64
  numbers, by which the ranks agree after the same step to stop or checkpoint.

It also times the steps (median), but across processes on a small shared CPU
those times mean little; the counts are exact. Bytes are what each rank
contributes to its all-reduces.

    python benchmarks/ddp.py                        # 2 CPU ranks (gloo), lenet
    python benchmarks/ddp.py --ranks 2 --network mlp --json
    torchrun --nproc-per-node 8 benchmarks/ddp.py --device cuda --network resnet18 \\
        --batch-size 512 --steps 20                # one GPU per rank (NCCL)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel

import adatune
from adatune.data.batching import shard_bounds
from adatune.data.datasets import DataSpec
from adatune.data.models import build_model
from adatune.methods.tuners.collectives import counting
from adatune.running.distributed import Ranks, launch

METHODS = ("ddp", "plain", "hd", "marthe-mu0", "marthe", "rtho", "signals")


def _args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranks", type=int, default=2,
                        help="processes to start when not launched by torchrun")
    parser.add_argument("--network", default="lenet")
    parser.add_argument("--batch-size", type=int, default=64, help="the global batch")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in args.methods:
        if m not in METHODS:
            parser.error(f"unknown method {m!r} (choose from {', '.join(METHODS)})")
    if args.steps < 1 or args.warmup < 0 or args.batch_size < 1 or args.ranks < 1:
        parser.error("--steps, --batch-size and --ranks must be >= 1, --warmup >= 0")
    return args


class _Counter:
    def __init__(self) -> None:
        self.collectives = 0
        self.bytes = 0


def _batches(args, device: torch.device, ranks: Ranks, n: int = 4):
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        x = torch.randn(args.batch_size, 3, 32, 32, generator=g)
        y = torch.randint(0, 10, (args.batch_size,), generator=g)
        xv = torch.randn(args.batch_size, 3, 32, 32, generator=g)
        yv = torch.randint(0, 10, (args.batch_size,), generator=g)
        lo, hi = shard_bounds(args.batch_size, ranks.rank, ranks.world)
        out.append(tuple(t[lo:hi].to(device) for t in (x, y, xv, yv)))
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(method: str, args, device: torch.device, ranks: Ranks) -> dict:
    """Per-step collectives, bytes and median milliseconds of one method on this rank."""
    torch.manual_seed(0)
    spec = DataSpec("synthetic", (3, 32, 32), 10)
    model = build_model(args.network, spec).to(device)
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    tiny = 1e-12  # keep the LR essentially fixed: this measures the machinery
    tuner = None
    if method == "hd":
        tuner = adatune.HD(opt, hyper_lr=tiny, online=True)
    elif method in ("marthe", "marthe-mu0"):
        tuner = adatune.MARTHE(opt, hyper_lr=tiny, mu=0.99 if method == "marthe" else 0.0,
                               model=model, online=True)
    elif method == "rtho":
        tuner = adatune.RTHO(opt, hyper_lr=tiny, model=model, online=True)
    ddp_count = _Counter()
    net: nn.Module = model
    if method == "ddp":
        net = DistributedDataParallel(model, forward_sync_buffers=False)

        def hook(state, bucket):  # noqa: ANN001
            buf = bucket.buffer()
            ddp_count.collectives += 1
            ddp_count.bytes += buf.numel() * buf.element_size()
            return default_hooks.allreduce_hook(None, bucket)

        net.register_comm_hook(None, hook)
    ce = nn.functional.cross_entropy
    batches = _batches(args, device, ranks)
    counts, times = [], []
    for i in range(args.warmup + args.steps):
        x, y, xv, yv = batches[i % len(batches)]

        def closure(x=x, y=y) -> torch.Tensor:
            return ce(model(x), y)

        def val_loss(xv=xv, yv=yv) -> torch.Tensor:
            model.eval()
            try:
                return ce(model(xv), yv)
            finally:
                model.train()

        ddp_count.collectives = ddp_count.bytes = 0
        _sync(device)
        start = time.perf_counter()
        with counting() as ours:
            if method == "ddp":
                opt.zero_grad(set_to_none=True)
                ce(net(x), y).backward()
                opt.step()
            elif method == "signals":  # the loop's check after a step (none of the above)
                ranks.requests(device)
            elif method == "plain":
                opt.zero_grad(set_to_none=True)
                loss = closure()
                loss.backward()
                ranks.average_gradients(model.parameters(), loss)
                opt.step()
            elif tuner.outer == "training":
                tuner.step(closure)
            else:
                tuner.step(closure, val_loss=val_loss)
        _sync(device)
        elapsed = time.perf_counter() - start
        if i >= args.warmup:
            times.append(elapsed)
            counts.append((ours.collectives + ddp_count.collectives, ours.bytes + ddp_count.bytes))
    if len(set(counts)) != 1:
        raise RuntimeError(f"{method}: the communication changed from step to step: {counts}")
    collectives, nbytes = counts[0]
    return {"method": method, "collectives": collectives, "bytes": nbytes,
            "step_ms": statistics.median(times) * 1e3, "parameters": n_params,
            "parameter_bytes": sum(p.numel() * p.element_size() for p in model.parameters())}


def _table(results: list[dict], args, world: int, device: str) -> str:
    base = next((r for r in results if r["method"] == "ddp"), results[0])
    lines = [f"{args.network}, global batch {args.batch_size}, {world} ranks on {device}; "
             f"{base['parameters']:,} parameters ({base['parameter_bytes'] / 2**20:.2f} MiB); "
             f"per step and rank, against {base['method']}",
             f"{'method':>11} {'all-reduces':>11} {'bytes':>12} {'x bytes':>8} {'step ms':>9} "
             f"{'x time':>7}"]
    for r in results:
        lines.append(f"{r['method']:>11} {r['collectives']:>11} {r['bytes']:>12,} "
                     f"{r['bytes'] / base['bytes']:>8.4f} {r['step_ms']:>9.1f} "
                     f"{r['step_ms'] / base['step_ms']:>7.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 and args.ranks > 1:
        # not launched by torchrun: launch ourselves through it
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", str(args.ranks), __file__, *(argv or sys.argv[1:])]
        return subprocess.run(cmd, check=False).returncode
    if args.device == "cuda" and not torch.cuda.is_available():
        print("ddp.py: error: --device cuda, but no CUDA device is available", file=sys.stderr)
        return 2
    with launch():  # (it arms the signal handling that the "signals" row measures)
        ranks = Ranks()
        if not ranks.active:
            print("ddp.py: error: needs 2 ranks or more", file=sys.stderr)
            return 2
        device = (torch.device("cuda", torch.cuda.current_device()) if args.device == "cuda"
                  else torch.device("cpu"))
        results = [measure(m, args, device, ranks) for m in args.methods]
        if ranks.is_main:
            if args.json:
                print(json.dumps({"network": args.network, "batch_size": args.batch_size,
                                  "ranks": ranks.world, "device": str(device),
                                  "results": results}, indent=2))
            else:
                print(_table(results, args, ranks.world, str(device)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
