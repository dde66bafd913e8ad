"""`adatune bench` output shape on a tiny network (timings are not asserted)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from adatune.bench.measure import BenchConfig
from tests._cli import cli


@pytest.mark.slow
def test_bench_json_shape_with_memory(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(capsys, "bench", "--network", "mlp", "--batch-size", "8", "--steps",
                         "2", "--warmup", "0", "--methods", "plain,marthe", "--hvp",
                         "exact,finite-difference", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert [r["method"] for r in data["results"]] == [
        "plain", "marthe", "marthe[finite-difference]"]
    for r in data["results"]:
        assert set(r) == {"method", "step_ms", "ratio", "peak_mb", "spread"}
        assert r["step_ms"] > 0 and r["peak_mb"] > 0
    assert data["results"][0]["ratio"] == 1.0


def test_bench_every_method_in_one_table(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(capsys, "bench", "--network", "mlp", "--batch-size", "8", "--steps",
                         "1", "--warmup", "0", "--no-memory")
    assert code == 0, err
    for label in BenchConfig().labels():
        assert label in out


def test_bench_bad_input(capsys):
    code, _, err = cli(capsys, "bench", "--steps", "0")
    assert code == 2 and err.startswith("adatune: error:")
    code, _, err = cli(capsys, "bench", "--methods", "plain,sgd-hd")
    assert code == 2 and "unknown method" in err


def test_the_spread_of_a_figure_is_its_interquartile_range_over_its_median():
    from adatune.bench.measure import spread

    assert spread([1.0, 1.0, 1.0]) is None  # too few steps to say
    assert spread([1.0, 1.0, 1.0, 1.0]) == 0.0
    assert spread([1.0, 2.0, 3.0, 4.0, 5.0]) == pytest.approx((4.5 - 1.5) / 3)


def test_bench_warns_when_a_figure_spreads_over_a_quarter_of_its_median(capsys, monkeypatch):
    from adatune.bench import measure
    from adatune.bench.config import BenchResult, MethodResult

    def fake(config, on_round=None):
        return BenchResult(config, "cpu", (
            MethodResult("plain", 10.0, 1.0, None, spread=0.05),
            MethodResult("rtho", 610.0, 61.0, None, spread=0.6),
            MethodResult("hd", 11.0, 1.1, None, spread=0.25)))  # at the bound: not flagged

    monkeypatch.setattr(measure, "run_bench", fake)
    code, out, err = cli(capsys, "bench", "--network", "mlp", "--no-memory")
    assert code == 0, err
    [warning] = [line for line in err.splitlines() if "warning" in line]
    assert "rtho 60%" in warning and "hd" not in warning and "plain" not in warning
    assert "60% !" in out and "peak MB" not in out  # no memory measured: no memory columns
    code, help_text, _ = cli(capsys, "bench", "--help")
    assert "floor:" in " ".join(help_text.split()) and "spread:" in help_text


def test_bench_times_the_transformer_block(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(capsys, "bench", "--network", "transformer", "--batch-size", "2",
                         "--steps", "1", "--warmup", "0", "--methods", "plain,marthe",
                         "--no-memory", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["network"] == "transformer"
    assert [r["method"] for r in data["results"]] == [
        "plain", "marthe", "marthe[finite-difference]"]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_bench_times_each_precision(capsys, tmp_path, monkeypatch, precision):
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(capsys, "bench", "--network", "lenet", "--batch-size", "2",
                         "--steps", "1", "--warmup", "0", "--no-memory", "--json",
                         "--precision", precision)
    assert code == 0, err
    data = json.loads(out)
    assert data["precision"] == precision
    assert {r["method"] for r in data["results"]} >= {"plain", "marthe", "floor"}
    assert all(r["step_ms"] > 0 for r in data["results"])


def test_bench_refuses_an_unknown_precision_in_one_line(capsys):
    code, out, err = cli(capsys, "bench", "--precision", "fp8")
    assert code == 2 and out == ""
    assert err.strip().count("\n") == 0 and "unknown precision 'fp8'" in err


def test_the_gpu_script_parses_and_says_so_without_a_gpu(tmp_path):
    """benchmarks/gpu.sh is ready for a GPU machine: valid bash, and one line without one."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.sh"
    assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is here: the script would run its checks")
    env = {**os.environ, "OUT": str(tmp_path / "out"), "PATH": os.path.dirname(sys.executable)
           + os.pathsep + os.environ.get("PATH", "")}
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env,
                          check=False)
    assert proc.returncode == 2 and proc.stderr.strip() == "gpu.sh: no CUDA device here"
