"""Find the largest stable ``alpha`` (or hyper-LR) with short probe runs.

The original AdaTune README asked users to find ``alpha`` by hand: start high,
lower it step by step, keep the first value at which training no longer
diverges in its first few epochs. :func:`find_alpha` does exactly that:

* The *ladder*: ``high, high/factor, high/factor**2, ...`` down to ``low``
  (values below ``low`` by more than a float rounding are not probed).
* Each rung is a *probe*: a short run (``probe_epochs`` epochs, optionally on a
  seeded ``probe_fraction`` of the training set), recorded in the store as a
  run of kind ``probe`` whose ``parent_id`` is the search's own run (kind
  ``find-alpha``). The engine stops a probe the moment it is judged divergent
  under :meth:`SearchConfig.rules`, at the first of: a non-finite training
  loss, LR or hypergradient at any step; a minibatch training loss above
  ``loss_factor`` (3) times the probe's first one; an LR above ``lr_factor``
  (100) times the initial LR; an epoch with the LR at 0 at every step; a
  non-finite validation loss after an epoch.
* A *reference* probe runs first, at the configuration's own value (the
  default ``alpha`` 0, or its hyper-LR). A probe that did not diverge is still
  not stable when it did harm against it: its LR *collapsed* (its last epoch's
  LR is below ``1/collapse`` of the reference's), or its validation result is
  *worse* (its best validation accuracy more than ``worse`` below the
  reference's, or its validation loss more than ``worse`` above it,
  relatively). Any other probe is *stable*.
* The ladder stops at the first stable rung: the largest stable value of the
  ladder. With ``refine=N``, N more probes bisect in log space between the
  last divergent rung and that stable one; the answer is the largest value
  found stable.

Every probe uses the configuration's seed, so a search is deterministic for a
given seed. The same search runs over ``hyper_lr`` (``alpha`` fixed) with
``search="hyper-lr"``. The library never prints: progress goes to a
:class:`SearchEvents` object.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from adatune.checks import MAX_EPOCHS, whole
from adatune.errors import AdatuneError, ConfigError
from adatune.methods.hyper_update import ADDITIVE, MAX_HYPER_LR, SCALE_FREE
from adatune.running.config import TUNER_NAMES, TrainConfig
from adatune.running.runtypes import DivergenceRules, Events, RunResult
from adatune.store.records import NewRun

if TYPE_CHECKING:
    from adatune.store import Store

SEARCH_PARAMETERS = ("alpha", "hyper-lr")

# The alpha ladder, per hyper-LR update rule: the additive rule's alpha is in units of
# hyper-LR per (hypergradient x LR); the scale-free rule's is dimensionless, in [0, 1].
DEFAULT_ALPHA_MAX = {ADDITIVE: 1e-2, SCALE_FREE: MAX_HYPER_LR}
DEFAULT_ALPHA_MIN = {ADDITIVE: 1e-8, SCALE_FREE: 1e-4}
# hyper-LR ladder: its top relative to the configuration's hyper-LR (the
# tuner's default for the optimizer unless the caller set one; never above the
# rule's largest hyper-LR), its bottom relative to its top, per rule
HYPER_LR_MAX_RATIO = 10.0
HYPER_LR_SPAN = {ADDITIVE: 1e-6, SCALE_FREE: 1e-3}

DEFAULT_FACTOR = 10.0
DEFAULT_PROBE_EPOCHS = 5
DEFAULT_LOSS_FACTOR = 3.0
DEFAULT_LR_FACTOR = 100.0
#: A probe whose last epoch's LR is below the reference probe's / COLLAPSE collapsed.
DEFAULT_COLLAPSE = 10.0
#: A probe whose best validation accuracy is this much below the reference's (or whose
#: validation loss is this fraction above it) is worse than the default.
DEFAULT_WORSE = 0.01

_REL_TOL = 1e-9  # "down to low, inclusive": tolerance for the rounding of high / factor**k
MAX_LADDER = 1000
#: Bisection probes at most: 60 halvings of a decade in log space are below float resolution.
MAX_REFINE = 60


def _canonical_search(name: str) -> str:
    key = str(name).strip().lower().replace("_", "-")
    if key in ("hyperlr", "beta"):
        key = "hyper-lr"
    if key not in SEARCH_PARAMETERS:
        raise ConfigError(f"unknown search {name!r} (choose from: {', '.join(SEARCH_PARAMETERS)})")
    return key


def _positive(name: str, value: float | None, *, above: float = 0.0) -> None:
    if value is None:
        return
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value) and value > above)
    if not ok:
        raise ConfigError(f"invalid {name}: {value!r} (must be a finite number > {above:g})")


@dataclass(frozen=True)
class SearchConfig:
    """How to search. ``high``/``low`` bound the ladder of the searched parameter.

    ``None`` bounds take defaults from the configuration's update rule: for
    ``alpha`` 1e-2 and 1e-8 (additive) or 1 and 1e-4 (scale-free); for
    ``hyper-lr`` 10x the configuration's hyper-LR (at most the scale-free
    rule's largest, 1) and 1e-6x (additive) or 1e-3x (scale-free) the top.
    """

    search: str = "alpha"
    high: float | None = None
    low: float | None = None
    factor: float = DEFAULT_FACTOR
    probe_epochs: int = DEFAULT_PROBE_EPOCHS
    probe_fraction: float | None = None
    refine: int = 0
    loss_factor: float = DEFAULT_LOSS_FACTOR
    lr_factor: float = DEFAULT_LR_FACTOR
    collapse: float = DEFAULT_COLLAPSE
    worse: float = DEFAULT_WORSE

    def __post_init__(self) -> None:
        object.__setattr__(self, "search", _canonical_search(self.search))
        name = self.search
        _positive(f"{name}-max", self.high)
        _positive(f"{name}-min", self.low)
        if self.high is not None and self.low is not None and self.high <= self.low:
            raise ConfigError(f"{name}-max ({self.high:g}) must be greater than "
                              f"{name}-min ({self.low:g})")
        _positive("factor", self.factor, above=1.0)
        whole("probe-epochs", self.probe_epochs, 1, MAX_EPOCHS)
        whole("refine", self.refine, 0, MAX_REFINE)
        if self.probe_fraction is not None:
            _positive("probe-fraction", self.probe_fraction)
            if self.probe_fraction > 1:
                raise ConfigError(f"invalid probe-fraction: {self.probe_fraction!r} "
                                  "(must be in (0, 1])")
        _positive("probe loss factor", self.loss_factor, above=1.0)
        _positive("probe LR factor", self.lr_factor, above=1.0)
        _positive("collapse", self.collapse, above=1.0)
        _positive("worse", self.worse)

    @property
    def config_key(self) -> str:
        """The TrainConfig field searched: ``alpha`` or ``hyper_lr``."""
        return "hyper_lr" if self.search == "hyper-lr" else "alpha"

    def rules(self) -> DivergenceRules:
        """The divergence rules every probe runs under."""
        return DivergenceRules(loss_factor=self.loss_factor, lr_factor=self.lr_factor,
                               zero_lr_epoch=True, nonfinite_hypergradient=True)

    def bounds(self, config: TrainConfig) -> tuple[float, float]:
        """(high, low) of the ladder, defaults resolved against ``config``."""
        name = self.search
        rule = config.hyper_update
        if self.search == "alpha":
            high = DEFAULT_ALPHA_MAX[rule] if self.high is None else self.high
            low = DEFAULT_ALPHA_MIN[rule] if self.low is None else self.low
        else:
            if self.high is None:
                if not config.hyper_lr > 0:
                    raise ConfigError("the hyper-LR is 0: give hyper-lr-max for the search")
                high = config.hyper_lr * HYPER_LR_MAX_RATIO
                if rule == SCALE_FREE:
                    high = min(high, MAX_HYPER_LR)
            else:
                high = self.high
            low = high * HYPER_LR_SPAN[rule] if self.low is None else self.low
        if high <= low:
            raise ConfigError(f"{name}-max ({high:g}) must be greater than {name}-min ({low:g})")
        return high, low

    def ladder(self, config: TrainConfig) -> tuple[float, ...]:
        """The values probed in order: high, high/factor, ... while >= low."""
        high, low = self.bounds(config)
        values = []
        k = 0
        while True:
            value = high / self.factor ** k
            if value < low * (1 - _REL_TOL):
                break
            values.append(value)
            k += 1
            if k > MAX_LADDER:
                raise ConfigError(f"the ladder from {high:g} down to {low:g} by a factor of "
                                  f"{self.factor:g} has over {MAX_LADDER} values; raise factor")
        return tuple(values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ProbeResult:
    """One probe: the value tried and the verdict on it."""

    value: float
    verdict: str  # stable | diverged | collapsed | worse | interrupted
    reason: str | None
    run_id: int
    epochs: int  # epochs completed before the probe ended
    final_lr: float | None  # the LR of its last epoch
    val_acc: float | None  # best validation accuracy of the probe
    phase: str  # reference | ladder | refine
    val_loss: float | None = None  # validation loss at the probe's best epoch

    @property
    def stable(self) -> bool:
        return self.verdict == "stable"


@dataclass(frozen=True)
class SearchResult:
    search_run_id: int
    parameter: str  # alpha | hyper-lr
    value: float | None  # the largest stable value; None when none was
    probes: tuple[ProbeResult, ...]  # the reference probe first
    ladder: tuple[float, ...]
    status: str  # completed | interrupted

    @property
    def config_key(self) -> str:
        return "hyper_lr" if self.parameter == "hyper-lr" else "alpha"

    @property
    def top_was_stable(self) -> bool:
        """The first rung was stable: a larger value might be too (raise the max)."""
        rungs = [p for p in self.probes if p.phase == "ladder"]
        return bool(rungs) and rungs[0].stable


class SearchEvents(Events):
    """Progress of a search; the step/epoch callbacks of :class:`Events` come per probe."""

    def search_started(self, search_run_id: int, parameter: str,
                       ladder: tuple[float, ...]) -> None: ...

    def probe_started(self, index: int, value: float, phase: str) -> None: ...

    def probe_done(self, probe: ProbeResult) -> None: ...


def probe_config(config: TrainConfig, search: SearchConfig, value: float) -> TrainConfig:
    """The configuration a probe of ``value`` runs with.

    ``probe_epochs`` epochs (never more than ``config.epochs``), no early
    stopping, on ``probe_fraction`` of the training set when given.
    """
    subset = config.train_subset if search.probe_fraction is None else search.probe_fraction
    return config.replace(**{search.config_key: value},
                          epochs=min(search.probe_epochs, config.epochs),
                          patience=None, train_subset=subset)


def with_found_value(config: TrainConfig, result: SearchResult) -> TrainConfig:
    """``config`` with the value the search found (for the full training run).

    The search's run id is kept in ``extra["find_alpha_search"]``.
    """
    if result.value is None:
        raise ConfigError("the search found no stable value")
    return config.replace(**{result.config_key: result.value},
                          extra={**config.extra, "find_alpha_search": result.search_run_id})


def find_alpha(
    config: TrainConfig,
    search: SearchConfig,
    store: Store,
    *,
    name: str | None = None,
    experiment: str | None = None,
    events: SearchEvents | None = None,
) -> SearchResult:
    """Search the largest stable ``alpha`` (or hyper-LR) for ``config``; see the module doc.

    ``config.epochs`` is the length of the full training run the answer is
    for; probes run ``search.probe_epochs``. Raises :class:`ConfigError` for
    a baseline schedule or bad bounds before anything is written.
    """
    if not config.is_tuner:
        raise ConfigError(f"find-alpha needs a hypergradient tuner ({', '.join(TUNER_NAMES)}), "
                          f"not the {config.method!r} schedule")
    events = events or SearchEvents()
    ladder = search.ladder(config)
    probe_config(config, search, ladder[0])  # validates the probe settings up front
    high, low = search.bounds(config)
    settings = {**search.to_dict(), "high": high, "low": low, "ladder": list(ladder)}
    search_id = store.create_run(NewRun(
        kind="find-alpha", method=config.method, optimizer=config.optimizer,
        network=config.network_label, dataset=config.dataset_label, seed=config.seed,
        config={**config.to_dict(), "search": settings}, name=name, experiment=experiment,
    ))
    events.search_started(search_id, search.search, ladder)
    probes: list[ProbeResult] = []
    try:
        status, value = _search(config, search, store, search_id, ladder, probes,
                                experiment, events)
    except AdatuneError as exc:
        if not probes and not store.list_runs(parent_id=search_id):
            store.delete_run(search_id)  # bad input found by the engine: leave no trace
        else:
            store.finish_run(search_id, "failed", error=f"a probe could not run: {exc}")
        raise
    except KeyboardInterrupt:  # outside a probe's loop (a probe's own Ctrl-C ends it)
        store.finish_run(search_id, "interrupted", error="interrupted")
        raise
    except BaseException as exc:
        store.finish_run(search_id, "failed", error=f"{type(exc).__name__}: {exc}")
        raise
    summary = {"search": search.search, search.config_key: value, "value": value,
               "probes": len(probes), "probe_ids": [p.run_id for p in probes],
               "ladder": list(ladder)}
    error = None
    if status == "interrupted":
        error = f"interrupted during the probe of {search.search} {probes[-1].value:.3g}"
    store.finish_run(search_id, status, error=error, summary=summary)
    return SearchResult(search_run_id=search_id, parameter=search.search, value=value,
                        probes=tuple(probes), ladder=ladder, status=status)


def _search(config: TrainConfig, search: SearchConfig, store: Store, search_id: int,
            ladder: tuple[float, ...], probes: list[ProbeResult], experiment: str | None,
            events: SearchEvents) -> tuple[str, float | None]:
    def run(value: float, phase: str) -> ProbeResult:
        events.probe_started(len(probes), value, phase)
        probe = _probe(config, search, store, search_id, value, phase, experiment, events)
        probes.append(probe)
        events.probe_done(probe)
        return probe

    reference = run(getattr(config, search.config_key), "reference")
    if reference.verdict == "interrupted":
        return "interrupted", None

    def judge(probe: ProbeResult) -> ProbeResult:
        verdict, reason = _harm(probe, reference, search)
        if verdict is None:
            return probe
        judged = dataclasses.replace(probe, verdict=verdict, reason=reason)
        probes[-1] = judged
        return judged

    diverged: float | None = None
    stable: float | None = None
    for value in ladder:
        probe = judge(run(value, "ladder"))
        if probe.verdict == "interrupted":
            return "interrupted", None
        if probe.stable:
            stable = value
            break
        diverged = value
    if stable is None or diverged is None:
        return "completed", stable
    for _ in range(search.refine):
        mid = math.sqrt(stable * diverged)  # the midpoint in log space
        probe = judge(run(mid, "refine"))
        if probe.verdict == "interrupted":
            return "interrupted", stable
        if probe.stable:
            stable = mid
        else:
            diverged = mid
    return "completed", stable


def _harm(probe: ProbeResult, reference: ProbeResult,
          search: SearchConfig) -> tuple[str | None, str | None]:
    """(verdict, reason) of a probe that ran to its end but did harm; (None, None) if none."""
    if probe.verdict != "stable" or reference.verdict != "stable":
        return None, None
    if probe.final_lr is not None and reference.final_lr \
            and probe.final_lr < reference.final_lr / search.collapse:
        return "collapsed", (f"last LR {probe.final_lr:.3g}, under 1/{search.collapse:g} of "
                             f"the reference's")
    if probe.val_acc is not None and reference.val_acc is not None:
        if probe.val_acc < reference.val_acc - search.worse:
            return "worse", f"the reference has {reference.val_acc:.1%}"
    elif probe.val_loss is not None and reference.val_loss is not None \
            and probe.val_loss > reference.val_loss * (1 + search.worse):
        return "worse", f"the reference has {reference.val_loss:.4g}"
    return None, None


def _probe(config: TrainConfig, search: SearchConfig, store: Store, search_id: int,
           value: float, phase: str, experiment: str | None, events: Events) -> ProbeResult:
    from adatune.running.engine import train  # the training stack (torch), once a probe runs

    result: RunResult = train(
        probe_config(config, search, value), store,
        name=f"probe {search.search}={value:.3g}", experiment=experiment, kind="probe",
        parent_id=search_id, rules=search.rules(), events=events)
    verdict = {"completed": "stable"}.get(result.status, result.status)
    final_lr = store.get_run(result.run_id, steps=False).run.summary.get("final_lr")
    return ProbeResult(value=value, verdict=verdict, reason=result.reason,
                       run_id=result.run_id, epochs=len(result.epochs),
                       final_lr=None if final_lr is None else float(final_lr),
                       val_acc=result.best_val_acc, phase=phase,
                       val_loss=result.best_val_loss)
