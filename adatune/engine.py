"""The one training loop: a hypergradient tuner or a baseline schedule plugged in.

Per epoch: train, evaluate on validation and test, write the full-state
``last`` checkpoint (and ``best`` on a new best validation accuracy), then
commit the epoch and its sampled steps to the store in one transaction. The
checkpoint (:mod:`adatune.checkpoint`) carries every epoch's records, so a store
that lost commits (a run killed between the two writes, a power cut) is healed on
``resume``. SIGTERM and SIGUSR1 checkpoint in the middle of an epoch
(:mod:`adatune.signals`). The library never prints: progress goes to an
:class:`Events` object the caller supplies.
"""

from __future__ import annotations

import dataclasses
import math
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import adatune
from adatune import checkpoint, signals
from adatune.config import TrainConfig
from adatune.data import DataSplits, batches, load_splits
from adatune.errors import CheckpointError, ConfigError, RunBusy
from adatune.models import build_model
from adatune.schedules import Schedule, ScheduleConfig, build_schedule
from adatune.store import STALE_AFTER_S, Store
from adatune.store.records import EpochRecord, NewRun, RunRecord, StepRecord
from adatune.tuners import HypergradientTuner

HEARTBEAT_EVERY_S = 30.0
DEFAULT_CHECKPOINT_DIR = "adatune-runs"


@dataclass(frozen=True)
class DivergenceRules:
    """When a run is judged divergent (it then ends with status ``diverged``).

    Always: a non-finite training loss, LR or validation loss, or a training
    loss above ``loss_factor`` times its first value. Optionally (find-alpha
    probes): the LR above ``lr_factor`` times its initial value, an epoch whose
    LR stayed at 0 throughout, or any non-finite hypergradient.
    """

    loss_factor: float = 10.0
    lr_factor: float | None = None
    zero_lr_epoch: bool = False
    nonfinite_hypergradient: bool = False


class Events:
    """Progress callbacks; override what you need. The defaults do nothing."""

    def run_started(self, run_id: int, config: TrainConfig, *, steps_per_epoch: int,
                    start_epoch: int) -> None: ...

    def step_done(self, epoch: int, batch: int, loss: float, lr: float,
                  mu: float | None) -> None: ...

    def epoch_done(self, record: EpochRecord) -> None: ...


@dataclass(frozen=True)
class RunResult:
    run_id: int
    status: str  # completed | diverged | interrupted
    reason: str | None
    epochs: tuple[EpochRecord, ...]
    best_val_acc: float | None
    best_epoch: int | None
    test_acc: float | None
    stopped_early: bool
    checkpoint_dir: str


class _Diverged(Exception):
    pass


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA, then MPS, then the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available here (try --device auto)")
    if name == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ConfigError("--device mps: MPS is not available here (try --device auto)")
    return torch.device(name)


def train(
    config: TrainConfig,
    store: Store,
    *,
    name: str | None = None,
    experiment: str | None = None,
    kind: str | None = None,
    parent_id: int | None = None,
    rules: DivergenceRules | None = None,
    events: Events | None = None,
) -> RunResult:
    """Train one run to completion (or divergence, or Ctrl-C), recording it in ``store``.

    Everything that can fail on user input (device, data, model, tuner
    arguments) is checked before the run is written.
    """
    ckpt_root = Path(config.checkpoint_dir or DEFAULT_CHECKPOINT_DIR).resolve()
    config = config.replace(checkpoint_dir=str(ckpt_root))
    session = _Session(config, rules or DivergenceRules(loss_factor=config.divergence_factor))
    signals.raise_if_stopping()  # SIGTERM came between runs (a sweep's, a search's)
    run_id = store.create_run(NewRun(
        kind=kind or config.kind, method=config.method, optimizer=config.optimizer,
        network=config.network, dataset=config.dataset, seed=config.seed,
        config=config.to_dict(), name=name, experiment=experiment, parent_id=parent_id,
        device=str(session.device),
    ))
    return session.run(store, run_id, ckpt_root / f"run-{run_id}", events or Events())


