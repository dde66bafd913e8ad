"""Sweeps: draw configurations of one method at random (or by TPE) and train each one.

The protocol of the MARTHE paper's comparison: sample configurations from each
method's search space, train each with early stopping over several seeds, and
follow the best model found so far against time. Optuna does the sampling and
the bookkeeping of trials; its study lives in the store's own database, so that
every process pointed at the same store (one SQLite file on one machine, or one
PostgreSQL URL for many machines) shares it. Nothing here schedules work:
each worker asks the study for the next trial until the study has enough.

    from adatune.search.sweep import SweepConfig, run_sweep
    result = run_sweep(TrainConfig(method="marthe", epochs=30, patience=10),
                       SweepConfig("marthe", trials=20, seeds=3), store)

How trials, seeds and runs map
------------------------------
* One Optuna trial is one sampled configuration, trained once per seed: seeds
  ``base.seed, base.seed + 1, ..., base.seed + seeds - 1``, one after the other
  in the worker that asked for the trial.
* Every training is a normal run of the store: kind ``sweep``, experiment = the
  study name, name ``<study>/trial-<n>``. The run's config carries
  ``extra["sweep"] = {"study", "trial", "seed_index", "params"}`` (``params``:
  the sampled values). The trial's user attributes carry the run ids
  (``adatune_runs``), the sampled values (``adatune_values``), the runs'
  statuses (``adatune_statuses``) and the worker (``adatune_worker``).
* Objective (maximised): the mean over seeds of the best validation accuracy
  (with a loss other than cross-entropy: minus the best validation loss).
* Trial states: COMPLETE when every seed completed (early stopping included);
  PRUNED when a seed diverged or the sampled combination is invalid (final: it
  counts and is never retried); FAIL when interrupted (Ctrl-C) or crashed.
* ``trials`` counts the study's COMPLETE, PRUNED and RUNNING trials, over all
  workers: a worker asks for a trial only while fewer than ``trials`` count,
  and gives a trial back (FAIL, user attribute ``adatune_surplus``) when
  another worker took the last place at the same moment. FAIL trials do not
  count, so running the same command again fills the places of interrupted
  trials.
* A RUNNING trial whose worker is gone (its process died on this host, or all
  its runs stopped with no sign of life for ``STALE_AFTER_S`` seconds) is
  marked FAIL by the next worker that asks for a trial.

The search space (what each method may tune, and the space file format) is
:mod:`adatune.search.space`.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import random
import time
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from adatune._process import owner_record, process_may_be_alive
from adatune.checks import MAX_SEED, whole
from adatune.errors import ConfigError, StoreError
from adatune.methods.hyper_update import ADDITIVE
from adatune.methods.peers import check_available
from adatune.redact import mask_secrets
from adatune.running.config import TrainConfig, canonical_method
from adatune.running.runtypes import Events, RunResult
from adatune.search.space import TUNABLE, Space, check_space, default_space, sample, space_dict
from adatune.store.records import EpochRecord

if TYPE_CHECKING:
    from adatune.store import Store

# Spaces, configs and results are plain Python: the training stack (adatune.running.engine,
# torch), the store's SQL layer and Optuna are imported where a sweep runs.

SAMPLERS = ("random", "tpe")
DEFAULT_TRIALS = 20
DEFAULT_SEEDS = 3
#: Early stopping used by ``adatune sweep`` when ``--patience`` is not given.
DEFAULT_PATIENCE = 10
RUN_KIND = "sweep"
MAX_STUDY_NAME = 200
#: Bounds of a study's size: trials of the whole study, and seeds per trial.
MAX_TRIALS = 100_000
MAX_SEEDS = 1_000
STUDY_ATTR = "adatune"  # study user attribute: what defines the sweep
# Fields that say where or how verbosely a run goes, not what it computes: workers of
# one study may differ in them.
_LOCAL_FIELDS = ("device", "data_dir", "download", "checkpoint_dir", "log_every", "extra")


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class SweepConfig:
    """What to sweep: the method, the budget, the sampler and the study.

    ``trials`` counts trials of the whole study (all workers); ``seeds`` runs per
    trial; ``timeout`` (seconds) stops this worker from starting new trials;
    ``space`` defaults to :func:`default_space` for the base config's optimizer;
    ``study`` defaults to ``sweep-<method>``.
    """

    method: str
    trials: int = DEFAULT_TRIALS
    seeds: int = DEFAULT_SEEDS
    sampler: str = "random"
    study: str | None = None
    timeout: float | None = None
    space: Space | None = None

    def __post_init__(self) -> None:
        method = canonical_method(self.method)
        if method not in TUNABLE:
            raise ConfigError(f"sweep has no search space for {method} (a replay's LRs are "
                              "the recorded schedule's: there is nothing to sample)")
        object.__setattr__(self, "method", method)
        whole("trials", self.trials, 1, MAX_TRIALS)
        whole("seeds", self.seeds, 1, MAX_SEEDS)
        sampler = str(self.sampler).strip().lower()
        if sampler not in SAMPLERS:
            raise ConfigError(f"unknown sampler {self.sampler!r} (choose from: "
                              f"{', '.join(SAMPLERS)})")
        object.__setattr__(self, "sampler", sampler)
        study = f"sweep-{method}" if self.study is None else str(self.study).strip()
        if not study or len(study) > MAX_STUDY_NAME:  # run names add "/trial-<n>"
            raise ConfigError(f"invalid study name {self.study!r} "
                              f"(1 to {MAX_STUDY_NAME} characters)")
        object.__setattr__(self, "study", study)
        if self.timeout is not None and not (
            isinstance(self.timeout, (int, float)) and math.isfinite(self.timeout)
            and self.timeout > 0
        ):
            raise ConfigError(f"invalid timeout: {self.timeout!r} (seconds, > 0)")
        if self.space is not None:
            object.__setattr__(self, "space", tuple(self.space))
            if not self.space:
                raise ConfigError("the search space is empty: nothing to sample")
            for p in self.space:
                if p.name not in TUNABLE[method]:
                    raise ConfigError(f"{p.name!r} has no effect on {method}")

    def check_seeds(self, base: TrainConfig) -> None:
        """The seeds of a trial, base.seed ... base.seed + seeds - 1, must all be valid."""
        if base.seed + self.seeds - 1 > MAX_SEED:
            raise ConfigError(f"invalid seed: {base.seed} with {self.seeds} seeds per trial "
                              f"goes past the largest seed {MAX_SEED}")

    def resolved_space(self, base: TrainConfig) -> Space:
        if self.space is not None:
            return self.space
        return default_space(self.method, base.optimizer, base.hyper_update)


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class TrialOutcome:
    """One trial: its sampled values, its runs, and how it ended.

    ``state``: ``complete``, ``diverged`` (a seed diverged), ``invalid`` (the
    sampled combination is not a valid config), ``interrupted`` or ``running``.
    ``value``: mean best validation accuracy over seeds (complete trials).
    """

    number: int
    state: str
    value: float | None
    values: dict[str, Any]
    run_ids: tuple[int, ...]
    statuses: tuple[str, ...] = ()
    reason: str | None = None


@dataclass(frozen=True)
class StudyStatus:
    """The whole study (all workers) at the end of this worker's sweep."""

    name: str
    counted: int  # complete + pruned + running: what ``trials`` counts
    complete: int
    pruned: int
    failed: int  # interrupted or crashed (surplus trials given back are not counted)
    running: int
    best: TrialOutcome | None


