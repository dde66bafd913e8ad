"""The one training loop, over given parts: a model, an optimizer, a tuner or a schedule, data.

:func:`run_loop` trains a :class:`Parts` for the epochs of a :class:`LoopConfig`
and records the run in a store. Per epoch: train, evaluate on validation and
test, write the full-state ``last`` checkpoint (and ``best`` on a better
validation score), then commit the epoch and its sampled steps to the store in
one transaction. The checkpoint carries the epoch's records too, so a run
killed between the two writes is healed on resume. The library never prints:
progress goes to an :class:`Events` object the caller supplies.

Where the parts come from is not this module's business: :mod:`adatune.build`
builds them from a :class:`~adatune.config.TrainConfig` (the CLI),
:func:`adatune.fit` takes them from the caller (the library).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import socket
import time
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from adatune.data import batches
from adatune.errors import ConfigError
from adatune.schedules import Schedule
from adatune.store import Store
from adatune.store.records import EpochRecord, StepRecord
from adatune.tuners import HypergradientTuner

HEARTBEAT_EVERY_S = 30.0
OWNER_FILE = "owner.json"

Loss = Callable[[Tensor, Tensor], Tensor]


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


@dataclass(frozen=True)
class LoopConfig:
    """How the loop runs: everything that is not one of the parts.

    ``grad_clip`` clips the gradient norm of untuned steps (a tuner clips its
    own). ``workers`` feeds datasets that are not in-memory tensors through
    that many :class:`~torch.utils.data.DataLoader` worker processes.
    """

    epochs: int
    batch_size: int = 64
    seed: int = 0
    patience: int | None = None
    log_every: int = 10
    grad_clip: float | None = None
    workers: int = 0
    rules: DivergenceRules = DivergenceRules()


@dataclass
class Parts:
    """What the loop trains.

    ``loss(output, target)`` is the minibatch mean loss. ``classification``
    says the output holds class scores and the target class indices: the loop
    then records accuracies and picks the best epoch by validation accuracy;
    otherwise by validation loss. ``test`` may be None.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    train: Dataset
    val: Dataset
    test: Dataset | None
    loss: Loss
    classification: bool
    device: torch.device
    tuner: HypergradientTuner | None = None
    schedule: Schedule | None = None

    def __post_init__(self) -> None:
        if self.tuner is not None and self.schedule is not None:
            raise ConfigError("a run has a tuner or a schedule, not both")
        if self.tuner is not None and self.tuner.optimizer is not self.optimizer:
            raise ConfigError("the tuner must wrap the run's optimizer")


