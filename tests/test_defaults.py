"""Each default is written once, in the library layer that owns it, and read from there.

Equal is not enough: a default written a second time is equal until someone
changes one of the two. So the command line's defaults must be the library's
very objects, and the check replaces every default of the run configuration
with a fresh object and runs the command's options module (and ``fit``'s) again,
as a separate copy: a default either wrote itself would not follow.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import inspect

import pytest

import adatune
from adatune.bench.config import BenchConfig
from adatune.methods import hyper_update
from adatune.methods.schedules import ScheduleConfig
from adatune.methods.tuners import settings
from adatune.running import config as config_module
from adatune.running import fitting
from adatune.running.config import TrainConfig
from adatune.running.runtypes import DivergenceRules
from adatune.search.findalpha import SearchConfig
from adatune.search.sweep import SweepConfig
from adatune.store import DEFAULT_STORE
from adatune_cli import options

FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


@pytest.fixture
def fresh_defaults(monkeypatch):
    """Every TrainConfig field's default replaced by a new object (restored afterwards)."""
    marks = {}
    for name, field in FIELDS.items():
        if field.default is not dataclasses.MISSING:
            marks[name] = object()
            monkeypatch.setattr(field, "default", marks[name])
    return marks


def _run_again(module) -> object:
    """A separate copy of ``module``, its code run again now (the imported one is untouched)."""
    spec = importlib.util.find_spec(module.__name__)
    copy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(copy)
    return copy


def test_the_command_reads_every_run_option_default_from_the_configuration(fresh_defaults):
    reloaded = _run_again(options)
    assert set(reloaded.DEFAULTS) == set(reloaded.OPTIONS)
    for name, default in reloaded.DEFAULTS.items():
        assert default is fresh_defaults[name], name
    shown = inspect.signature(reloaded.run_options(lambda opts: None)).parameters
    for name in reloaded.OPTIONS:
        assert shown[name].default is fresh_defaults[name], name


def test_fit_reads_its_defaults_from_the_configuration(fresh_defaults):
    params = inspect.signature(_run_again(fitting).fit).parameters
    # the run settings fit shares with the command (its model, data, device and name are
    # the caller's objects, not settings)
    shared = ("epochs", "batch_size", "seed", "loss", "divergence_factor", "log_every",
              "workers", "patience", "grad_clip", "checkpoint_dir")
    for name in shared:
        assert params[name].default is fresh_defaults[name], name


def test_the_parts_own_their_defaults_and_the_configuration_reads_them():
    # a tuner's: the tuners' signatures and the configuration read one module
    marthe = inspect.signature(adatune.MARTHE.__init__).parameters
    assert marthe["mu"].default is settings.DEFAULT_MU is FIELDS["mu"].default
    assert marthe["alpha"].default is settings.DEFAULT_ALPHA is FIELDS["alpha"].default
    assert marthe["hvp"].default is settings.DEFAULT_HVP is FIELDS["hvp"].default
    assert inspect.signature(adatune.HD.__init__).parameters["alpha"].default \
        is settings.DEFAULT_ALPHA
    assert marthe["hyper_update"].default is hyper_update.DEFAULT_HYPER_UPDATE \
        is FIELDS["hyper_update"].default
    # a schedule's: its settings and their defaults
    for name in ("step_size", "lr_decay", "t_0", "t_mult"):
        schedule_field = next(f for f in dataclasses.fields(ScheduleConfig) if f.name == name)
        assert FIELDS[name].default is schedule_field.default, name
    # the divergence rule's
    assert FIELDS["divergence_factor"].default is DivergenceRules.loss_factor
    # the HVP modes: one tuple
    from adatune.bench import config as bench_config
    from adatune.methods.tuners import hypergradient

    assert hypergradient.HVP_MODES is settings.HVP_MODES is bench_config.HVP_MODES
    assert not hasattr(config_module, "HVP_NAMES")


def _command_defaults(command) -> dict:
    return {name: p.default for name, p in inspect.signature(command).parameters.items()}


def test_the_other_commands_take_their_defaults_from_the_library():
    from adatune_cli import bench, findalpha, sweep, train

    bench_defaults = _command_defaults(bench.bench_command)
    for name in ("network", "batch_size", "optimizer", "device", "steps", "warmup", "memory"):
        field = next(f for f in dataclasses.fields(BenchConfig) if f.name == name)
        assert bench_defaults[name] is field.default, name
    sweep_defaults = _command_defaults(sweep.sweep_command)
    for name in ("trials", "seeds", "sampler"):
        field = next(f for f in dataclasses.fields(SweepConfig) if f.name == name)
        assert sweep_defaults[name] is field.default, name
    search_defaults = _command_defaults(findalpha.find_alpha_command)
    for option, name in (("search", "search"), ("factor", "factor"),
                         ("probe_epochs", "probe_epochs"), ("refine", "refine"),
                         ("probe_loss_factor", "loss_factor"), ("probe_lr_factor", "lr_factor")):
        field = next(f for f in dataclasses.fields(SearchConfig) if f.name == name)
        assert search_defaults[option] is field.default, option
    assert _command_defaults(train.train_command)["tuner"] is FIELDS["method"].default
    for command in (train.train_command, train.baseline_command, findalpha.find_alpha_command,
                    sweep.sweep_command):
        assert _command_defaults(command)["store"] is DEFAULT_STORE
    assert inspect.signature(adatune.fit).parameters["store"].default is DEFAULT_STORE