@dataclass(frozen=True)
class SweepResult:
    study: str
    method: str
    target: int  # the ``trials`` this worker aimed at
    stopped: str  # done | timeout | interrupted
    trials: tuple[TrialOutcome, ...]  # the trials this worker ran
    status: StudyStatus
    space: Space = field(default_factory=tuple)


class SweepEvents(Events):
    """Progress callbacks of a sweep; the run callbacks come from each run's training."""

    def trial_started(self, number: int, values: dict[str, Any], seeds: tuple[int, ...]) -> None:
        ...

    def trial_finished(self, outcome: TrialOutcome) -> None: ...


# --------------------------------------------------------------------------- the sweep


def run_sweep(base: TrainConfig, sweep: SweepConfig, store: Store, *,
              events: SweepEvents | None = None) -> SweepResult:
    """Run trials of ``sweep.study`` in this process until the study has ``sweep.trials``.

    ``base`` gives every value the space does not sample (its ``seed`` is the
    first seed; its ``patience`` the early stopping). The study is created in
    ``store``'s database on first use; workers that join it must sweep the same
    method, space, seeds, sampler and base config (ConfigError otherwise).
    Ctrl-C ends the current run as ``interrupted``, marks its trial FAIL and
    returns with ``stopped="interrupted"``.
    """
    import optuna

    if base.method != sweep.method:
        raise ConfigError(f"the base configuration is for {base.method}, the sweep for "
                          f"{sweep.method}")
    sweep.check_seeds(base)
    space = sweep.resolved_space(base)
    check_space(space, base)
    if base.is_peer:  # before the study is created
        check_available(base.method)
    events = events or SweepEvents()
    storage = _storage(store)
    study = _open_study(storage, sweep, base, space, store)
    started = time.monotonic()
    outcomes: list[TrialOutcome] = []
    stopped = "done"
    trial = None
    try:
        while True:
            if sweep.timeout is not None and time.monotonic() - started >= sweep.timeout:
                stopped = "timeout"
                break
            _fail_stale_trials(study, store)
            if _count(study) >= sweep.trials:
                break
            trial = study.ask()
            trial.set_user_attr("adatune_worker", owner_record())
            if _count(study, before=trial.number) >= sweep.trials:
                trial.set_user_attr("adatune_surplus", True)
                _tell(study, trial, optuna.trial.TrialState.FAIL)
                trial = None
                break
            outcome = _run_trial(study, trial, base, sweep, space, store, events)
            trial = None
            outcomes.append(outcome)
            events.trial_finished(outcome)
            if outcome.state == "interrupted":
                stopped = "interrupted"
                break
    except KeyboardInterrupt:
        stopped = "interrupted"
        if trial is not None:
            _tell(study, trial, optuna.trial.TrialState.FAIL)
    return SweepResult(study=sweep.study, method=sweep.method, target=sweep.trials,
                       stopped=stopped, trials=tuple(outcomes), status=study_status(study),
                       space=space)