def resume(store: Store, run_id: int, *, epochs: int | None = None, device: str | None = None,
           rules: DivergenceRules | None = None, events: Events | None = None) -> RunResult:
    """Continue an interrupted or failed run from its ``last`` checkpoint.

    ``epochs`` sets a new total (to extend a run, a completed one too) and
    ``device`` moves it; both are recorded in the run's config, with the epoch
    they were applied at under ``extra["resumed"]``. Nothing else of a run can
    change on resume. Of two processes resuming one run at once, one goes on
    and the other gets :class:`RunBusy`; a run another process still trains is
    refused the same way.
    """
    run = store.get_run(run_id, steps=False).run
    config = TrainConfig.from_dict(run.config)
    _check_resumable(run, config, epochs)
    ckpt_dir = checkpoint.run_dir(config.checkpoint_dir or DEFAULT_CHECKPOINT_DIR, run_id)
    lock = checkpoint.RunLock(ckpt_dir).acquire(run_id, store.location)
    try:
        seen = store.get_run(run_id, steps=False).run  # no process on this host has it now
        _check_resumable(seen, config, epochs, lock)
        changed = _resumed_config(seen, config, epochs=epochs, device=device)
        session = _Session(changed, rules or DivergenceRules(loss_factor=config.divergence_factor))
        last = ckpt_dir / "last.pt"
        state = session.load(last) if last.exists() else None
        if state is None and seen.epochs > 0:
            raise ConfigError(f"run {run_id} has no checkpoint at {last}; it cannot be resumed")
        if state is not None and state["epoch"] < seen.epochs:
            raise CheckpointError(f"cannot resume run {run_id}: its checkpoint {last} is at epoch "
                                  f"{state['epoch']} but the store has {seen.epochs} epochs "
                                  "(was the file replaced by an older one?)")
        store.reopen_run(run_id, seen=seen,
                         config=None if changed is config else changed.to_dict(),
                         device=None if device is None else str(session.device))
        for record, steps in session.history.after(seen.epochs):
            # Lost by the store (killed between checkpoint and commit, or a power cut
            # that took back its last commits): the checkpoint has them.
            store.record_epoch(run_id, record, steps)
    except BaseException:
        lock.release()
        raise
    return session.run(store, run_id, ckpt_dir, events or Events(), resumed=state, lock=lock)


def _check_resumable(run: RunRecord, config: TrainConfig, epochs: int | None,
                     lock: checkpoint.RunLock | None = None) -> None:
    """Refuse a run that cannot be resumed (with ``lock`` held: look closer)."""
    extend = epochs is not None and epochs > run.epochs
    if run.status == "diverged":
        raise ConfigError(f"run {run.id} diverged ({run.error}); start a new run instead")
    if run.status == "completed" and not extend:
        raise ConfigError(f"run {run.id} already completed ({run.epochs} epochs); give "
                          f"--epochs above {run.epochs} to train it longer")
    if run.status == "completed" and (run.summary or {}).get("stopped_early"):
        raise ConfigError(f"run {run.id} stopped early (no better validation accuracy for "
                          f"{config.patience} epochs); more epochs would stop it again")
    if lock is None or run.status != "running":
        return
    host = lock.previous_host  # none here holds the lock: a process here that ran it died
    if host != socket.gethostname():  # its process may live on another machine
        raise RunBusy(f"run {run.id} may still be running{f' on {host}' if host else ''} "
                      f"(its heartbeat is recent); it can be resumed once its heartbeat is "
                      f"{STALE_AFTER_S:.0f} s old, when `adatune runs list` shows it interrupted")


def _resumed_config(run: RunRecord, config: TrainConfig, *, epochs: int | None,
                    device: str | None) -> TrainConfig:
    """``config`` with the options applied on resume, and a note of them in ``extra``."""
    changes: dict[str, Any] = {}
    if epochs is not None and epochs != config.epochs:
        if epochs < run.epochs:
            raise ConfigError(f"--epochs {epochs}: run {run.id} has already trained "
                              f"{run.epochs} epochs")
        changes["epochs"] = epochs
    if device is not None and device != config.device:
        changes["device"] = device
    if not changes:
        return config
    note = {"at_epoch": run.epochs, **{k: [getattr(config, k), v] for k, v in changes.items()}}
    extra = {**config.extra, "resumed": [*config.extra.get("resumed", []), note]}
    return config.replace(**changes, extra=extra)  # validates the new values


