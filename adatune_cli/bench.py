"""``adatune bench``: what a tuned step costs on this machine."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from adatune.bench.config import HVP_MODES, METHODS, BenchConfig
from adatune_cli._common import err, out
from adatune_cli.main import app


def _csv(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


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
        "--methods", help=f"Comma-separated subset of {','.join(METHODS)}.")]
    = ",".join(BenchConfig.methods),
    hvp: Annotated[str, typer.Option(
        "--hvp", help=f"HVP modes for marthe/rtho, comma-separated: {','.join(HVP_MODES)}.")]
    = ",".join(BenchConfig.hvp),
    memory: Annotated[bool, typer.Option(
        "--memory/--no-memory", help="Measure peak memory (a fresh process per method).")]
    = BenchConfig.memory,
    as_json: Annotated[bool, typer.Option("--json", help="JSON on stdout.")] = False,
) -> None:
    """Median step time and peak memory of a plain step, HD, MARTHE (mu=0), MARTHE and RTHO.

    Inputs are synthetic CIFAR-shaped batches (3x32x32, 10 classes); SGD uses
    momentum 0.9 and weight decay 5e-4. Ratios are to the plain step, measured
    in one process with the methods' steps interleaved.

    Example: adatune bench --network resnet18 --steps 10
    """
    config = BenchConfig(network=network, batch_size=batch_size, optimizer=optimizer,
                         device=device, steps=steps, warmup=warmup, methods=_csv(methods),
                         hvp=_csv(hvp), memory=memory)
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
                        f"{result.device} (median of {config.steps} steps)",
                  title_justify="left")
    for column in ("method", "step ms", "x plain", "peak MB", "x plain"):
        table.add_column(column, justify="right")
    for r in result.results:
        peak = "-" if r.peak_mb is None else f"{r.peak_mb:.0f}"
        peak_ratio = ("-" if r.peak_mb is None or not plain_peak
                      else f"{r.peak_mb / plain_peak:.2f}")
        table.add_row(escape(r.method), f"{r.step_ms:.1f}", f"{r.ratio:.2f}", peak, peak_ratio)
    out.print(table)