class _TrialEvents(Events):
    """Forwards to the caller's events; records each new run id on the trial."""

    def __init__(self, trial: Any, events: Events, run_ids: list[int]) -> None:
        self.trial, self.events, self.run_ids = trial, events, run_ids

    def run_started(self, run_id: int, config: dict[str, Any], *, steps_per_epoch: int,
                    start_epoch: int) -> None:
        self.run_ids.append(run_id)
        self.trial.set_user_attr("adatune_runs", list(self.run_ids))
        self.events.run_started(run_id, config, steps_per_epoch=steps_per_epoch,
                                start_epoch=start_epoch)

    def step_done(self, epoch: int, batch: int, loss: float, lr: float,
                  mu: float | None) -> None:
        self.events.step_done(epoch, batch, loss, lr, mu)

    def epoch_done(self, record: EpochRecord) -> None:
        self.events.epoch_done(record)


def _run_trial(study: Any, trial: Any, base: TrainConfig, sweep: SweepConfig, space: Space,
               store: Store, events: SweepEvents) -> TrialOutcome:
    from optuna.trial import TrialState

    from adatune.running.engine import train

    values = sample(trial, space)
    trial.set_user_attr("adatune_values", values)
    seeds = tuple(base.seed + k for k in range(sweep.seeds))
    try:
        config = base.replace(**values)
    except ConfigError as exc:  # e.g. nesterov sampled with momentum 0
        trial.set_user_attr("adatune_invalid", str(exc))
        _tell(study, trial, TrialState.PRUNED)
        return TrialOutcome(trial.number, "invalid", None, values, (), reason=str(exc))
    events.trial_started(trial.number, values, seeds)
    run_ids: list[int] = []
    results: list[RunResult] = []
    tracker = _TrialEvents(trial, events, run_ids)
    try:
        for k, seed in enumerate(seeds):
            extra = {**config.extra, "sweep": {"study": sweep.study, "trial": trial.number,
                                               "seed_index": k, "params": values}}
            result = train(config.replace(seed=seed, extra=extra), store,
                           name=f"{sweep.study}/trial-{trial.number}",
                           experiment=sweep.study, kind=RUN_KIND, events=tracker)
            results.append(result)
            trial.set_user_attr("adatune_statuses", [r.status for r in results])
            if result.status == "interrupted":
                break
    except BaseException:
        _tell(study, trial, TrialState.FAIL)
        raise
    statuses = tuple(r.status for r in results)
    ids = tuple(r.run_id for r in results)
    if "interrupted" in statuses:
        _tell(study, trial, TrialState.FAIL)
        return TrialOutcome(trial.number, "interrupted", None, values, ids, statuses,
                            reason=next(r.reason for r in results if r.status == "interrupted"))
    # The objective: validation accuracy, or minus the validation loss without accuracies.
    bests = [r.best_val_acc if config.classification
             else (None if r.best_val_loss is None else -r.best_val_loss) for r in results]
    if "diverged" in statuses or any(b is None or not math.isfinite(b) for b in bests):
        reason = next((r.reason for r in results if r.status == "diverged"), None)
        _tell(study, trial, TrialState.PRUNED)
        return TrialOutcome(trial.number, "diverged", None, values, ids, statuses,
                            reason=reason or "no finite validation score")
    value = math.fsum(bests) / len(bests)
    _tell(study, trial, TrialState.COMPLETE, value)
    return TrialOutcome(trial.number, "complete", value, values, ids, statuses)