class _Session:
    """Everything built from a config: data, model, optimizer, tuner or schedule."""

    def __init__(self, config: TrainConfig, rules: DivergenceRules) -> None:
        self.config = config
        self.rules = rules
        self.device = resolve_device(config.device)
        self.data: DataSplits = load_splits(
            config.dataset, data_dir=config.data_dir, download=config.download,
            val_fraction=config.val_fraction, val_source=config.val_source,
            seed=config.seed, train_subset=config.train_subset)
        torch.manual_seed(config.seed)
        self.model: nn.Module = build_model(config.network, self.data.spec).to(self.device)
        self.optimizer = _optimizer(config, self.model)
        self.steps_per_epoch = len(batches(self.data.train, config.batch_size, shuffle=True))
        self.tuner: HypergradientTuner | None = None
        self.schedule: Schedule | None = None
        try:
            if config.is_tuner:
                self.tuner = _tuner(config, self.optimizer, self.model)
            else:
                self.schedule = build_schedule(
                    self.optimizer,
                    ScheduleConfig(config.method, step_size=config.step_size,
                                   lr_decay=config.lr_decay, t_0=config.t_0,
                                   t_mult=config.t_mult),
                    steps_per_epoch=self.steps_per_epoch)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        self.train_gen = torch.Generator().manual_seed(config.seed)
        self.val_gen = torch.Generator().manual_seed(config.seed + 1)
        # progress of the run (checkpointed)
        self.epoch = 0
        self.step = 0
        self.elapsed = 0.0
        self.initial_loss: float | None = None
        self.best_val_acc: float | None = None
        self.best_epoch: int | None = None
        self.test_at_best: float | None = None
        self.bad_epochs = 0
        self.lr_max_last_epoch = 0.0
        self.history = checkpoint.History()  # every epoch and step recorded, for the store
        self.partial: dict[str, Any] | None = None  # progress in an epoch (mid-epoch resume)

    # ------------------------------------------------------------ checkpoints
    def _state(self, partial: dict[str, Any] | None = None) -> dict[str, Any]:
        owner = self.tuner if self.tuner is not None else self.optimizer
        return {
            "epoch": self.epoch, "step": self.step, "elapsed": self.elapsed,
            "initial_loss": self.initial_loss, "best_val_acc": self.best_val_acc,
            "best_epoch": self.best_epoch, "test_at_best": self.test_at_best,
            "bad_epochs": self.bad_epochs,
            "model": self.model.state_dict(),
            "optim": owner.state_dict(),
            "schedule": None if self.schedule is None else self.schedule.state_dict(),
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": (torch.cuda.get_rng_state_all()
                             if self.device.type == "cuda" else None),
                    "train": self.train_gen.get_state(), "val": self.val_gen.get_state()},
            "history": self.history.state(),
            "partial": partial,
        }

    def load(self, path: Path) -> dict[str, Any]:
        state = checkpoint.load(path, kind="last", map_location=self.device)
        with checkpoint.restoring(path):  # a state that does not fit this run: one line
            self.model.load_state_dict(state["model"])
            owner = self.tuner if self.tuner is not None else self.optimizer
            owner.load_state_dict(state["optim"])
            if self.schedule is not None:
                self.schedule.load_state_dict(state["schedule"])
            self._set_rng(state["rng"])
            self.train_gen.set_state(state["rng"]["train"].cpu())
            self.val_gen.set_state(state["rng"]["val"].cpu())
            for key in ("epoch", "step", "elapsed", "initial_loss", "best_val_acc",
                        "best_epoch", "test_at_best", "bad_epochs"):
                setattr(self, key, state[key])
            self.history = checkpoint.History.from_state(state)
            self.partial = state.get("partial")
            if self.partial:
                self.partial = {**self.partial, "rng": state["rng"]}
        return state

    def _set_rng(self, rng: dict[str, Any]) -> None:
        torch.set_rng_state(rng["torch"].cpu())
        if rng["cuda"] is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])

    @staticmethod
    def _save(obj: Any, path: Path, kind: str = "last") -> None:
        checkpoint.save(obj, path, kind=kind)

    # -------------------------------------------------------------- the loop
    def run(self, store: Store, run_id: int, ckpt_dir: Path, events: Events,
            resumed: dict[str, Any] | None = None,
            lock: checkpoint.RunLock | None = None) -> RunResult:
        with signals.deferred():  # SIGTERM: stop at the next safe point, checkpointed
            return self._run(store, run_id, ckpt_dir, events, resumed,
                             lock or checkpoint.RunLock(ckpt_dir))

    def _run(self, store: Store, run_id: int, ckpt_dir: Path, events: Events,
             resumed: dict[str, Any] | None, lock: checkpoint.RunLock) -> RunResult:
        cfg = self.config
        self.ckpt_dir = ckpt_dir
        records = list(store.get_run(run_id, steps=False).epochs) if resumed else []
        status, reason, stopped_early = "completed", None, False
        try:
            if not lock.held:
                lock.acquire(run_id, store.location)
            events.run_started(run_id, cfg, steps_per_epoch=self.steps_per_epoch,
                               start_epoch=self.epoch + 1)
            while self.epoch < cfg.epochs:
                record, steps = self._epoch(store, run_id, events)
                self._judge_epoch(record)
                improved = self.best_val_acc is None or record.val_acc > self.best_val_acc
                if improved:
                    self.best_val_acc, self.best_epoch = record.val_acc, record.epoch
                    self.test_at_best, self.bad_epochs = record.test_acc, 0
                    self._save({"epoch": record.epoch, "model": self.model.state_dict(),
                                "config": cfg.to_dict()}, ckpt_dir / "best.pt", "best")
                else:
                    self.bad_epochs += 1
                self.history.add(record, steps)
                self._save(self._state(), ckpt_dir / "last.pt")
                store.record_epoch(run_id, record, steps)
                records.append(record)
                events.epoch_done(record)
                if cfg.patience is not None and self.bad_epochs >= cfg.patience:
                    stopped_early = True
                    break
                signals.take_checkpoint_request()  # last.pt was just written
                if self.epoch < cfg.epochs:  # (after the last one, the run completes)
                    self._stop_if_asked(f"after epoch {record.epoch}")
        except _Diverged as exc:
            status, reason = "diverged", str(exc)
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (signals.Terminated)
            status = "interrupted"
            reason = signals.interruption_reason(exc, self.epoch + 1)
        except BaseException as exc:
            store.finish_run(run_id, "failed", error=f"{type(exc).__name__}: {exc}")
            lock.release()
            raise
        summary = {"best_val_acc": self.best_val_acc, "best_epoch": self.best_epoch,
                   "test_acc": self.test_at_best, "final_lr": self._lr(),
                   "stopped_early": stopped_early, "checkpoint_dir": str(ckpt_dir)}
        store.finish_run(run_id, status, error=reason, summary=summary)
        lock.release()
        return RunResult(run_id=run_id, status=status, reason=reason, epochs=tuple(records),
                         best_val_acc=self.best_val_acc, best_epoch=self.best_epoch,
                         test_acc=self.test_at_best, stopped_early=stopped_early,
                         checkpoint_dir=str(ckpt_dir))

    def _epoch(self, store: Store, run_id: int, events: Events):
        cfg, model, dev = self.config, self.model, self.device
        epoch = self.epoch + 1
        part, self.partial = self.partial or {}, None  # resumed in the middle of this epoch
        if part:  # replay the epoch's order, then skip what was done
            self.train_gen.set_state(part["train_gen"].cpu())
        train_start = self.train_gen.get_state()
        started = time.perf_counter() - part.get("seconds", 0.0)
        last_beat = time.monotonic()
        model.train()
        val_iter = self._val_batches(part.get("val"))
        loss_sum, correct, seen, n_steps = (part.get(k, 0) for k in ("loss_sum", "correct",
                                                                     "seen", "n_steps"))
        lr_sum, lr_max = part.get("lr_sum", 0.0), part.get("lr_max", 0.0)
        steps = [StepRecord(**s) for s in part.get("steps", [])]
        nonfinite_before = part.get("nonfinite_before",
                                    self.tuner.nonfinite_count if self.tuner else 0)
        done = part.get("batches", 0)
        for batch, (x, y) in enumerate(batches(self.data.train, cfg.batch_size, shuffle=True,
                                               generator=self.train_gen)):
            if batch < done:
                continue
            if batch == done and part:  # skipping may have drawn from torch's generator
                self._set_rng(part["rng"])
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            lr_used, loss, logits = self._train_step(x, y, val_iter)
            loss_value = float(loss)
            lr_now = self._lr()
            self._judge_step(loss_value, lr_now, epoch)
            n = y.shape[0]
            loss_sum += loss_value * n
            correct += (logits.argmax(1) == y).sum()  # stays on the device until the epoch ends
            seen += n
            n_steps += 1
            lr_sum += lr_used
            lr_max = max(lr_max, lr_used)
            mu, hyper_lr, h = self._tuner_view()
            if self.step % cfg.log_every == 0:
                steps.append(StepRecord(step=self.step, epoch=epoch, lr=lr_used, mu=mu,
                                        hyper_lr=hyper_lr, hypergradient=h,
                                        train_loss=loss_value))
            self.step += 1
            events.step_done(epoch, batch + 1, loss_value, lr_now, mu)
            if time.monotonic() - last_beat > HEARTBEAT_EVERY_S:
                store.heartbeat(run_id)
                last_beat = time.monotonic()
            if signals.stop_requested() is not None or signals.take_checkpoint_request():
                # SIGTERM or SIGUSR1: checkpoint the epoch's progress after this step
                self._save(self._state(partial={
                    "batches": batch + 1, "train_gen": train_start, "val": val_iter.position(),
                    "loss_sum": loss_sum, "correct": int(correct), "seen": seen,
                    "n_steps": n_steps, "lr_sum": lr_sum, "lr_max": lr_max,
                    "steps": [dataclasses.asdict(s) for s in steps],
                    "nonfinite_before": nonfinite_before,
                    "seconds": time.perf_counter() - started}), self.ckpt_dir / "last.pt")
                store.heartbeat(run_id)
                self._stop_if_asked(f"in epoch {epoch} after step {batch + 1} of "
                                    f"{self.steps_per_epoch}")
        if part and done >= self.steps_per_epoch:  # resumed after the epoch's last step
            self._set_rng(part["rng"])
        if self.schedule is not None:
            self.schedule.after_epoch()
        val_loss, val_acc = evaluate(model, self.data.val, dev, cfg.batch_size)
        test_loss, test_acc = evaluate(model, self.data.test, dev, cfg.batch_size)
        self.elapsed += time.perf_counter() - started
        self.epoch = epoch
        mu, hyper_lr, _ = self._tuner_view()
        record = EpochRecord(
            epoch=epoch, lr=self._lr(), lr_mean=lr_sum / max(n_steps, 1), mu=mu, hyper_lr=hyper_lr,
            train_loss=loss_sum / max(seen, 1), train_acc=int(correct) / max(seen, 1),
            val_loss=val_loss, val_acc=val_acc, test_loss=test_loss, test_acc=test_acc,
            elapsed_s=self.elapsed,
            nonfinite_hypergradients=(self.tuner.nonfinite_count - nonfinite_before
                                      if self.tuner else 0))
        self.lr_max_last_epoch = lr_max
        return record, steps

    def _train_step(self, x: Tensor, y: Tensor, val_iter: Iterator) -> tuple[float, Tensor, Tensor]:
        model, ce = self.model, nn.functional.cross_entropy
        lr_used = self._lr()
        kept: dict[str, Tensor] = {}

        def closure() -> Tensor:
            logits = model(x)
            kept.setdefault("logits", logits.detach())
            return ce(logits, y)

        if self.tuner is None:
            self.optimizer.zero_grad(set_to_none=True)
            loss = closure()
            loss.backward()
            if self.config.grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), self.config.grad_clip)
            self.optimizer.step()
            self.schedule.after_step()
        elif self.tuner.outer == "training":  # HD moves the LR before the update
            loss = self.tuner.step(closure)
            lr_used = self._lr()
        else:
            def val_loss() -> Tensor:
                xv, yv = next(val_iter)
                model.eval()  # no dropout, and batch-norm statistics stay untouched
                try:
                    return ce(model(xv.to(self.device)), yv.to(self.device))
                finally:
                    model.train()

            loss = self.tuner.step(closure, val_loss=val_loss)
        return lr_used, loss.detach(), kept["logits"]

    def _val_batches(self, position: dict[str, Any] | None = None) -> checkpoint.Passes:
        return checkpoint.Passes(
            lambda: batches(self.data.val, self.config.batch_size, shuffle=True,
                            generator=self.val_gen), self.val_gen, position)

    def _stop_if_asked(self, where: str) -> None:
        """At a safe point (everything checkpointed): end the run if SIGTERM asked to."""
        signum = signals.stop_requested()
        if signum is not None:
            signals.acted_on_stop()
            raise signals.Terminated(signum, f"stopped by {signals.signal_name(signum)} "
                                             f"{where}; checkpointed there, --resume continues")

    def _lr(self) -> float:
        if self.tuner is not None:
            return self.tuner.lr
        return float(self.optimizer.param_groups[0]["lr"])

    def _tuner_view(self) -> tuple[float | None, float | None, float | None]:
        if self.tuner is None:
            return None, None, None
        return self.tuner.mu, self.tuner.hyper_lr, self.tuner.last_hypergradient

    # ---------------------------------------------------------- divergence
    def _judge_step(self, loss: float, lr: float, epoch: int) -> None:
        where = f"epoch {epoch}, step {self.step}"
        if not math.isfinite(loss):
            raise _Diverged(f"training loss is {loss} at {where}")
        if not math.isfinite(lr):
            raise _Diverged(f"learning rate is {lr} at {where}")
        if self.initial_loss is None:
            self.initial_loss = loss
        limit = self.rules.loss_factor * max(self.initial_loss, 1e-12)
        if loss > limit:
            raise _Diverged(f"training loss {loss:.4g} exceeds {self.rules.loss_factor:g}x "
                            f"its initial {self.initial_loss:.4g} at {where}")
        if self.rules.lr_factor is not None and lr > self.rules.lr_factor * self.config.lr:
            raise _Diverged(f"learning rate exploded to {lr:.4g} (over "
                            f"{self.rules.lr_factor:g}x the initial {self.config.lr:g}) at {where}")
        if (self.rules.nonfinite_hypergradient and self.tuner is not None
                and self.tuner.nonfinite_count > 0):
            raise _Diverged(f"non-finite hypergradient at {where}")

    def _judge_epoch(self, record: EpochRecord) -> None:
        if not math.isfinite(record.val_loss):
            raise _Diverged(f"validation loss is {record.val_loss} after epoch {record.epoch}")
        if self.rules.zero_lr_epoch and self.tuner is not None and self.lr_max_last_epoch == 0.0:
            raise _Diverged(f"learning rate pinned at 0 for all of epoch {record.epoch}")


