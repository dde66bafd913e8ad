"""What a tuned step costs: median step time and peak memory per method.

Every method trains its own copy of the same network on the same synthetic
CIFAR-shaped batches; steps are interleaved round-robin so that machine noise
hits every method alike, and ratios are taken within one process. Peak memory
is measured in a fresh subprocess per method (process peak RSS on the CPU,
``torch.cuda.max_memory_allocated`` on CUDA).
"""

from __future__ import annotations

import contextlib
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict

import torch
from torch import nn

from adatune.bench.config import (
    HVP_METHODS,
    HVP_MODES,
    MAX_BENCH_BATCH,
    MAX_BENCH_STEPS,
    METHODS,
    BenchConfig,
    BenchResult,
    MethodResult,
    split_label,
)
from adatune.data.models import build_model
from adatune.methods.tuners import HD, MARTHE, RTHO, fast_double_backward
from adatune.running.build import resolve_device
from adatune.running.loop import AMP_DTYPES

__all__ = [
    "HVP_METHODS",
    "HVP_MODES",
    "MAX_BENCH_BATCH",
    "MAX_BENCH_STEPS",
    "METHODS",
    "BenchConfig",
    "BenchResult",
    "MethodResult",
    "peak_memory_mb",
    "run_bench",
    "spread",
    "time_methods",
]