def _tell(study: Any, trial: Any, state: Any, value: float | None = None) -> None:
    """Finish a trial; one another worker already closed (as stale) stays as it is."""
    from optuna.exceptions import UpdateFinishedTrialError

    try:
        study.tell(trial, value, state=state, skip_if_finished=True)
    except UpdateFinishedTrialError:
        pass


# --------------------------------------------------------------------------- the study


def _counted_states() -> tuple[Any, ...]:
    from optuna.trial import TrialState

    return (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


def _count(study: Any, *, before: int | None = None) -> int:
    trials = study.get_trials(deepcopy=False, states=_counted_states())
    return sum(1 for t in trials if before is None or t.number < before)


def _storage(store: Store) -> Any:
    """Optuna's storage on the store's database, robust to several processes.

    Each storage call takes its own connection (no pool: nothing stays open
    between trials, which can last hours). SQLite waits for another process's
    write lock as long as the store does. Two workers creating Optuna's tables
    at the same moment may collide: that is retried.
    """
    import optuna
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError
    from sqlalchemy.pool import NullPool, StaticPool

    from adatune.store.connection import SQLITE_BUSY_TIMEOUT_S, sqlite_path, url_secrets

    kwargs: dict[str, Any] = {"poolclass": NullPool}
    if make_url(store.url).get_backend_name() == "sqlite":
        if sqlite_path(store.url) is None:  # in memory: one connection, or the tables vanish
            kwargs = {"poolclass": StaticPool, "connect_args": {"check_same_thread": False}}
        else:
            kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_S}
    # Optuna reads "{...}" in the URL as a template: escape braces (paths, passwords).
    url = store.url.replace("{", "{{").replace("}", "}}")
    last: Exception | None = None
    for attempt in range(6):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
        except (SQLAlchemyError, optuna.exceptions.StorageInternalError) as exc:
            last = exc
            time.sleep(0.1 * (attempt + 1) + random.random() * 0.3)
        except RuntimeError as exc:  # schema of another Optuna version
            reason = mask_secrets(" ".join(str(exc).split()), url_secrets(store.url))
            raise StoreError(f"cannot use Optuna's tables in {store.location}: {reason}") from None
    reason = mask_secrets(" ".join(str(getattr(last, "orig", None) or last).split()),
                          url_secrets(store.url))
    raise StoreError(f"cannot create Optuna's tables in {store.location}: {reason}")


def _definition(base: TrainConfig, sweep: SweepConfig, space: Space) -> dict[str, Any]:
    """What every worker of a study must agree on (JSON, as Optuna stores it)."""
    tuned = {p.name for p in space}
    config = {k: v for k, v in base.to_dict().items()
              if k not in _LOCAL_FIELDS and k not in tuned}
    return json.loads(json.dumps({
        "method": sweep.method, "seeds": sweep.seeds, "sampler": sweep.sampler,
        "space": space_dict(space), "config": config,
    }))


def _mismatch(name: str, stored: dict[str, Any], ours: dict[str, Any]) -> str | None:
    for key in ("method", "seeds", "sampler", "space"):
        if stored.get(key) != ours[key]:
            shown = {"space": "another search space"}.get(key)
            theirs = shown or f"{key} {stored.get(key)!r}"
            mine = "" if shown else f" (this command: {ours[key]!r})"
            return f"study {name!r} was started with {theirs}{mine}"
    theirs, mine = stored.get("config", {}), ours["config"]
    if "hyper_update" in mine:  # studies started before the rule was a choice: additive
        theirs = {"hyper_update": ADDITIVE, **theirs}
    for key in sorted(set(theirs) | set(mine)):
        if theirs.get(key) != mine.get(key):
            return (f"study {name!r} was started with {key} = {theirs.get(key)!r} "
                    f"(this command: {mine.get(key)!r})")
    return None


