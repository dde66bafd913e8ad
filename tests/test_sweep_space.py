"""Sweep search spaces: defaults, space files (TOML/JSON), their errors, sampling, SweepConfig.

No training here: these tests are fast.
"""

from __future__ import annotations

import json
import math
import sys

import optuna
import pytest

from adatune.errors import ConfigError
from adatune.methods.peers import PEER_NAMES
from adatune.running.config import TrainConfig
from adatune.search.space import (
    DEFAULT_SPACES,
    TUNABLE,
    Param,
    check_space,
    default_space,
    describe_space,
    load_space,
    parse_space,
    sample,
    space_dict,
    space_toml,
    without,
)
from adatune.search.sweep import SweepConfig

METHODS = ("marthe", "rtho", "hd", "constant", "staircase", "exponential", "cosine")

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")


def _by_name(space):
    return {p.name: p for p in space}


@pytest.mark.parametrize("rule", ["scale-free", "additive"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
@pytest.mark.parametrize("method", METHODS)
def test_every_method_has_a_valid_default_space(method, optimizer, rule):
    space = default_space(method, optimizer, rule)
    assert space and {p.name for p in space} <= set(TUNABLE[method])
    assert space[0].name == "lr" and space[0].log
    # every bound is valid
    check_space(space, TrainConfig(method=method, optimizer=optimizer, hyper_update=rule))


def test_default_spaces_are_the_documented_ones():
    marthe = _by_name(default_space("marthe"))
    assert list(marthe) == ["lr", "hyper_lr", "alpha", "mu"]
    assert (marthe["lr"].low, marthe["lr"].high, marthe["lr"].log) == (1e-3, 1.0, True)
    assert marthe["alpha"].log and marthe["alpha"].zero  # log-uniform, and possibly 0
    assert marthe["mu"].choices == ("auto", 0.99, 0.999)
    assert list(_by_name(default_space("rtho"))) == ["lr", "hyper_lr", "alpha"]
    assert list(_by_name(default_space("hd"))) == ["lr", "hyper_lr"]
    assert list(_by_name(default_space("constant"))) == ["lr"]
    staircase = _by_name(default_space("staircase"))
    assert (staircase["step_size"].type, staircase["lr_decay"].type) == ("int", "float")
    assert list(_by_name(default_space("exponential"))) == ["lr", "lr_decay"]
    cosine = _by_name(default_space("cosine"))
    assert (cosine["t_0"].low, cosine["t_0"].high, cosine["t_mult"].high) == (1, 10, 3)
    # The default (scale-free) rule: dimensionless hyper-LR and alpha, the same for Adam;
    # Adam's LR range sits 10x lower than SGD's.
    adam = _by_name(default_space("marthe", "adam"))
    assert adam["lr"].high == pytest.approx(marthe["lr"].high / 10)
    assert (marthe["hyper_lr"].low, marthe["hyper_lr"].high) == (1e-3, 0.1)
    assert adam["hyper_lr"] == marthe["hyper_lr"] and adam["alpha"] == marthe["alpha"]
    assert "mu: one of auto, 0.99, 0.999" in describe_space(default_space("marthe"))
    assert "alpha: 0 or log-uniform [0.001, 0.3]" in describe_space(default_space("marthe"))
    # The additive rule: Adam's hyper-LR and alpha ranges sit 1000x lower than SGD's.
    sgd_add = _by_name(default_space("marthe", "sgd", "additive"))
    adam_add = _by_name(default_space("marthe", "adam", "additive"))
    assert adam_add["hyper_lr"].high == pytest.approx(sgd_add["hyper_lr"].high / 1000)
    assert adam_add["alpha"].high == pytest.approx(sgd_add["alpha"].high / 1000)
    assert "alpha: 0 or log-uniform [1e-08, 0.0001]" in describe_space(
        default_space("marthe", "sgd", "additive"))
    for rule in ("scale-free", "additive"):
        assert set(DEFAULT_SPACES[rule]["sgd"]) == {*METHODS, *PEER_NAMES} == set(
            DEFAULT_SPACES[rule]["adam"])


@pytest.mark.parametrize("method", PEER_NAMES)
def test_every_peer_has_a_valid_default_space(method):
    space = default_space(method)
    assert space == default_space(method, "adam")  # a peer is its own optimizer
    assert space == default_space(method, "sgd", "additive")  # and has no hyper-LR rule
    assert space and {p.name for p in space} <= set(TUNABLE[method])
    assert space[0].name == "lr" and space[0].log
    assert space[0].low < TrainConfig(method=method).lr < space[0].high  # its default inside
    check_space(space, TrainConfig(method=method))


@pytest.mark.parametrize("method", METHODS)
def test_space_files_round_trip_in_toml_and_json(tmp_path, method):
    space = default_space(method)
    toml_file = tmp_path / "space.toml"
    toml_file.write_text(space_toml(space, header="a comment\non two lines"))
    assert load_space(toml_file, method=method) == space
    json_file = tmp_path / "space.json"
    json_file.write_text(json.dumps(space_dict(space)))
    assert load_space(json_file, method=method) == space


def test_a_custom_space_file(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text(
        '[lr]\ntype = "float"\nlow = 0.01\nhigh = 1\n\n'
        '[batch_size]\ntype = "int"\nlow = 16\nhigh = 256\nlog = true\n\n'
        '[nesterov]\ntype = "categorical"\nchoices = [false, true]\n\n'
        '[mu]\ntype = "float"\nlow = 0.9\nhigh = 1.0\n\n'
        '[momentum]\ntype = "categorical"\nchoices = [0, 0.5, 0.9]\n'
    )
    space = _by_name(load_space(path, method="marthe"))
    assert space["lr"] == Param("lr", "float", low=0.01, high=1.0)  # int bound -> float
    assert space["batch_size"] == Param("batch_size", "int", low=16, high=256, log=True)
    assert space["nesterov"].choices == (False, True)
    assert space["momentum"].choices == (0.0, 0.5, 0.9)
    assert isinstance(space["momentum"].choices[0], float)
    assert without(tuple(space.values()), ["lr", "mu"]) == tuple(
        p for n, p in space.items() if n not in ("lr", "mu")
    )


BAD_FILES = [
    ("s.toml", "marthe", "[lr\ntype = ", "is not valid TOML"),
    ("s.json", "marthe", "{", "is not valid JSON"),
    ("s.yaml", "marthe", "lr: 1", "use a .toml or .json file"),
    ("s.json", "marthe", "[1, 2]", "expected a table of parameters"),
    ("s.json", "marthe", "{}", "no parameters"),
    ("s.json", "marthe", '{"lr": 0.1}', "lr must be a table"),
    ("s.json", "marthe", '{"foo": {"type": "float", "low": 1, "high": 2}}',
     "unknown parameter 'foo'"),
    ("s.json", "constant", '{"mu": {"type": "categorical", "choices": [0.9]}}',
     "'mu' has no effect on constant"),
    ("s.json", "cosine", '{"lr_decay": {"type": "float", "low": 0.1, "high": 0.9}}',
     "'lr_decay' has no effect on cosine"),
    ("s.json", "marthe", '{"lr": {"type": "normal", "low": 0.1, "high": 1}}',
     "type must be one of float, int, categorical"),
    ("s.json", "marthe", '{"lr": {"low": 0.1, "high": 1}}', "type must be one of"),
    ("s.json", "marthe", '{"lr": {"type": "float", "low": 0.1}}', "high is missing"),
    ("s.json", "marthe", '{"lr": {"type": "float", "lo": 0.1, "high": 1}}', "unknown key 'lo'"),
    ("s.json", "marthe", '{"lr": {"type": "float", "low": 1, "high": 0.1}}',
     "low (1) must be below high (0.1)"),
    ("s.json", "marthe", '{"lr": {"type": "float", "low": 0, "high": 1, "log": true}}',
     "a log scale needs low > 0"),
    ("s.json", "marthe", '{"lr": {"type": "float", "low": "a", "high": 1}}',
     "low must be a finite number"),
    ("s.json", "marthe", '{"lr": {"type": "float", "low": 0.1, "high": 1, "log": "yes"}}',
     "log must be true or false"),
    ("s.json", "staircase", '{"step_size": {"type": "float", "low": 1, "high": 3}}',
     'step_size is a whole number: use type = "int"'),
    ("s.json", "staircase", '{"step_size": {"type": "int", "low": 1.5, "high": 3}}',
     "low must be a whole number"),
    ("s.json", "marthe", '{"lr": {"type": "int", "low": 1, "high": 3}}',
     "lr is a real number"),
    ("s.json", "marthe", '{"nesterov": {"type": "float", "low": 0, "high": 1}}',
     "nesterov is true/false"),
    ("s.json", "marthe", '{"mu": {"type": "categorical", "choices": []}}',
     "choices must be a non-empty list"),
    ("s.json", "marthe", '{"mu": {"type": "categorical", "choices": ["sometimes"]}}',
     'choices must be numbers or "auto"'),
    ("s.json", "marthe", '{"mu": {"type": "categorical", "choices": [0.9, 0.9]}}',
     "choices repeat a value"),
    ("s.json", "marthe", '{"first_order": {"type": "categorical", "choices": [0, 1]}}',
     "choices must be true/false"),
]


@pytest.mark.parametrize("name, method, text, problem", BAD_FILES,
                         ids=[b[3][:40] for b in BAD_FILES])
def test_a_malformed_space_file_is_one_clear_error(tmp_path, name, method, text, problem):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_space(path, method=method)
    message = str(info.value)
    assert problem in message and str(path) in message
    assert "\n" not in message


def test_a_missing_space_file(tmp_path):
    with pytest.raises(ConfigError, match=r"cannot read the space file .*nope\.toml"):
        load_space(tmp_path / "nope.toml", method="marthe")


@pytest.mark.parametrize("method, data, problem", [
    ("exponential", {"lr_decay": {"type": "float", "low": 0.5, "high": 1.5}},
     "lr_decay = 1.5 is not allowed"),
    ("constant", {"lr": {"type": "float", "low": 0.1, "high": 1, "zero": True}},
     "lr = 0 is not allowed"),
    ("marthe", {"mu": {"type": "float", "low": 0.5, "high": 2}}, "mu = 2 is not allowed"),
    ("marthe", {"momentum": {"type": "categorical", "choices": [0.5, 1.0]}},
     "momentum = 1 is not allowed"),
])
def test_every_bound_must_make_a_valid_config(method, data, problem):
    space = parse_space(data, method=method)
    with pytest.raises(ConfigError, match=problem):
        check_space(space, TrainConfig(method=method))


def test_sampling_follows_the_space():
    space = default_space("marthe")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    draws = []
    for _ in range(300):
        trial = study.ask()
        draws.append(sample(trial, space))
        study.tell(trial, 0.0)
    lrs = [d["lr"] for d in draws]
    assert all(1e-3 <= lr <= 1.0 for lr in lrs)
    # log-uniform over three decades: a third below 0.01 (uniform would give 1%)
    assert 0.2 < sum(lr < 0.01 for lr in lrs) / len(lrs) < 0.5
    alphas = [d["alpha"] for d in draws]
    zeros = sum(a == 0.0 for a in alphas)
    assert 0.3 < zeros / len(alphas) < 0.7
    assert all(a == 0.0 or 1e-3 <= a <= 0.3 for a in alphas)  # scale-free: dimensionless
    assert {d["mu"] for d in draws} == {"auto", 0.99, 0.999}
    assert "alpha_is_zero" in study.trials[0].params
    for d in draws[:20]:  # every draw is a valid config
        TrainConfig(method="marthe", **d)
    steps = {sample(study.ask(), default_space("staircase"))["step_size"] for _ in range(100)}
    assert steps <= set(range(1, 11)) and len(steps) > 5
    assert all(isinstance(s, int) for s in steps)


def test_sweep_config_defaults_and_validation():
    sweep = SweepConfig("ED")
    assert (sweep.method, sweep.study, sweep.trials, sweep.seeds, sweep.sampler) == (
        "exponential", "sweep-exponential", 20, 3, "random")
    assert SweepConfig("marthe", sampler=" TPE ").sampler == "tpe"
    assert SweepConfig("marthe").resolved_space(TrainConfig(optimizer="adam")) == default_space(
        "marthe", "adam")
    assert SweepConfig("marthe").resolved_space(
        TrainConfig(optimizer="adam", hyper_update="additive")) == default_space(
        "marthe", "adam", "additive")
    for kwargs, problem in [
        ({"method": "sgd"}, "unknown method 'sgd'"),
        ({"method": "marthe", "trials": 0}, "invalid trials: 0"),
        ({"method": "marthe", "seeds": 0}, "invalid seeds: 0"),
        ({"method": "marthe", "sampler": "grid"}, "unknown sampler 'grid'"),
        ({"method": "marthe", "study": " "}, "invalid study name"),
        ({"method": "marthe", "timeout": 0}, "invalid timeout"),
        ({"method": "marthe", "timeout": math.inf}, "invalid timeout"),
        ({"method": "marthe", "space": ()}, "the search space is empty"),
        ({"method": "cosine", "space": default_space("marthe")}, "has no effect on cosine"),
    ]:
        with pytest.raises(ConfigError, match=problem):
            SweepConfig(**kwargs)


def test_show_space_toml_is_a_valid_space_file():
    text = space_toml(default_space("marthe"), header="x")
    data = tomllib.loads(text)
    assert data["alpha"] == {"type": "float", "low": 1e-3, "high": 0.3, "log": True,
                             "zero": True}
    assert data["mu"]["choices"] == ["auto", 0.99, 0.999]