@torch.no_grad()
def evaluate(model: nn.Module, dataset, device: torch.device,
             batch_size: int) -> tuple[float, float]:
    """(mean loss, accuracy) of ``model`` on ``dataset`` in eval mode."""
    was_training = model.training
    model.eval()
    loss_sum, correct, seen = 0.0, 0, 0
    for x, y in batches(dataset, max(batch_size, 256), shuffle=False):
        x, y = x.to(device), y.to(device)
        logits = model(x)
        loss_sum += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
        seen += y.shape[0]
    model.train(was_training)
    return loss_sum / max(seen, 1), correct / max(seen, 1)


def _optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    params = model.parameters()
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                               nesterov=config.nesterov, weight_decay=config.weight_decay)
    cls = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=config.lr, weight_decay=config.weight_decay)


def _tuner(config: TrainConfig, optimizer: torch.optim.Optimizer,
           model: nn.Module) -> HypergradientTuner:
    if config.method == "hd":
        return adatune.HD(optimizer, hyper_lr=config.hyper_lr, alpha=config.alpha,
                          grad_clip=config.grad_clip)
    common = {"alpha": config.alpha, "first_order": config.first_order,
              "grad_clip": config.grad_clip, "hvp": config.hvp, "model": model}
    if config.method == "rtho":
        return adatune.RTHO(optimizer, hyper_lr=config.hyper_lr, **common)
    return adatune.MARTHE(optimizer, hyper_lr=config.hyper_lr, mu=config.mu, **common)