def _open_study(storage: Any, sweep: SweepConfig, base: TrainConfig, space: Space,
                store: Store) -> Any:
    import optuna

    if sweep.sampler == "tpe":
        with warnings.catch_warnings():  # constant_liar is "experimental" in Optuna 4
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            # constant_liar: running trials of other workers count as bad guesses, so
            # that workers do not all sample the same point.
            sampler: Any = optuna.samplers.TPESampler(constant_liar=True)
    else:
        sampler = optuna.samplers.RandomSampler()
    study = optuna.create_study(storage=storage, study_name=sweep.study, sampler=sampler,
                                direction="maximize", load_if_exists=True)
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise ConfigError(f"study {sweep.study!r} in {store.location} was not made by "
                          "adatune sweep (it minimises); give another study=")
    ours = _definition(base, sweep, space)
    # Trials first, then the marker: a worker writes its marker before its first trial,
    # so trials seen here mean the marker (if adatune made the study) is seen next.
    has_trials = bool(study.get_trials(deepcopy=False))
    stored = study.user_attrs.get(STUDY_ATTR)
    if stored is None:
        if has_trials:
            raise ConfigError(f"study {sweep.study!r} in {store.location} was not made by "
                              "adatune sweep; give another study=")
        study.set_user_attr(STUDY_ATTR, ours)
        stored = study.user_attrs.get(STUDY_ATTR)  # another worker may have written first
    problem = _mismatch(sweep.study, stored, ours)
    if problem:
        raise ConfigError(f"{problem}: run the same command on every worker, or give "
                          "another study=")
    return study


def _fail_stale_trials(study: Any, store: Store) -> None:
    """Mark FAIL the RUNNING trials whose worker is gone (see the module doc)."""
    from optuna.trial import TrialState

    from adatune.store import repository as _repository

    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get("adatune_worker")
        # This process runs no trial while it looks (one sweep per process at a time):
        # a RUNNING trial of its own was left by an earlier, aborted call.
        ours = worker == owner_record()
        gone = ours or not process_may_be_alive(worker)
        run_ids = t.user_attrs.get("adatune_runs") or []
        if not gone and run_ids:
            runs = store.list_runs(ids=run_ids)
            now = dt.datetime.now(dt.timezone.utc)
            beats = [r.heartbeat_at or r.ended_at or r.started_at for r in runs]
            gone = (bool(runs) and all(r.status != "running" for r in runs)
                    and all((now - b).total_seconds() > _repository.STALE_AFTER_S
                            for b in beats))
        if gone:
            _tell(study, t.number, TrialState.FAIL)


def _outcome(t: Any) -> TrialOutcome:
    from optuna.trial import TrialState

    attrs = t.user_attrs
    state = {TrialState.COMPLETE: "complete", TrialState.RUNNING: "running",
             TrialState.FAIL: "interrupted"}.get(t.state)
    if state is None:
        state = "invalid" if "adatune_invalid" in attrs else "diverged"
    return TrialOutcome(number=t.number, state=state, value=t.value,
                        values=dict(attrs.get("adatune_values") or t.params),
                        run_ids=tuple(attrs.get("adatune_runs") or ()),
                        statuses=tuple(attrs.get("adatune_statuses") or ()))


def study_status(study: Any) -> StudyStatus:
    """Counts of the study's trials by state, and its best trial."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    by_state = {s: 0 for s in TrialState}
    for t in trials:
        if t.state == TrialState.FAIL and t.user_attrs.get("adatune_surplus"):
            continue
        by_state[t.state] += 1
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    best = max(complete, key=lambda t: (t.value, -t.number)) if complete else None
    return StudyStatus(
        name=study.study_name,
        counted=sum(by_state[s] for s in _counted_states()),
        complete=by_state[TrialState.COMPLETE], pruned=by_state[TrialState.PRUNED],
        failed=by_state[TrialState.FAIL], running=by_state[TrialState.RUNNING],
        best=None if best is None else _outcome(best))


__all__ = [
    "DEFAULT_PATIENCE",
    "DEFAULT_SEEDS",
    "DEFAULT_TRIALS",
    "SAMPLERS",
    "StudyStatus",
    "SweepConfig",
    "SweepEvents",
    "SweepResult",
    "TrialOutcome",
    "run_sweep",
    "study_status",
]
