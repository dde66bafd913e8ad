"""How fast does the `adatune` command answer, and reject bad input?

Each command runs in a fresh process (`python -m adatune_cli ...`, what the
`adatune` script runs) and is timed from start to exit; peak memory is the
process's peak RSS (wait4). Every round runs every command once, in the same
order, so machine noise hits all of them alike; the table gives the median of
--repeat rounds (5), in seconds and as ratios to `python -c pass` and
`python -c "import torch"`, both timed in the same rounds. The CPU seconds
(user + system) of each process are given too: on a loaded machine they are
closer to what the command costs on an idle one than the wall time is.

The store read by `runs` and `report` holds --runs synthetic runs (200) of
--epochs epochs (200), the tuner runs with 20 step records per epoch
(`adatune.report.synthetic`), built once at the start (or reused with --keep).
A child process's peak memory includes the parent's at the start (the floor
is `python -c pass`'s row); this script imports nothing heavy itself.

With --baseline-tree DIR every adatune command is also run from another source
tree (PYTHONPATH=DIR), interleaved with this one: a before/after comparison
under the same load. Make DIR from a commit with `git archive REV | tar -x -C DIR`.

    .venv/bin/python benchmarks/cli_startup.py [--repeat 5] [--runs 200] [--epochs 200]
        [--baseline-tree DIR] [--keep DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# The targets, by command label: seconds, or "baseline" (no slower than it).
TARGETS = {"adatune --help": 0.5, "runs list": 1.0, "report html": "baseline"}
BAD_INPUT_TARGET = 1.0


@dataclass(frozen=True)
class Case:
    label: str
    argv: tuple[str, ...]  # after `python`
    code: int  # expected exit code
    adatune: bool = True  # an adatune command (also timed from --baseline-tree)
    bad_input: bool = False


def _cases(d: Path) -> list[Case]:
    lst, newer = str(d / "runs.db"), str(d / "newer.db")
    cli = ("-m", "adatune_cli")

    def a(label: str, *args: str, code: int = 0) -> Case:
        return Case(label, (*cli, *args), code, bad_input=code == 2)

    return [
        Case("python -c pass", ("-c", "pass"), 0, adatune=False),
        Case('python -c "import torch"', ("-c", "import torch"), 0, adatune=False),
        a("adatune --help", "--help"),
        a("adatune --version", "--version"),
        a("runs list", "runs", "list", "--store", lst),
        a("runs show 1", "runs", "show", "1", "--store", lst),
        a("report table", "report", "table", "--store", lst),
        a("report html", "report", "html", "--store", lst, "-o", str(d / "report.html")),
        a("db current", "db", "current", "--store", lst),
        a("db check", "db", "check", "--store", lst),
        a("sweep --show-space", "sweep", "--method", "marthe", "--show-space"),
        a("train --lr -1", "train", "--lr", "-1", "--store", str(d / "unused.db"), code=2),
        a("train --network nope", "train", "--network", "nope", "--store", str(d / "unused.db"),
          code=2),
        a("train, missing mnist files", "train", "--dataset", "mnist", "--data-dir",
          str(d / "no-data"), "--store", str(d / "unused.db"), code=2),
        a("train, store of a newer schema", "train", "--store", newer, code=2),
        a("baseline --lr-scheduler nope", "baseline", "--lr-scheduler", "nope", "--store",
          str(d / "unused.db"), code=2),
        a("find-alpha --factor 0.5", "find-alpha", "--factor", "0.5", "--store",
          str(d / "unused.db"), code=2),
        a("sweep --trials 0", "sweep", "--method", "marthe", "--trials", "0", "--store",
          str(d / "unused.db"), code=2),
        a("train --loss nope", "train", "--loss", "nope", "--store", str(d / "unused.db"),
          code=2),
        a("train --model, missing module", "train", "--model", "adatune_no_such_module:make",
          "--store", str(d / "unused.db"), code=2),
        a("baseline --method nope", "baseline", "--method", "nope", "--store",
          str(d / "unused.db"), code=2),
    ]


def _build_stores(d: Path, runs: int, epochs: int) -> str:
    from adatune.report.synthetic import record_details, synthetic_details
    from adatune.store import VERSION_TABLE, open_store

    made = []
    if not (d / "runs.db").exists():
        t = time.perf_counter()
        details = synthetic_details(runs, epochs, steps_per_epoch=20)
        partial = d / "runs.db.partial"
        partial.unlink(missing_ok=True)
        with open_store(partial) as store:
            record_details(store, details)
        partial.rename(d / "runs.db")
        n_steps = sum(len(x.steps) for x in details)
        made.append(f"{runs} runs x {epochs} epochs, {n_steps} step records "
                    f"({time.perf_counter() - t:.0f} s)")
    if not (d / "newer.db").exists():
        with open_store(d / "newer.db"):
            pass
        with contextlib.closing(sqlite3.connect(d / "newer.db")) as db:
            with db:  # as if a later adatune had migrated it
                db.execute(f"UPDATE {VERSION_TABLE} SET version_num = 'f00dfeedbeef'")
        made.append("a store at an unknown (newer) schema revision")
    return "built " + "; ".join(made) if made else f"reused the stores in {d}"


def _time(argv: list[str], env: dict[str, str], cwd: Path,
          code: int) -> tuple[float, float, float]:
    """(wall s, CPU s, peak RSS MB) of one process; exits if its exit code is not ``code``."""
    with tempfile.TemporaryFile() as errors:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=errors, env=env,
                                cwd=cwd)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != code:
            errors.seek(0)
            tail = errors.read().decode(errors="replace")[-2000:]
            sys.exit(f"{' '.join(argv)} exited {proc.returncode}, expected {code}:\n{tail}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024  # kB on Linux


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--baseline-tree", type=Path, default=None,
                        help="also time every adatune command from this source tree")
    parser.add_argument("--keep", type=Path, default=None,
                        help="build the stores in this folder, or reuse them if there")
    parser.add_argument("--build-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.build_only:
        print(_build_stores(args.keep, args.runs, args.epochs), flush=True)
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        d = (args.keep or Path(tmp)).absolute()
        d.mkdir(parents=True, exist_ok=True)
        # In a child: this process stays small, because a child's peak RSS counts the
        # parent's memory it was started from (the floor is python -c pass's peak).
        subprocess.run([sys.executable, __file__, "--build-only", "--keep", str(d), "--runs",
                        str(args.runs), "--epochs", str(args.epochs)], check=True)
        (d / "no-data").mkdir(exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k not in ("ADATUNE_STORE", "PYTHONPATH")}
        trees = {"this": env}
        if args.baseline_tree is not None:
            trees["baseline"] = {**env, "PYTHONPATH": str(args.baseline_tree.absolute())}
        cases = _cases(d)
        load_before = os.getloadavg()
        times: dict[tuple[str, str], list[float]] = {}
        peaks: dict[tuple[str, str], list[float]] = {}
        cpus: dict[tuple[str, str], list[float]] = {}
        for r in range(args.repeat):
            for case in cases:
                for tree, tree_env in trees.items():
                    if tree != "this" and not case.adatune:
                        continue
                    wall, cpu, peak = _time([sys.executable, *case.argv], tree_env, Path(tmp),
                                            case.code)
                    times.setdefault((case.label, tree), []).append(wall)
                    cpus.setdefault((case.label, tree), []).append(cpu)
                    peaks.setdefault((case.label, tree), []).append(peak)
            print(f"round {r + 1} of {args.repeat} done", file=sys.stderr, flush=True)

    def med(label: str, tree: str = "this") -> float:
        return statistics.median(times[(label, tree)])

    ref_pass, ref_torch = med("python -c pass"), med('python -c "import torch"')
    head = "| command | s | × `python -c pass` | × `import torch` | CPU s | peak MB |"
    rule = "|---|---:|---:|---:|---:|---:|"
    if "baseline" in trees:
        head += " baseline s | baseline CPU s | baseline peak MB | speed-up |"
        rule += "---:|---:|---:|---:|"
    head += " target |"
    rule += "---|"
    def load(avg: tuple[float, float, float]) -> str:
        return " ".join(f"{x:.1f}" for x in avg)

    print(f"\nmedian of {args.repeat} runs; Python {sys.version.split()[0]}, "
          f"{os.cpu_count()} CPUs, load average (1, 5, 15 min) at the start "
          f"{load(load_before)}, at the end {load(os.getloadavg())}\n")
    print(head)
    print(rule)
    for case in cases:
        s = med(case.label)
        peak = statistics.median(peaks[(case.label, "this")])
        cpu = statistics.median(cpus[(case.label, "this")])
        row = (f"| {case.label} | {s:.2f} | {s / ref_pass:.1f} | {s / ref_torch:.2f} | "
               f"{cpu:.2f} | {peak:.0f} |")
        target = TARGETS.get(case.label, BAD_INPUT_TARGET if case.bad_input else None)
        if "baseline" in trees:
            if case.adatune:
                b = med(case.label, "baseline")
                bpeak = statistics.median(peaks[(case.label, "baseline")])
                bcpu = statistics.median(cpus[(case.label, "baseline")])
                row += f" {b:.2f} | {bcpu:.2f} | {bpeak:.0f} | {b / s:.1f}× |"
            else:
                row += " | | | |"
        if target == "baseline":
            verdict = ("" if "baseline" not in trees else
                       " (met)" if s <= med(case.label, "baseline") else " (MISSED)")
            row += f" no slower than before{verdict} |"
        elif target is not None:
            row += f" < {target:g} s ({'met' if s < target else 'MISSED'}) |"
        else:
            row += " |"
        print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