class Events:
    """Progress callbacks; override what you need. The defaults do nothing."""

    def run_started(self, run_id: int, config: Any, *, steps_per_epoch: int,
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
    best_val_loss: float | None = None
    test_loss: float | None = None


class _Diverged(Exception):
    pass


def resolve_device(name: str | torch.device | None) -> torch.device:
    """``auto`` (or None) picks CUDA, then MPS, then the CPU."""
    if isinstance(name, torch.device):
        return name
    if name is None or name == "auto":
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
    try:
        return torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device {name!r} (choose from: auto, cpu, cuda, mps)") from None


def owner_alive(ckpt_dir: Path) -> bool:
    """Whether the process that last ran this run may still be running it.

    The owner file names its host and pid: on this host a dead pid means the
    run was killed; on another host only the store's heartbeat can tell.
    """
    from adatune._process import process_may_be_alive

    try:
        owner = json.loads((ckpt_dir / OWNER_FILE).read_text())
    except (OSError, ValueError):
        return False
    return process_may_be_alive(owner)


class Loop:
    """The loop's state over one run of ``parts``; :meth:`run` trains it."""

    def __init__(self, parts: Parts, config: LoopConfig) -> None:
        self.parts = parts
        self.config = config
        self.rules = config.rules
        self.device = parts.device
        self.train_gen = torch.Generator().manual_seed(config.seed)
        self.val_gen = torch.Generator().manual_seed(config.seed + 1)
        self.steps_per_epoch = len(self._batches(parts.train, shuffle=True))
        if self.steps_per_epoch < 1:
            raise ConfigError("the training set is empty")
        # progress of the run (checkpointed)
        self.epoch = 0
        self.step = 0
        self.elapsed = 0.0  # wall-clock seconds in the epochs (training and evaluation)
        self.cpu = 0.0  # CPU seconds of this process in the epochs (all its threads)
        self.initial_loss: float | None = None
        self.initial_lr = self._lr()
        self.best_val_acc: float | None = None
        self.best_val_loss: float | None = None
        self.best_epoch: int | None = None
        self.test_at_best: float | None = None
        self.test_loss_at_best: float | None = None
        self.bad_epochs = 0
        self.lr_max_last_epoch = 0.0

    # ------------------------------------------------------------ checkpoints
    _PROGRESS = ("epoch", "step", "elapsed", "cpu", "initial_loss", "best_val_acc",
                 "best_val_loss", "best_epoch", "test_at_best", "test_loss_at_best", "bad_epochs")

    def _state(self, pending: dict[str, Any]) -> dict[str, Any]:
        p = self.parts
        owner = p.tuner if p.tuner is not None else p.optimizer
        return {
            **{key: getattr(self, key) for key in self._PROGRESS},
            "model": p.model.state_dict(),
            "optim": owner.state_dict(),
            "schedule": None if p.schedule is None else p.schedule.state_dict(),
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": (torch.cuda.get_rng_state_all()
                             if self.device.type == "cuda" else None),
                    "train": self.train_gen.get_state(), "val": self.val_gen.get_state()},
            "pending": pending,
        }

    def load(self, path: Path) -> dict[str, Any]:
        """Restore every part and the loop's progress from a ``last`` checkpoint."""
        p = self.parts
        try:
            state = torch.load(path, map_location=self.device, weights_only=False)
        except Exception as exc:  # noqa: BLE001 - a damaged file is a user-facing problem
            raise ConfigError(f"cannot read checkpoint {path}: {exc}") from None
        p.model.load_state_dict(state["model"])
        (p.tuner if p.tuner is not None else p.optimizer).load_state_dict(state["optim"])
        if p.schedule is not None:
            p.schedule.load_state_dict(state["schedule"])
        torch.set_rng_state(state["rng"]["torch"].cpu())
        if state["rng"]["cuda"] is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state_all([s.cpu() for s in state["rng"]["cuda"]])
        self.train_gen.set_state(state["rng"]["train"].cpu())
        self.val_gen.set_state(state["rng"]["val"].cpu())
        for key in self._PROGRESS:
            if key in state:  # cpu, best_val_loss and test_loss_at_best are newer
                setattr(self, key, state[key])
        return state

    @staticmethod
    def _save(obj: Any, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        torch.save(obj, tmp)
        os.replace(tmp, path)

    # -------------------------------------------------------------- the loop
    def run(self, store: Store, run_id: int, ckpt_dir: Path, events: Events, *,
            announce: Any = None, meta: dict[str, Any] | None = None,
            resumed: bool = False, setup_s: float | None = None) -> RunResult:
        """Train to the last epoch (or divergence, patience, Ctrl-C), recording into ``store``.

        ``announce`` is what :meth:`Events.run_started` receives as the run's
        configuration; ``meta`` (the run's recorded configuration) goes into
        ``best.pt`` beside the weights. ``setup_s``, the seconds it took to
        build the parts, is recorded apart from the training time.
        """
        cfg, model = self.config, self.parts.model
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        owner = ckpt_dir / OWNER_FILE
        owner.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
        records = list(store.get_run(run_id, steps=False).epochs) if resumed else []
        events.run_started(run_id, announce, steps_per_epoch=self.steps_per_epoch,
                           start_epoch=self.epoch + 1)
        status, reason, stopped_early = "completed", None, False
        try:
            while self.epoch < cfg.epochs:
                record, steps, lrs = self._epoch(store, run_id, events)
                self._judge_epoch(record)
                improved = self._improved(record)
                if improved:
                    self.best_val_acc, self.best_val_loss = record.val_acc, record.val_loss
                    self.best_epoch, self.bad_epochs = record.epoch, 0
                    self.test_at_best, self.test_loss_at_best = record.test_acc, record.test_loss
                    self._save({"epoch": record.epoch, "model": model.state_dict(),
                                "config": meta or {}}, ckpt_dir / "best.pt")
                else:
                    self.bad_epochs += 1
                pending = {"epoch": dataclasses.asdict(record),
                           "steps": [dataclasses.asdict(s) for s in steps], "best": improved,
                           "lrs": lrs.tolist()}
                self._save(self._state(pending), ckpt_dir / "last.pt")
                store.record_epoch(run_id, record, steps, best=improved, lrs=lrs)
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
        summary = {"best_val_acc": self.best_val_acc, "best_val_loss": self.best_val_loss,
                   "best_epoch": self.best_epoch, "test_acc": self.test_at_best,
                   "test_loss": self.test_loss_at_best, "final_lr": self._lr(),
                   "stopped_early": stopped_early, "checkpoint_dir": str(ckpt_dir),
                   "train_s": self.elapsed, "cpu_s": self.cpu, "setup_s": setup_s}
        store.finish_run(run_id, status, error=reason, summary=summary)
        owner.unlink(missing_ok=True)
        return RunResult(run_id=run_id, status=status, reason=reason, epochs=tuple(records),
                         best_val_acc=self.best_val_acc, best_epoch=self.best_epoch,
                         test_acc=self.test_at_best, stopped_early=stopped_early,
                         checkpoint_dir=str(ckpt_dir), best_val_loss=self.best_val_loss,
                         test_loss=self.test_loss_at_best)

    def _improved(self, record: EpochRecord) -> bool:
        if self.best_epoch is None:
            return True
        if self.parts.classification:
            return record.val_acc > self.best_val_acc
        return record.val_loss < self.best_val_loss

    def _batches(self, dataset: Dataset, *, shuffle: bool,
                 generator: torch.Generator | None = None, batch_size: int | None = None):
        return batches(dataset, batch_size or self.config.batch_size, shuffle=shuffle,
                       generator=generator, workers=self.config.workers,
                       pin_memory=self.device.type == "cuda")

    def _epoch(self, store: Store, run_id: int, events: Events):
        p, dev = self.parts, self.device
        epoch = self.epoch + 1
        started, cpu_started = time.perf_counter(), time.process_time()
        last_beat = time.monotonic()
        p.model.train()
        val_iter = self._val_batches()
        loss_sum, correct, seen, n_steps = 0.0, 0, 0, 0
        lr_sum, lr_max, steps = 0.0, 0.0, []
        lrs = array("d")  # the LR of every step, recorded with the epoch
        nonfinite_before = p.tuner.nonfinite_count if p.tuner else 0
        for batch, (x, y) in enumerate(self._batches(p.train, shuffle=True,
                                                     generator=self.train_gen)):
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            lr_used, loss, output = self._train_step(x, y, val_iter)
            loss_value = float(loss)
            lr_now = self._lr()
            self._judge_step(loss_value, lr_now, epoch)
            n = y.shape[0]
            loss_sum += loss_value * n
            if p.classification:  # stays on the device until the epoch ends
                correct += (output.argmax(1) == y).sum()
            seen += n
            n_steps += 1
            lr_sum += lr_used
            lr_max = max(lr_max, lr_used)
            lrs.append(lr_used)
            mu, hyper_lr, h = self._tuner_view()
            if self.step % self.config.log_every == 0:
                steps.append(StepRecord(step=self.step, epoch=epoch, lr=lr_used, mu=mu,
                                        hyper_lr=hyper_lr, hypergradient=h,
                                        train_loss=loss_value))
            self.step += 1
            events.step_done(epoch, batch + 1, loss_value, lr_now, mu)
            if time.monotonic() - last_beat > HEARTBEAT_EVERY_S:
                store.heartbeat(run_id)
                last_beat = time.monotonic()
        if p.schedule is not None:
            p.schedule.after_epoch()
        val_loss, val_acc = self.evaluate(p.val)
        test_loss, test_acc = (None, None) if p.test is None else self.evaluate(p.test)
        self.elapsed += time.perf_counter() - started
        self.cpu += time.process_time() - cpu_started
        self.epoch = epoch
        mu, hyper_lr, _ = self._tuner_view()
        record = EpochRecord(
            epoch=epoch, lr=self._lr(), lr_mean=lr_sum / max(n_steps, 1), mu=mu, hyper_lr=hyper_lr,
            train_loss=loss_sum / max(seen, 1),
            train_acc=int(correct) / max(seen, 1) if p.classification else None,
            val_loss=val_loss, val_acc=val_acc, test_loss=test_loss, test_acc=test_acc,
            elapsed_s=self.elapsed,
            nonfinite_hypergradients=(p.tuner.nonfinite_count - nonfinite_before
                                      if p.tuner else 0))
        self.lr_max_last_epoch = lr_max
        return record, steps, lrs

    def _train_step(self, x: Tensor, y: Tensor, val_iter: Iterator) -> tuple[float, Tensor, Tensor]:
        p = self.parts
        model, criterion = p.model, p.loss
        lr_used = self._lr()
        kept: dict[str, Tensor] = {}

        def closure() -> Tensor:
            output = model(x)
            kept.setdefault("output", output.detach())
            return criterion(output, y)

        if p.tuner is None:
            p.optimizer.zero_grad(set_to_none=True)
            loss = closure()
            loss.backward()
            if self.config.grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), self.config.grad_clip)
            p.optimizer.step()
            if p.schedule is not None:
                p.schedule.after_step()
        elif p.tuner.outer == "training":  # HD moves the LR before the update
            loss = p.tuner.step(closure)
            lr_used = self._lr()
        else:
            def val_loss() -> Tensor:
                xv, yv = next(val_iter)
                model.eval()  # no dropout, and batch-norm statistics stay untouched
                try:
                    return criterion(model(xv.to(self.device)), yv.to(self.device))
                finally:
                    model.train()

            loss = p.tuner.step(closure, val_loss=val_loss)
        return lr_used, loss.detach(), kept["output"]

    def _val_batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        while True:
            yield from self._batches(self.parts.val, shuffle=True, generator=self.val_gen)

    @torch.no_grad()
    def evaluate(self, dataset: Dataset) -> tuple[float, float | None]:
        """(mean loss, accuracy or None) of the model on ``dataset``, in eval mode."""
        p = self.parts
        was_training = p.model.training
        p.model.eval()
        loss_sum, correct, seen = 0.0, 0, 0
        try:
            for x, y in self._batches(dataset, shuffle=False,
                                      batch_size=max(self.config.batch_size, 256)):
                x, y = x.to(self.device), y.to(self.device)
                output = p.model(x)
                n = y.shape[0]
                loss_sum += float(p.loss(output, y)) * n
                if p.classification:
                    correct += int((output.argmax(1) == y).sum())
                seen += n
        finally:
            p.model.train(was_training)
        return loss_sum / max(seen, 1), (correct / max(seen, 1) if p.classification else None)

    def _lr(self) -> float:
        if self.parts.tuner is not None:
            return self.parts.tuner.lr
        return float(self.parts.optimizer.param_groups[0]["lr"])

    def _tuner_view(self) -> tuple[float | None, float | None, float | None]:
        tuner = self.parts.tuner
        if tuner is None:
            return None, None, None
        return tuner.mu, tuner.hyper_lr, tuner.last_hypergradient

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
        if self.rules.lr_factor is not None and lr > self.rules.lr_factor * self.initial_lr:
            raise _Diverged(f"learning rate exploded to {lr:.4g} (over "
                            f"{self.rules.lr_factor:g}x the initial {self.initial_lr:g}) "
                            f"at {where}")
        tuner = self.parts.tuner
        if self.rules.nonfinite_hypergradient and tuner is not None and tuner.nonfinite_count > 0:
            raise _Diverged(f"non-finite hypergradient at {where}")

    def _judge_epoch(self, record: EpochRecord) -> None:
        if not math.isfinite(record.val_loss):
            raise _Diverged(f"validation loss is {record.val_loss} after epoch {record.epoch}")
        if (self.rules.zero_lr_epoch and self.parts.tuner is not None
                and self.lr_max_last_epoch == 0.0):
            raise _Diverged(f"learning rate pinned at 0 for all of epoch {record.epoch}")
