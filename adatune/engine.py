"""The one training loop: a hypergradient tuner or a baseline schedule plugged in.

Per epoch: train, evaluate on validation and test, write the full-state
``last`` checkpoint (and ``best`` on a new best validation accuracy), then
commit the epoch and its sampled steps to the store in one transaction. The
checkpoint carries the epoch's records too, so a run killed between the two
writes is healed on ``resume``. The library never prints: progress goes to an
:class:`Events` object the caller supplies.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import adatune
from adatune.config import TrainConfig
from adatune.data import DataSplits, batches, load_splits
from adatune.errors import ConfigError
from adatune.models import build_model
from adatune.runtypes import DEFAULT_CHECKPOINT_DIR, DivergenceRules, Events, RunResult
from adatune.schedules import Schedule, ScheduleConfig, build_schedule
from adatune.store import Store
from adatune.store.records import EpochRecord, NewRun, StepRecord
from adatune.tuners import HypergradientTuner

HEARTBEAT_EVERY_S = 30.0
_OWNER_FILE = "owner.json"


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
    run_id = store.create_run(NewRun(
        kind=kind or config.kind, method=config.method, optimizer=config.optimizer,
        network=config.network, dataset=config.dataset, seed=config.seed,
        config=config.to_dict(), name=name, experiment=experiment, parent_id=parent_id,
        device=str(session.device),
    ))
    return session.run(store, run_id, ckpt_root / f"run-{run_id}", events or Events())


def resume(store: Store, run_id: int, *, rules: DivergenceRules | None = None,
           events: Events | None = None) -> RunResult:
    """Continue an interrupted or failed run from its ``last`` checkpoint."""
    detail = store.get_run(run_id, steps=False)
    run = detail.run
    config = TrainConfig.from_dict(run.config)
    ckpt_dir = Path(config.checkpoint_dir or DEFAULT_CHECKPOINT_DIR) / f"run-{run_id}"
    if run.status == "running" and _owner_alive(ckpt_dir):
        raise ConfigError(f"run {run_id} is still running (its process is alive)")
    if run.status == "diverged":
        raise ConfigError(f"run {run_id} diverged ({run.error}); start a new run instead")
    if run.status == "completed":
        raise ConfigError(f"run {run_id} already completed ({run.epochs} epochs)")
    last = ckpt_dir / "last.pt"
    session = _Session(config, rules or DivergenceRules(loss_factor=config.divergence_factor))
    state = session.load(last) if last.exists() else None
    if state is None and run.epochs > 0:
        raise ConfigError(f"run {run_id} has no checkpoint at {last}; it cannot be resumed")
    store.reopen_run(run_id)
    if state is not None and run.epochs < state["epoch"]:
        # Killed after the checkpoint, before the epoch's commit: record it now.
        store.record_epoch(run_id, EpochRecord(**state["pending"]["epoch"]),
                           [StepRecord(**s) for s in state["pending"]["steps"]])
    return session.run(store, run_id, ckpt_dir, events or Events(), resumed=state)


def _owner_alive(ckpt_dir: Path) -> bool:
    """Whether the process that last ran this run may still be running it.

    The owner file names its host and pid: on this host a dead pid means the
    run was killed; on another host only the store's heartbeat can tell.
    """
    try:
        owner = json.loads((ckpt_dir / _OWNER_FILE).read_text())
    except (OSError, ValueError):
        return False
    if owner.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(owner["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, KeyError, ValueError):
        return True
    return True


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

    # ------------------------------------------------------------ checkpoints
    def _state(self, pending: dict[str, Any]) -> dict[str, Any]:
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
            "pending": pending,
        }

    def load(self, path: Path) -> dict[str, Any]:
        try:
            state = torch.load(path, map_location=self.device, weights_only=False)
        except Exception as exc:  # noqa: BLE001 - a damaged file is a user-facing problem
            raise ConfigError(f"cannot read checkpoint {path}: {exc}") from None
        self.model.load_state_dict(state["model"])
        (self.tuner if self.tuner is not None else self.optimizer).load_state_dict(state["optim"])
        if self.schedule is not None:
            self.schedule.load_state_dict(state["schedule"])
        torch.set_rng_state(state["rng"]["torch"].cpu())
        if state["rng"]["cuda"] is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state_all([s.cpu() for s in state["rng"]["cuda"]])
        self.train_gen.set_state(state["rng"]["train"].cpu())
        self.val_gen.set_state(state["rng"]["val"].cpu())
        for key in ("epoch", "step", "elapsed", "initial_loss", "best_val_acc", "best_epoch",
                    "test_at_best", "bad_epochs"):
            setattr(self, key, state[key])
        return state

    @staticmethod
    def _save(obj: Any, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        torch.save(obj, tmp)
        os.replace(tmp, path)

    # -------------------------------------------------------------- the loop
    def run(self, store: Store, run_id: int, ckpt_dir: Path, events: Events,
            resumed: dict[str, Any] | None = None) -> RunResult:
        cfg = self.config
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        owner = ckpt_dir / _OWNER_FILE
        owner.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
        records = list(store.get_run(run_id, steps=False).epochs) if resumed else []
        events.run_started(run_id, cfg, steps_per_epoch=self.steps_per_epoch,
                           start_epoch=self.epoch + 1)
        status, reason, stopped_early = "completed", None, False
        try:
            while self.epoch < cfg.epochs:
                record, steps = self._epoch(store, run_id, events)
                self._judge_epoch(record)
                improved = self.best_val_acc is None or record.val_acc > self.best_val_acc
                if improved:
                    self.best_val_acc, self.best_epoch = record.val_acc, record.epoch
                    self.test_at_best, self.bad_epochs = record.test_acc, 0
                    self._save({"epoch": record.epoch, "model": self.model.state_dict(),
                                "config": cfg.to_dict()}, ckpt_dir / "best.pt")
                else:
                    self.bad_epochs += 1
                pending = {"epoch": dataclasses.asdict(record),
                           "steps": [dataclasses.asdict(s) for s in steps]}
                self._save(self._state(pending), ckpt_dir / "last.pt")
                store.record_epoch(run_id, record, steps)
                records.append(record)
                events.epoch_done(record)
                if cfg.patience is not None and self.bad_epochs >= cfg.patience:
                    stopped_early = True
                    break
        except _Diverged as exc:
            status, reason = "diverged", str(exc)
        except KeyboardInterrupt:
            status = "interrupted"
            reason = f"interrupted during epoch {self.epoch + 1}"
        except BaseException as exc:
            store.finish_run(run_id, "failed", error=f"{type(exc).__name__}: {exc}")
            owner.unlink(missing_ok=True)
            raise
        summary = {"best_val_acc": self.best_val_acc, "best_epoch": self.best_epoch,
                   "test_acc": self.test_at_best, "final_lr": self._lr(),
                   "stopped_early": stopped_early, "checkpoint_dir": str(ckpt_dir)}
        store.finish_run(run_id, status, error=reason, summary=summary)
        owner.unlink(missing_ok=True)
        return RunResult(run_id=run_id, status=status, reason=reason, epochs=tuple(records),
                         best_val_acc=self.best_val_acc, best_epoch=self.best_epoch,
                         test_acc=self.test_at_best, stopped_early=stopped_early,
                         checkpoint_dir=str(ckpt_dir))

    def _epoch(self, store: Store, run_id: int, events: Events):
        cfg, model, dev = self.config, self.model, self.device
        epoch = self.epoch + 1
        started = time.perf_counter()
        last_beat = time.monotonic()
        model.train()
        val_iter = self._val_batches()
        loss_sum, correct, seen, n_steps = 0.0, 0, 0, 0
        lr_sum, lr_max, steps = 0.0, 0.0, []
        nonfinite_before = self.tuner.nonfinite_count if self.tuner else 0
        for batch, (x, y) in enumerate(batches(self.data.train, cfg.batch_size, shuffle=True,
                                               generator=self.train_gen)):
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

    def _val_batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        while True:
            yield from batches(self.data.val, self.config.batch_size, shuffle=True,
                               generator=self.val_gen)

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
