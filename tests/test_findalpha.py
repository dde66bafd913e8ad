"""`adatune find-alpha`: probes, verdicts and reasons, determinism, --then-train, exits.

The unstable setting: online RTHO (the papers' tuner) under the additive rule
with a hyper-LR ten times its default (1e-3) on digits, 3-epoch probes on half
the training set. There
alpha 1 and 0.1 blow the training loss up in epoch 3, alpha 0.01 and 0.001
train but end over a point below the reference probe (alpha 0: 90.3%), and
1e-4 is stable (measured; the search is deterministic, so these verdicts are
exact).
The scale-free rule bounds every step, so the searches that must diverge use
the additive one; the scale-free rule's own ladders are tested at the end.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from adatune.errors import ConfigError
from adatune.report.info import _get_find_alpha_info
from adatune.running.config import TrainConfig
from adatune.search.findalpha import SearchConfig, SearchEvents, find_alpha, probe_config
from adatune.store import open_store
from tests._cli import cli

ADDITIVE = ["--hyper-update", "additive"]
UNSTABLE = ["--tuner", "rtho", "--online", *ADDITIVE, "--hyper-lr", "1e-3", "--alpha-max", "1",
            "--probe-epochs", "3", "--probe-fraction", "0.5", "--device", "cpu"]
LOSS_REASON = r"training loss [0-9.e+]+ exceeds 3x its initial 2\.304 at epoch 3, step \d+"


def _json(capsys, *args: str) -> tuple[int, dict, str]:
    code, out, err = cli(capsys, "find-alpha", *args, "--json")
    return code, json.loads(out), err


def _rungs(data: dict) -> list[dict]:
    """The probes of the ladder (and refinement), after the reference probe."""
    reference, *rungs = data["probes"]
    assert reference["phase"] == "reference"
    return rungs


def _details(store: str = "adatune.db"):
    with open_store(store) as db:
        return [db.get_run(r.id) for r in db.list_runs()]


@pytest.mark.slow
def test_unstable_setting_diverges_at_high_alpha_and_is_stable_lower(workdir, capsys):
    code, data, err = _json(capsys, *UNSTABLE)
    assert code == 0, err
    probes = _rungs(data)
    assert (data["probes"][0]["alpha"], data["probes"][0]["status"]) == (0.0, "stable")
    assert [(p["alpha"], p["status"]) for p in probes] == [
        (1.0, "diverged"), (0.1, "diverged"), (0.01, "worse"), (0.001, "worse"),
        (1e-4, "stable")]
    assert data["alpha"] == 1e-4 and data["search"] == "alpha"
    for p in probes[:2]:  # stopped in their third epoch by the loss rule
        assert re.fullmatch(LOSS_REASON, p["reason"]), p["reason"]
        assert p["epochs"] == 2
    for p in probes[2:4]:  # trained to the end, judged against the reference
        assert p["reason"] == "the reference has 90.3%" and p["val_acc"] < 0.893
    assert probes[4]["reason"] is None and probes[4]["epochs"] == 3

    # The store: one find-alpha run, its probes linked to it.
    with open_store("adatune.db") as db:
        [search] = db.list_runs(kind="find-alpha")
        runs = db.list_runs(kind="probe", parent_id=search.id)
    assert search.id == data["search_run_id"] and search.status == "completed"
    assert search.summary["alpha"] == 1e-4 and search.summary["search"] == "alpha"
    assert search.config["search"]["ladder"][:3] == [1.0, 0.1, 0.01]
    by_id = {r.id: r for r in runs}
    assert sorted(by_id) == [p["run_id"] for p in data["probes"]]
    for p in data["probes"]:
        run = by_id[p["run_id"]]
        assert run.config["alpha"] == p["alpha"] and run.config["epochs"] == 3
        assert run.config["train_subset"] == 0.5 and run.config["hyper_lr"] == 1e-3
        diverged = p["status"] == "diverged"
        assert run.status == ("diverged" if diverged else "completed")
        assert run.epochs == p["epochs"] and run.error == (p["reason"] if diverged else None)

    # The HTML report's view of the same search.
    [info] = _get_find_alpha_info(_details()).searches
    assert info.parameter == "alpha" and info.chosen == 1e-4
    assert [(p.value, p.status) for p in info.probes] == [
        (0.0, "completed"), (1e-4, "completed"), (0.001, "completed"), (0.01, "completed"),
        (0.1, "diverged"), (1.0, "diverged")]


@pytest.mark.slow
def test_same_seed_same_search_and_refine_bisects_in_log_space(workdir, capsys):
    runs = [_json(capsys, *UNSTABLE, "--refine", "1") for _ in range(2)]
    assert [code for code, _, _ in runs] == [0, 0]
    first, second = (data for _, data, _ in runs)

    def strip(data):
        return [{k: v for k, v in p.items() if k != "run_id"} for p in data["probes"]]

    assert strip(first) == strip(second) and first["alpha"] == second["alpha"]
    refine = first["probes"][-1]
    # between the last rung that did harm (0.001, worse) and the stable one (1e-4)
    assert refine["phase"] == "refine" and math.isclose(refine["alpha"], math.sqrt(1e-3 * 1e-4))
    assert len(_rungs(first)) == 6
    # the answer is the largest value judged stable
    assert first["alpha"] == max(p["alpha"] for p in first["probes"] if p["status"] == "stable")
    # probe by probe, epoch by epoch, the same numbers
    with open_store("adatune.db") as db:
        for a, b in zip(first["probes"], second["probes"], strict=True):
            ea, eb = (db.get_run(p["run_id"]).epochs for p in (a, b))
            strip_time = [[{**vars(e), "elapsed_s": 0} for e in x] for x in (ea, eb)]
            assert strip_time[0] == strip_time[1]


def test_hyper_lr_search_and_the_lr_explosion_rule(workdir, capsys):
    code, data, err = _json(capsys, "--search", "hyper-lr", "--tuner", "rtho", "--online",
                            *ADDITIVE,
                            "--hyper-lr-max", "1", "--hyper-lr-min", "1e-4", "--probe-epochs",
                            "2", "--probe-fraction", "0.5", "--device", "cpu")
    assert code == 0, err
    probes = _rungs(data)
    assert data["probes"][0]["hyper_lr"] == 1e-4  # the reference: the rule's default
    assert [(p["hyper_lr"], p["status"]) for p in probes] == [
        (1.0, "diverged"), (0.1, "diverged"), (0.01, "diverged"), (0.001, "worse"),
        (1e-4, "stable")]
    assert data["hyper_lr"] == 1e-4 and "alpha" not in data
    assert re.fullmatch(r"training loss [0-9.e+]+ exceeds 3x its initial 2\.304 at epoch 1, "
                        r"step \d+", probes[0]["reason"])
    assert re.fullmatch(r"learning rate exploded to [0-9.]+ \(over 100x the initial 0\.05\) at "
                        r"epoch 2, step \d+", probes[2]["reason"])
    with open_store("adatune.db") as db:
        [search] = db.list_runs(kind="find-alpha")
        runs = db.list_runs(kind="probe", parent_id=search.id)
    assert search.summary["search"] == "hyper-lr" and search.summary["hyper_lr"] == 1e-4
    assert sorted(r.config["hyper_lr"] for r in runs) == [1e-4, 1e-4, 0.001, 0.01, 0.1, 1.0]
    assert {r.config["alpha"] for r in runs} == {0.0}
    [info] = _get_find_alpha_info(_details()).searches
    assert info.parameter == "hyper-lr" and info.chosen == 1e-4
    assert [p.value for p in info.probes] == [1e-4, 1e-4, 0.001, 0.01, 0.1, 1.0]


def test_then_train_runs_the_full_training_with_the_found_alpha(workdir, capsys):
    code, out, err = cli(capsys, "find-alpha", *ADDITIVE, "--alpha-max", "1e-5",
                         "--alpha-min", "1e-6", "--probe-epochs", "1", "--epochs", "2",
                         "--then-train",
                         "--name", "fa", "--device", "cpu")
    assert code == 0, err
    with open_store("adatune.db") as db:
        [search] = db.list_runs(kind="find-alpha")
        reference, probe = sorted(db.list_runs(kind="probe"), key=lambda r: r.id)
        [trained] = db.list_runs(kind="train")
    assert reference.config["alpha"] == 0.0 and probe.config["alpha"] == 1e-5
    assert probe.parent_id == search.id and probe.status == "completed" and probe.epochs == 1
    assert trained.config["alpha"] == 1e-5 and search.summary["alpha"] == 1e-5
    assert trained.status == "completed" and trained.epochs == 2
    assert trained.config["extra"]["find_alpha_search"] == search.id
    assert trained.name == "fa" and trained.parent_id is None
    assert "recommended alpha: 1e-05" in out
    assert "the largest alpha probed was stable" in out  # the answer may be larger
    assert f"run {trained.id} completed" in out


def test_every_alpha_diverges_exits_1_with_one_line(workdir, capsys):
    code, out, err = cli(capsys, "find-alpha", "--tuner", "rtho", "--online", *ADDITIVE,
                         "--hyper-lr", "1", "--alpha-max", "1e-2", "--alpha-min", "1e-4",
                         "--probe-epochs", "2", "--json", "--then-train", "--device", "cpu")
    assert code == 1
    data = json.loads(out)
    assert data["alpha"] is None
    assert [(p["alpha"], p["status"]) for p in data["probes"]] == [
        (0.0, "diverged"), (0.01, "diverged"), (0.001, "diverged"), (0.0001, "diverged")]
    errors = [line for line in err.splitlines() if line.startswith("adatune: error:")]
    assert errors == ["adatune: error: every alpha from 0.01 down to 0.0001 diverged: lower "
                      "--hyper-lr (now 1) or --lr (now 0.05), then search again"]
    assert "Traceback" not in err
    with open_store("adatune.db") as db:
        [search] = db.list_runs(kind="find-alpha")
        assert db.list_runs(kind="train") == []  # --then-train had nothing to train with
    assert search.status == "completed" and search.summary["alpha"] is None


@pytest.mark.parametrize("args", [
    ["--alpha-max", "1e-4", "--alpha-min", "1e-4"],
    ["--alpha-max", "1e-5", "--alpha-min", "1e-3"],
    ["--alpha-min", "2"],  # above the default alpha-max (1, scale-free)
    [*ADDITIVE, "--alpha-min", "0.1"],  # above the additive rule's default alpha-max
    ["--alpha-max", "2"],  # the scale-free rule's alpha is at most 1
    ["--search", "hyper-lr", "--hyper-lr-max", "5"],  # its hyper-LR too
    ["--hyper-update", "multiplicative"],
    ["--alpha-max", "0"],
    ["--alpha-max", "nan"],
    ["--factor", "1"],
    ["--factor", "0.5"],
    ["--probe-epochs", "0"],
    ["--probe-fraction", "0"],
    ["--probe-fraction", "1.5"],
    ["--refine", "-1"],
    ["--tuner", "cosine"],
    ["--tuner", "constant"],
    ["--tuner", "staircase"],
    ["--tuner", "sgd"],
    ["--search", "lr"],
    ["--alpha", "1e-3"],
    ["--search", "hyper-lr", "--hyper-lr", "1e-3"],
    ["--search", "hyper-lr", "--alpha-max", "1e-3"],
    ["--hyper-lr-max", "1e-3"],
    ["--search", "hyper-lr", "--hyper-lr-max", "1e-6", "--hyper-lr-min", "1e-5"],
    ["--probe-loss-factor", "1"],
    ["--probe-lr-factor", "0.5"],
    ["--epochs", "0"],
    ["--dataset", "mnist", "--data-dir", "no-such-dir"],  # found by the engine, at the 1st probe
])
def test_bad_input_exits_2_with_one_line_and_writes_no_run(workdir, capsys, args):
    code, out, err = cli(capsys, "find-alpha", "--device", "cpu", *args)
    assert code == 2, (out, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("adatune: error:"), err
    if Path("adatune.db").exists():
        with open_store("adatune.db") as db:
            assert db.list_runs() == []


def test_bad_bounds_message_names_the_options(workdir, capsys):
    _, _, err = cli(capsys, "find-alpha", "--alpha-max", "1e-5", "--alpha-min", "1e-3")
    assert err.strip() == ("adatune: error: alpha-max (1e-05) must be greater than "
                           "alpha-min (0.001)")
    _, _, err = cli(capsys, "find-alpha", "--tuner", "cosine")
    assert "baseline schedule" in err


# ------------------------------------------------------------------ library
def test_ladder_runs_from_high_down_to_low_inclusive():
    config = TrainConfig(hyper_update="additive")
    assert SearchConfig().ladder(config) == tuple(1e-2 / 10 ** k for k in range(7))
    assert SearchConfig(high=1e-2, low=3e-5).ladder(config) == (1e-2, 1e-3, 1e-4)
    assert SearchConfig(high=1.0, low=1 / 27, factor=3).ladder(config)[-1] == pytest.approx(1 / 27)
    assert len(SearchConfig(high=1.0, low=1 / 27, factor=3).ladder(config)) == 4
    # hyper-LR: from 10x the tuner's default hyper-LR (1e-4 for marthe with sgd), 7 values
    ladder = SearchConfig(search="hyper-lr").ladder(config)
    assert ladder[0] == pytest.approx(1e-3) and ladder[-1] == pytest.approx(1e-9)
    assert len(ladder) == 7
    assert SearchConfig(search="hyper_lr").search == "hyper-lr"


def test_the_scale_free_rule_gets_dimensionless_ladders():
    config = TrainConfig()  # the default rule: scale-free
    assert config.hyper_update == "scale-free"
    default = config.hyper_lr
    # alpha: from 1 (the rule's largest) down to 1e-4
    assert SearchConfig().ladder(config) == pytest.approx(tuple(10.0 ** -k for k in range(5)))
    # hyper-LR: 10x the default, never above 1, down to 1e-3x the top
    ladder = SearchConfig(search="hyper-lr").ladder(config)
    assert ladder == pytest.approx(tuple(10 * default / 10 ** k for k in range(4)))
    assert SearchConfig(search="hyper-lr").ladder(config.replace(hyper_lr=0.5))[0] == 1.0
    # every rung is a valid configuration of the rule
    for search in ("alpha", "hyper-lr"):
        s = SearchConfig(search=search)
        for value in s.ladder(config):
            probe_config(config, s, value)


def test_probe_rules_and_probe_config():
    search = SearchConfig(probe_epochs=4, probe_fraction=0.25, loss_factor=5, lr_factor=50)
    rules = search.rules()
    assert (rules.loss_factor, rules.lr_factor, rules.zero_lr_epoch,
            rules.nonfinite_hypergradient) == (5, 50, True, True)
    config = TrainConfig(epochs=15, patience=3)
    probe = probe_config(config, search, 1e-3)
    assert (probe.alpha, probe.epochs, probe.train_subset, probe.patience) == (
        1e-3, 4, 0.25, None)
    assert probe_config(config.replace(epochs=2), search, 1e-3).epochs == 2  # never longer
    with pytest.raises(ConfigError, match="tuner"):
        find_alpha(TrainConfig(method="cosine"), SearchConfig(), None)


class _Interrupt(SearchEvents):
    def step_done(self, epoch, batch, loss, lr, mu):
        if batch == 3:
            raise KeyboardInterrupt


def _quick(tmp_path) -> tuple[TrainConfig, SearchConfig]:
    config = TrainConfig(device="cpu", checkpoint_dir=str(tmp_path / "ckpt"))
    return config, SearchConfig(high=1e-5, low=1e-6, probe_epochs=1, probe_fraction=0.5)


def test_an_interrupted_probe_ends_the_search_as_interrupted(tmp_path):
    config, search = _quick(tmp_path)
    with open_store(tmp_path / "s.db") as db:
        result = find_alpha(config, search, db, events=_Interrupt())
        run = db.get_run(result.search_run_id).run
    assert result.status == "interrupted" and result.value is None
    assert [p.verdict for p in result.probes] == ["interrupted"]
    assert run.status == "interrupted"


@pytest.mark.parametrize("patch, reason", [
    ("zero-lr", r"learning rate pinned at 0 for all of epoch 1"),
    ("nonfinite-hypergradient", r"non-finite hypergradient at epoch 1, step 0"),
])
def test_the_zero_lr_and_nonfinite_hypergradient_rules_reach_the_probes(tmp_path, monkeypatch,
                                                                         patch, reason):
    from adatune.methods.tuners import HypergradientTuner
    from adatune.running.loop import Loop

    if patch == "zero-lr":  # the LR the loop sees is 0 at every step
        monkeypatch.setattr(Loop, "_lr", lambda self: 0.0)
    else:  # every step counts a non-finite hypergradient
        monkeypatch.setattr(HypergradientTuner, "nonfinite_count", property(lambda self: 1))
    config, search = _quick(tmp_path)
    with open_store(tmp_path / "s.db") as db:
        result = find_alpha(config, search, db)
    assert [p.verdict for p in result.probes] == ["diverged"] * 3  # the reference first
    assert all(re.fullmatch(reason, p.reason) for p in result.probes), result.probes
    assert result.value is None


def _probe_result(value, verdict="stable", final_lr=0.1, val_acc=0.9, val_loss=0.3):
    from adatune.search.findalpha import ProbeResult

    return ProbeResult(value=value, verdict=verdict, reason=None, run_id=1, epochs=3,
                       final_lr=final_lr, val_acc=val_acc, phase="ladder", val_loss=val_loss)


@pytest.mark.parametrize("probe, verdict", [
    (_probe_result(0.1), None),
    (_probe_result(0.1, val_acc=0.895), None),  # within a point of the reference
    (_probe_result(0.1, val_acc=0.88), "worse"),
    (_probe_result(0.1, final_lr=0.005), "collapsed"),  # its LR ended 20x below
    (_probe_result(0.1, verdict="diverged", val_acc=0.1), None),  # judged already
    (_probe_result(0.1, val_acc=None, val_loss=0.31), "worse"),  # by loss: 3% above
    (_probe_result(0.1, val_acc=None, val_loss=0.302), None),
])
def test_a_probe_that_trained_but_did_harm_is_not_stable(probe, verdict):
    from adatune.search.findalpha import _harm

    reference = _probe_result(0.0)
    if probe.val_acc is None:
        reference = _probe_result(0.0, val_acc=None)
    assert _harm(probe, reference, SearchConfig())[0] == verdict