class _Runner:
    """One method's model, optimizer and step function.

    A tuner with ``hyper_every`` k > 1 steps a whole cycle of k steps at a time (one
    of them takes the HVP and the validation gradient): its time per step is the
    cycle's over k, not the median of cheap and costly steps.
    """

    def __init__(self, config: BenchConfig, label: str, device: torch.device,
                 batches: Sequence[tuple[torch.Tensor, ...]]) -> None:
        torch.manual_seed(config.seed)
        self.model = build_model(config.network, config.spec).to(device)
        self.model.train()
        params = self.model.parameters()
        if config.optimizer == "sgd":
            opt = torch.optim.SGD(params, lr=0.01, momentum=config.momentum,
                                  weight_decay=config.weight_decay)
        else:
            cls = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
            opt = cls(params, lr=1e-3, weight_decay=config.weight_decay)
        self.optimizer = opt
        self.batches = batches
        self.i = 0
        method, mode, every, fraction = split_label(label)
        self.cycle = every
        self.part = max(1, round(fraction * config.batch_size)) if fraction < 1 else None
        tiny = 1e-12  # keep the LR essentially fixed: we time the machinery, not the schedule
        self.tuner = None
        self.floor = ([torch.full_like(p, 1e-3) for p in self.model.parameters()]
                      if method.startswith("floor") else None)
        self.forward_mode = (fast_double_backward if method == "floor"
                             else contextlib.nullcontext)
        self.amp_dtype = AMP_DTYPES.get(config.precision)  # None: fp32
        self.device_type = device.type
        self.scaler = (torch.amp.GradScaler(device.type) if config.precision == "fp16"
                       else None)
        if method == "hd":
            self.tuner = HD(opt, hyper_lr=tiny, online=True)
        elif method in ("marthe-mu0", "marthe"):
            self.tuner = MARTHE(opt, hyper_lr=tiny, mu=0.0 if method != "marthe" else 0.99,
                                hvp=mode, model=self.model, online=True, hyper_every=every)
        elif method == "rtho":
            self.tuner = RTHO(opt, hyper_lr=tiny, hvp=mode, model=self.model, online=True,
                              hyper_every=every)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.amp_dtype)

    def _backward(self) -> contextlib.AbstractContextManager:
        """Backward passes run with autocast off, as the tuners run theirs."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, enabled=False)

    def step(self) -> None:
        """One step (a tuner with ``hyper_every`` k: k steps, one cycle)."""
        for _ in range(self.cycle):
            with self._autocast():
                self._step()
            if self.scaler is not None:
                self.scaler.update()

    def _step(self) -> None:
        x, y, xv, yv = self.batches[self.i % len(self.batches)]
        self.i += 1
        model, ce = self.model, nn.functional.cross_entropy
        if self.floor:
            params = list(model.parameters())
            with self.forward_mode():
                loss = ce(model(x), y)
            if self.scaler is not None:
                loss = self.scaler.scale(loss)
            with self._backward():
                grads = torch.autograd.grad(loss, params, create_graph=True)
                torch.autograd.grad(grads, params, grad_outputs=self.floor)
            for p, g in zip(params, grads):
                p.grad = g.detach()
            if self.scaler is None:
                self.optimizer.step()
            else:
                self.scaler.step(self.optimizer)  # unscales, checks for overflow
            model.eval()
            val = ce(model(xv), yv)
            with self._backward():
                torch.autograd.grad(val, params)
            model.train()
            return
        if self.tuner is None:
            self.optimizer.zero_grad(set_to_none=True)
            loss = ce(model(x), y)
            with self._backward():
                if self.scaler is None:
                    loss.backward()
                    self.optimizer.step()
                else:
                    self.scaler.scale(loss).backward()
                    self.scaler.step(self.optimizer)
            return

        def closure() -> torch.Tensor:
            return ce(model(x), y)

        if self.tuner.outer == "training":
            self.tuner.step(closure, scaler=self.scaler)
            return

        def val_loss() -> torch.Tensor:
            model.eval()
            try:
                return ce(model(xv), yv)
            finally:
                model.train()

        part = None
        if self.part is not None:
            def part() -> torch.Tensor:
                return ce(model(x[:self.part]), y[:self.part])

        self.tuner.step(closure, val_loss=val_loss, scaler=self.scaler, hvp_loss=part)


def _batches(config: BenchConfig, device: torch.device, n: int = 4):
    g = torch.Generator().manual_seed(config.seed)
    shape = (config.batch_size, *config.input_shape)
    out = []
    for _ in range(n):
        x = torch.randn(shape, generator=g)
        y = torch.randint(0, config.num_classes, (config.batch_size,), generator=g)
        xv = torch.randn(shape, generator=g)
        yv = torch.randint(0, config.num_classes, (config.batch_size,), generator=g)
        out.append(tuple(t.to(device) for t in (x, y, xv, yv)))
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_methods(config: BenchConfig, labels: Sequence[str],
                 on_round: Callable[[int], None] | None = None) -> dict[str, list[float]]:
    """Seconds per step for each label, steps interleaved round-robin (a tuner with
    ``hyper_every`` k: each figure is the mean of a cycle of k steps)."""
    device = resolve_device(config.device)
    batches = _batches(config, device)
    runners = {label: _Runner(config, label, device, batches) for label in labels}
    times: dict[str, list[float]] = {label: [] for label in labels}
    for r in range(config.warmup + config.steps):
        for label, runner in runners.items():
            _sync(device)
            start = time.perf_counter()
            runner.step()
            _sync(device)
            if r >= config.warmup:
                times[label].append((time.perf_counter() - start) / runner.cycle)
        if on_round is not None:
            on_round(r + 1)
    return times


def spread(seconds: Sequence[float]) -> float | None:
    """The interquartile range of ``seconds`` over their median; None for fewer than 4."""
    if len(seconds) < 4:
        return None
    q1, _, q3 = statistics.quantiles(seconds, n=4)
    median = statistics.median(seconds)
    return (q3 - q1) / median if median > 0 else None


def peak_memory_mb(config: BenchConfig, label: str) -> float:
    """Peak memory of ``steps`` steps of one method, in a fresh subprocess."""
    payload = json.dumps({**asdict(config), "label": label})
    proc = subprocess.run([sys.executable, "-m", "adatune.bench.measure", payload],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"memory probe for {label} failed: {proc.stderr.strip()[-500:]}")
    return float(json.loads(proc.stdout)["peak_mb"])


def run_bench(config: BenchConfig, on_round: Callable[[int], None] | None = None) -> BenchResult:
    labels = config.labels()
    device = resolve_device(config.device)
    times = time_methods(config, labels, on_round)
    medians = {label: statistics.median(ts) for label, ts in times.items()}
    results = []
    for label in labels:
        peak = peak_memory_mb(config, label) if config.memory else None
        results.append(MethodResult(method=label, step_ms=medians[label] * 1e3,
                                    ratio=medians[label] / medians["plain"], peak_mb=peak,
                                    spread=spread(times[label])))
    return BenchResult(config=config, device=str(device), results=tuple(results))


def _child(payload: str) -> None:
    """Subprocess entry: run one method and print its peak memory as JSON."""
    data = json.loads(payload)
    label = data.pop("label")
    data["hvp"] = tuple(data["hvp"])
    data["hyper_every"] = tuple(data["hyper_every"])
    data["hvp_fraction"] = tuple(data["hvp_fraction"])
    data["input_shape"] = tuple(data["input_shape"])
    data["methods"] = tuple(data["methods"])
    config = BenchConfig(**{**data, "memory": False})
    device = resolve_device(config.device)
    runner = _Runner(config, label, device, _batches(config, device))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(min(config.warmup + config.steps, 4)):
        runner.step()
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak = _peak_rss_mb()
    print(json.dumps({"peak_mb": peak}))


def _peak_rss_mb() -> float:
    """This process's peak resident memory.

    Linux's ``ru_maxrss`` survives fork+exec, so a child would report its parent's
    peak; ``VmHWM`` belongs to the new address space and does not.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    import resource

    scale = 2**20 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


if __name__ == "__main__":
    _child(sys.argv[1])
