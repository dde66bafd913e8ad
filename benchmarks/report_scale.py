"""How big and how fast is the HTML report of 200 runs x 200 epochs?

Builds synthetic runs (tuners with step traces, baselines without), times
``adatune.report.write_html`` (median of a few writes, one process) and prints
the file size. The issue's target: under 5 MB, written in under 5 s.

    .venv/bin/python benchmarks/report_scale.py [--runs 200] [--epochs 200] [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from adatune.report import write_html
from adatune.report.synthetic import METHODS, TUNERS, synthetic_details


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument(
        "--steps-per-epoch", type=int, default=20, help="step records per epoch of each tuner run"
    )
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--tuners-only", action="store_true", help="every run a tuner (the largest report)"
    )
    args = parser.parse_args(argv)

    methods = TUNERS if args.tuners_only else METHODS
    t0 = time.perf_counter()
    details = synthetic_details(
        args.runs, args.epochs, methods=methods, steps_per_epoch=args.steps_per_epoch
    )
    build_s = time.perf_counter() - t0
    n_steps = sum(len(d.steps) for d in details)
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "report.html"
        for _ in range(args.repeat):
            t = time.perf_counter()
            write_html(details, path)
            times.append(time.perf_counter() - t)
        size = path.stat().st_size
    print(
        f"runs {args.runs} x epochs {args.epochs}, {n_steps} step records "
        f"({', '.join(methods)}); synthetic data built in {build_s:.2f} s"
    )
    print(f"size {size / 1e6:.2f} MB ({size} bytes)")
    print(
        f"write_html: median {statistics.median(times):.2f} s, min {min(times):.2f} s, "
        f"max {max(times):.2f} s over {args.repeat} (the first includes compressing plotly.js)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
