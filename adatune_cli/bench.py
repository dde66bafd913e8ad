"""``adatune bench``: what a tuned step costs on this machine."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from adatune.bench.config import HVP_MODES, METHODS, NOISY_SPREAD, BenchConfig
from adatune.errors import ConfigError
from adatune.running.preflight import check_device
from adatune_cli._common import err, out
from adatune_cli.main import app


def _csv(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _whole_csv(name: str, text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in _csv(text))
    except ValueError:
        raise ConfigError(f"invalid {name}: {text!r} (whole numbers, comma-separated)") from None


def _number_csv(name: str, text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in _csv(text))
    except ValueError:
        raise ConfigError(f"invalid {name}: {text!r} (numbers, comma-separated)") from None


@app.command("bench")
def bench_command(
    network: Annotated[str, typer.Option("--network", help="Network to time.")]
    = BenchConfig.network,
    batch_size: Annotated[int, typer.Option("--batch-size")] = BenchConfig.batch_size,
    optimizer: Annotated[str, typer.Option("--optimizer", help="sgd, adam or adamw.")]
    = BenchConfig.optimizer,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or mps.")]
    = BenchConfig.device,
    steps: Annotated[int, typer.Option("--steps", help="Timed steps per method.")]
    = BenchConfig.steps,
    warmup: Annotated[int, typer.Option("--warmup", help="Untimed steps first.")]
    = BenchConfig.warmup,
    methods: Annotated[str, typer.Option(
        "--methods", help=f"Comma-separated subset of {','.join(METHODS)} (floor: the "
                          "autograd work MARTHE cannot avoid, without the tuner; see above).")]
    = ",".join(BenchConfig.methods),
    hvp: Annotated[str, typer.Option(
        "--hvp", help=f"HVP modes for marthe/rtho, comma-separated: {','.join(HVP_MODES)}.")]
    = ",".join(BenchConfig.hvp),
    hyper_every: Annotated[str, typer.Option(
        "--hyper-every", help="hyper_every values for marthe/rtho, comma-separated (k: the "
                              "HVP and validation gradient on one step in k; timed over "
                              "whole cycles of k steps).")]
    = ",".join(str(k) for k in BenchConfig.hyper_every),
    hvp_fraction: Annotated[str, typer.Option(
        "--hvp-fraction", help="Fractions of the batch marthe/rtho take their HVP on, "
                               "comma-separated (1: the whole batch).")]
    = ",".join(f"{f:g}" for f in BenchConfig.hvp_fraction),
    memory: Annotated[bool, typer.Option(
        "--memory/--no-memory", help="Measure peak memory (a fresh process per method).")]
    = BenchConfig.memory,
    precision: Annotated[str, typer.Option(
        "--precision", help="fp32, or the forward under autocast: bf16, fp16 (with a "
                            "GradScaler).")] = BenchConfig.precision,
    as_json: Annotated[bool, typer.Option("--json", help="JSON on stdout.")] = False,
) -> None:
    """Median step time and peak memory of a plain step, HD, MARTHE (mu=0), MARTHE and RTHO.

    Inputs are synthetic CIFAR-shaped batches (3x32x32, 10 classes); SGD uses
    momentum 0.9 and weight decay 5e-4. Ratios are to the plain step, measured
    in one process with the methods' steps interleaved.

    floor: the autograd work an exact MARTHE step cannot avoid (a gradient with
    create_graph, one Hessian-vector product, a validation gradient and the
    optimizer step), with no tuner code at all; MARTHE's time over floor's is
    the tuner's own overhead. floor-torch: the same with torch's own
    double-backward formulas.

    spread: the interquartile range of a method's step times over their median
    (from 4 steps). Above 25%, the machine's other work moved the times more
    than the methods did: the command warns, and its ratios are not to be
    trusted; measure on a quiet machine, or with more --steps.

    Example: adatune bench --network resnet18 --steps 10
    """
    config = BenchConfig(network=network, batch_size=batch_size, optimizer=optimizer,
                         device=device, steps=steps, warmup=warmup, methods=_csv(methods),
                         hvp=_csv(hvp), hyper_every=_whole_csv("hyper_every", hyper_every),
                         hvp_fraction=_number_csv("hvp_fraction", hvp_fraction),
                         memory=memory, precision=precision)
    check_device(config.device)  # before torch
    total = config.warmup + config.steps
    if not as_json:
        err.print(f"timing {len(config.labels())} methods on {config.network}, batch "
                  f"{config.batch_size}, {total} interleaved rounds ...", markup=False)
    from adatune.bench.measure import run_bench  # torch

    result = run_bench(config)
    if as_json:
        typer.echo(json.dumps(result.to_json(), indent=2))
        return
    plain_peak = result.results[0].peak_mb
    table = Table(title=f"{config.network}, batch {config.batch_size}, {config.optimizer}, "
                        f"{config.precision}, {result.device} (median of {config.steps} steps)",
                  title_justify="left")
    memory = any(r.peak_mb is not None for r in result.results)  # --no-memory: no columns
    for column in ("method", "step ms", "spread", "x plain", *("peak MB", "x plain") * memory):
        table.add_column(column, justify="right")
    for r in result.results:
        peak = "-" if r.peak_mb is None else f"{r.peak_mb:.0f}"
        peak_ratio = ("-" if r.peak_mb is None or not plain_peak
                      else f"{r.peak_mb / plain_peak:.2f}")
        spread = "-" if r.spread is None else f"{r.spread:.0%}" + (" !" if r.noisy else "")
        table.add_row(escape(r.method), f"{r.step_ms:.1f}", spread, f"{r.ratio:.2f}",
                      *(peak, peak_ratio) * memory)
    out.print(table)
    noisy = [r for r in result.results if r.noisy]
    if noisy:
        which = ", ".join(f"{r.method} {r.spread:.0%}" for r in noisy)
        err.print(f"adatune: warning: the step times spread over more than "
                  f"{NOISY_SPREAD:.0%} of their median ({which}): other work on this machine "
                  "moved them, so the ratios are unreliable; measure on a quiet machine or "
                  "with more --steps", markup=False, highlight=False)
