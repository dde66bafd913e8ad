"""`adatune bench` output shape on a tiny network (timings are not asserted)."""

import json

import pytest

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
        assert set(r) == {"method", "step_ms", "ratio", "peak_mb"}
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
