"""The one training loop, over given parts: a model, an optimizer, a tuner or a schedule, data.

:meth:`Loop.run` trains a :class:`Parts` for the epochs of a
:class:`~adatune.running.runtypes.LoopConfig` and records the run in a store.
Per epoch: train, evaluate on validation and test, write the full-state
``last`` checkpoint (and ``best`` on a better validation score), then commit
the epoch and its sampled steps to the store in one transaction. The
checkpoint (:mod:`adatune.running.checkpoint`) carries every epoch's records,
so a store that lost commits (a run killed between the two writes, a power
cut) is healed on resume. SIGTERM and SIGUSR1 checkpoint in the middle of an
epoch (:mod:`adatune.running.signals`). The library never prints: progress
goes to an :class:`~adatune.running.runtypes.Events` object the caller supplies.

Where the parts come from is not this module's business: :mod:`adatune.running.build`
builds them from a :class:`~adatune.running.config.TrainConfig` (the CLI),
:func:`adatune.fit` takes them from the caller (the library), and both hand
them to :func:`adatune.running.assembly.train_run`. An epoch's running sums are
an :class:`~adatune.running.epoch.EpochProgress`.

Under ``torch.distributed`` every rank runs this loop on its slice of every
batch; :class:`adatune.running.distributed.Ranks` does what differs (weights,
averages, sums), and only rank 0 writes the store and the checkpoints.
"""

from __future__ import annotations

import contextlib
import math
import time
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from adatune import imports
from adatune.data.batching import Passes, batches
from adatune.errors import ConfigError
from adatune.methods.peers import OptimizerView, optimizer_view
from adatune.methods.schedules import Schedule
from adatune.methods.tuners import HypergradientTuner
from adatune.running import checkpoint, signals
from adatune.running.distributed import LazyStore, Ranks
from adatune.running.epoch import EpochProgress
from adatune.running.folder import RunLock
from adatune.running.runtypes import Events, LoopConfig, RunResult
from adatune.store import Store
from adatune.store.protocols import RunLog
from adatune.store.records import EpochRecord, StepRecord

HEARTBEAT_EVERY_S = 30.0
#: The autocast dtype of each reduced precision (fp32 runs without autocast).
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

Loss = Callable[[Tensor, Tensor], Tensor]


@dataclass
class Parts:
    """What the loop trains.

    ``optimizer`` is any ``torch.optim.Optimizer``; the loop reads its
    effective LR and switches its train/eval mode through
    :func:`adatune.methods.peers.optimizer_view` (Schedule-Free's ``train()``/``eval()``;
    Prodigy's, D-Adaptation's, DoG's and Mechanic's own step sizes), and saves and
    restores its state through that view.
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
        self.view: OptimizerView = optimizer_view(self.optimizer)


class _Diverged(Exception):
    pass


def _overflowed(exc: BaseException) -> bool:
    """A float overflow in a training step: Python's (``OverflowError``), or torch's when a
    learning rate does not fit the parameters' dtype ("... without overflow")."""
    return isinstance(exc, OverflowError) or "overflow" in str(exc).lower()


class Loop:
    """The loop's state over one run of ``parts``; :meth:`run` trains it."""

    def __init__(self, parts: Parts, config: LoopConfig) -> None:
        self.parts = parts
        self.config = config
        self.rules = config.rules
        self.device = parts.device
        self.ranks = Ranks(getattr(parts.tuner, "process_group", None))
        self.ranks.seed_rank(config.seed)
        self.train_gen = torch.Generator().manual_seed(config.seed)  # the same on every rank
        self.val_gen = torch.Generator().manual_seed(config.seed + 1)
        self.steps_per_epoch = len(self._batches(parts.train, shuffle=True))
        if self.steps_per_epoch < 1:
            raise ConfigError("the training set is empty")
        self.amp_dtype = AMP_DTYPES.get(config.precision)  # None: fp32, no autocast
        # fp16's narrow range needs a loss scale (checkpointed: a resume keeps it)
        self.scaler = (torch.amp.GradScaler(self.device.type) if config.precision == "fp16"
                       else None)
        tuner = parts.tuner
        if tuner is not None and not tuner.online and tuner.total_steps is None:
            tuner.total_steps = config.epochs * self.steps_per_epoch  # the tuner's horizon
        # progress of the run (checkpointed)
        self.epoch = 0
        self.step = 0
        self.elapsed = 0.0  # wall-clock seconds in the epochs (training and evaluation)
        self.cpu = 0.0  # CPU seconds of this process in the epochs (all its threads)
        self.initial_loss: float | None = None
        # the user's LR (a tuner with a horizon starts its warm-up below it)
        self.initial_lr = parts.tuner.scale if parts.tuner is not None else self._lr()
        self.best_val_acc: float | None = None
        self.best_val_loss: float | None = None
        self.best_epoch: int | None = None
        self.test_at_best: float | None = None
        self.test_loss_at_best: float | None = None
        self.bad_epochs = 0
        self.lr_max_last_epoch = 0.0
        self.history = checkpoint.History()  # every epoch and step recorded, for the store
        self.partial: dict[str, Any] | None = None  # progress in an epoch (mid-epoch resume)
        self.ckpt_dir: Path | None = None
        self._agree_signals = False  # (set by run)

    # ------------------------------------------------------------ checkpoints
    _PROGRESS = ("epoch", "step", "elapsed", "cpu", "initial_loss", "best_val_acc",
                 "best_val_loss", "best_epoch", "test_at_best", "test_loss_at_best", "bad_epochs")

    def _state(self, partial: dict[str, Any] | None = None) -> dict[str, Any]:
        p = self.parts
        return {
            **{key: getattr(self, key) for key in self._PROGRESS},
            "model": p.model.state_dict(),
            # the view saves a peer's state as plain containers (Mechanic's is keyed by tensors)
            "optim": p.tuner.state_dict() if p.tuner is not None else p.view.optimizer_state(),
            "optim_view": p.view.state(),
            "schedule": None if p.schedule is None else p.schedule.state_dict(),
            "scaler": None if self.scaler is None else self.scaler.state_dict(),
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": (torch.cuda.get_rng_state_all()
                             if self.device.type == "cuda" else None),
                    "train": self.train_gen.get_state(), "val": self.val_gen.get_state(),
                    "ranks": self.ranks.rng_states(self.device)},
            "history": self.history.state(),
            "partial": partial,
        }

    def load(self, path: Path) -> dict[str, Any]:
        """Restore every part and the loop's progress from a ``last`` checkpoint."""
        p = self.parts
        state = checkpoint.load(path, kind="last", map_location=self.device,
                                file=self.ranks.readable(path))
        checkpoint.check_progress(state, path, epochs=self.config.epochs,
                                  steps_per_epoch=self.steps_per_epoch)
        with checkpoint.restoring(path):  # a state that does not fit this run: one line
            p.model.load_state_dict(state["model"])
            if p.tuner is not None:
                p.tuner.load_state_dict(state["optim"])
            else:
                p.view.load_optimizer_state(state["optim"])
            p.view.load(state.get("optim_view"))
            if p.schedule is not None:
                p.schedule.load_state_dict(state["schedule"])
            if self.scaler is not None and state.get("scaler"):  # older ones start afresh
                self.scaler.load_state_dict(state["scaler"])
            self._set_rng(state["rng"])
            self.train_gen.set_state(state["rng"]["train"].cpu())
            self.val_gen.set_state(state["rng"]["val"].cpu())
            for key in self._PROGRESS:
                if key in state:  # cpu, best_val_loss and test_loss_at_best are newer
                    setattr(self, key, state[key])
            self.history = checkpoint.History.from_state(state)
            self.partial = state.get("partial")
            if self.partial:
                self.partial = {**self.partial, "rng": state["rng"]}
                self.ranks.restore_buffers(p.model, self.partial.get("buffers"))
        return state

    def _set_rng(self, rng: dict[str, Any]) -> None:
        """This rank's torch (and CUDA) RNG state from a checkpoint's ``rng``."""
        self.ranks.restore_rng(rng, self.device, self.config.seed)

    def _save(self, obj: Any, path: Path, kind: str = "last") -> None:
        if self.ranks.is_main:  # rank 0 writes for all (the state is the same on every rank)
            checkpoint.save(obj, path, kind=kind)  # atomic and fsynced

    # -------------------------------------------------------------- the loop
    def run(self, store: Store | LazyStore, run_id: int, ckpt_dir: Path, events: Events, *,
            config: dict[str, Any], resumed: bool = False, setup_s: float | None = None,
            lock: RunLock | None = None) -> RunResult:
        """Train to the last epoch (or divergence, patience, Ctrl-C), recording into ``store``.

        ``config`` is the run's recorded configuration: what
        :meth:`Events.run_started` receives, and what ``best.pt`` holds beside
        the weights. ``setup_s``, the seconds it took to
        build the parts, is recorded apart from the training time. ``lock``:
        the run folder's lock when the caller already holds it (a resume; on rank 0).
        SIGTERM (inside :func:`adatune.running.signals.handle_preemption`) ends the run
        at the next step, checkpointed; SIGUSR1 checkpoints there.
        """
        with signals.deferred():  # SIGTERM: stop at the next safe point, checkpointed
            return self._run(store, run_id, ckpt_dir, events, config, resumed, setup_s,
                             lock or RunLock(ckpt_dir), take=lock is None)

    def _run(self, store: Store | LazyStore, run_id: int, ckpt_dir: Path, events: Events,
             config: dict[str, Any], resumed: bool, setup_s: float | None,
             lock: RunLock, *, take: bool) -> RunResult:
        cfg, model = self.config, self.parts.model
        if not self.ranks.is_main:  # rank 0 writes and reports; the others do neither
            events = Events()
        log: RunLog = self.ranks.store_view(store)  # what the other ranks record: nothing
        self.ckpt_dir = ckpt_dir
        records = list(store.get_run(run_id, steps=False).epochs) \
            if resumed and self.ranks.is_main else []
        status, reason, stopped_early = "completed", None, False
        try:
            if take:  # rank 0 holds the folder for all ranks (its error is theirs)
                self.ranks.on_main(lambda: lock.acquire(run_id, store.location) and None)
            if not resumed:
                self.ranks.broadcast_module(model)  # every rank starts from rank 0's weights
            # Several ranks: they check for SIGTERM/SIGUSR1 together after every step when
            # any of them handles those (a signal may reach one rank, or each at its own step).
            self._agree_signals = self.ranks.active and bool(
                self.ranks.any_of([int(signals.armed())], self.device)[0])
            events.run_started(run_id, config, steps_per_epoch=self.steps_per_epoch,
                               start_epoch=self.epoch + 1)
            while self.epoch < cfg.epochs:
                record, steps, lrs = self._epoch(log, run_id, events)
                self._judge_epoch(record)
                improved = self._improved(record)
                if improved:
                    self.best_val_acc, self.best_val_loss = record.val_acc, record.val_loss
                    self.best_epoch, self.bad_epochs = record.epoch, 0
                    self.test_at_best, self.test_loss_at_best = record.test_acc, record.test_loss
                    self._save({"epoch": record.epoch, "model": model.state_dict(),
                                "config": config}, ckpt_dir / "best.pt", "best")
                else:
                    self.bad_epochs += 1
                self.history.add(record, steps, improved, lrs)
                self._save(self._state(), ckpt_dir / "last.pt")
                log.record_epoch(run_id, record, steps, best=improved, lrs=lrs)
                records.append(record)
                events.epoch_done(record)
                if cfg.patience is not None and self.bad_epochs >= cfg.patience:
                    stopped_early = True
                    break
                signals.take_checkpoint_request()  # last.pt was just written
                if self.epoch < cfg.epochs:  # (after the last one, the run completes)
                    self._requests()  # several ranks: a SIGTERM on any stops them all here
                    self._stop_if_asked(f"after epoch {record.epoch}")
        except _Diverged as exc:
            status, reason = "diverged", str(exc)
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (signals.Terminated)
            status = "interrupted"
            reason = signals.interruption_reason(exc, self.epoch + 1)
        except SystemExit as exc:  # sys.exit() in the user's model, loss or data: its error
            self.parts.view.eval()
            message = f"the run's own code {imports.exited(exc)}"
            log.finish_run(run_id, "failed", error=message)
            lock.release()
            raise ConfigError(message) from exc
        except BaseException as exc:
            self.parts.view.eval()
            log.finish_run(run_id, "failed", error=f"{type(exc).__name__}: {exc}")
            lock.release()
            raise
        self.parts.view.eval()  # the model holds the weights that were evaluated
        summary = {"best_val_acc": self.best_val_acc, "best_val_loss": self.best_val_loss,
                   "best_epoch": self.best_epoch, "test_acc": self.test_at_best,
                   "test_loss": self.test_loss_at_best, "final_lr": self._lr(),
                   "stopped_early": stopped_early, "checkpoint_dir": str(ckpt_dir),
                   "train_s": self.elapsed, "cpu_s": self.cpu, "setup_s": setup_s}
        log.finish_run(run_id, status, error=reason, summary=summary)
        lock.release()
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
        """The batches of ``dataset``: this rank's slice of each, under several ranks."""
        return batches(dataset, batch_size or self.config.batch_size, shuffle=shuffle,
                       generator=generator, workers=self.config.workers,
                       pin_memory=self.device.type == "cuda", shard=self.ranks.shard)

    def _global_size(self, dataset: Dataset, batch: int) -> int:
        """The size of batch ``batch`` of ``dataset`` summed over every rank's slice."""
        size = self.config.batch_size
        return min(size, len(dataset) - batch * size)

    def _epoch(self, log: RunLog, run_id: int,
               events: Events) -> tuple[EpochRecord, list[StepRecord], array | None]:
        """Train one epoch (or what is left of one, resumed mid-epoch), then evaluate it.

        Returns the epoch's record, its sampled steps and the LR of every step.
        """
        progress = self._begin_epoch()
        resume_at = progress.batches  # resumed: replay the epoch's order, skip what was done
        val_iter = self._val_batches(progress.val)
        last_beat = time.monotonic()
        for batch, (x, y) in enumerate(self._batches(self.parts.train, shuffle=True,
                                                     generator=self.train_gen)):
            if batch < resume_at:
                continue
            if batch == resume_at and progress.resumed:  # skipping may have drawn from torch
                self._set_rng(progress.rng)
            self._step(progress, batch, x, y, val_iter, events)
            if time.monotonic() - last_beat > HEARTBEAT_EVERY_S:
                log.heartbeat(run_id)
                last_beat = time.monotonic()
            if any(self._requests()):  # SIGTERM or SIGUSR1, on any rank
                self._checkpoint_mid_epoch(progress, val_iter)
                log.heartbeat(run_id)
                self._stop_if_asked(f"in epoch {progress.epoch} after step {batch + 1} of "
                                    f"{self.steps_per_epoch}")
        if progress.resumed and resume_at >= self.steps_per_epoch:  # after its last step
            self._set_rng(progress.rng)
        return self._end_epoch(progress)

    def _begin_epoch(self) -> EpochProgress:
        """The next epoch's progress: a fresh one, or the one a mid-epoch checkpoint saved."""
        p = self.parts
        partial, self.partial = self.partial, None
        nonfinite = p.tuner.nonfinite_count if p.tuner is not None else 0
        if partial:  # resumed in the middle of this epoch: its order is drawn again
            self.train_gen.set_state(partial["train_gen"].cpu())
            progress = EpochProgress.from_checkpoint(self.epoch + 1, partial,
                                                     is_main=self.ranks.is_main,
                                                     nonfinite_before=nonfinite)
        else:
            progress = EpochProgress(self.epoch + 1, nonfinite_before=nonfinite)
        progress.train_start = self.train_gen.get_state()
        p.model.train()
        p.view.train()  # a no-op when resumed mid-epoch (saved in train mode)
        return progress

    def _step(self, progress: EpochProgress, batch: int, x: Tensor, y: Tensor,
              val_iter: Iterator, events: Events) -> None:
        """Train on batch ``batch`` (this rank's slice ``x, y``) and count it in ``progress``."""
        p, dev = self.parts, self.device
        x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
        n = self._global_size(p.train, batch)
        try:
            lr_used, loss, output = self._train_step(x, y, val_iter, n)
        except (OverflowError, RuntimeError) as exc:
            if not _overflowed(exc):
                raise
            # The LR (or what the tuner made of it) is beyond what the numbers can hold:
            # the run diverged, as it would have a step later with infinite weights.
            raise _Diverged(f"the numbers overflowed at epoch {progress.epoch}, step "
                            f"{self.step} with the learning rate at {self._lr():.4g} "
                            f"({' '.join(str(exc).split())[:160]})") from None
        loss_value = float(loss)  # the global batch's loss, the same on every rank
        lr_now = self._lr()
        self._judge_step(loss_value, lr_now, progress.epoch)
        # each rank counts its own slice's correct predictions, on the device until the end
        correct = (output.argmax(1) == y).sum() \
            if p.classification and output is not None else None
        progress.add(n=n, loss=loss_value, lr=lr_used, correct=correct)
        progress.batches = batch + 1
        mu, hyper_lr, h = self._tuner_view()
        if self.step % self.config.log_every == 0:
            progress.steps.append(StepRecord(step=self.step, epoch=progress.epoch, lr=lr_used,
                                             mu=mu, hyper_lr=hyper_lr, hypergradient=h,
                                             train_loss=loss_value))
        self.step += 1
        events.step_done(progress.epoch, batch + 1, loss_value, lr_now, mu)

    def _checkpoint_mid_epoch(self, progress: EpochProgress, val_iter: Passes) -> None:
        """Write ``last.pt`` with the epoch's progress after this step.

        Every rank's RNG state goes in, and the batch-norm statistics, which
        differ by rank in the middle of an epoch; a checkpoint holds the
        correct predictions summed over the ranks.
        """
        correct = self._global_count(progress.correct)
        buffers = self.ranks.buffer_states(self.parts.model)
        partial = progress.to_checkpoint(correct=correct, val=val_iter.position(),
                                         buffers=buffers)
        self._save(self._state(partial=partial), self.ckpt_dir / "last.pt")

    def _end_epoch(self,
                   progress: EpochProgress) -> tuple[EpochRecord, list[StepRecord], array | None]:
        """Step the schedule, evaluate, and make the epoch's record."""
        p, dev = self.parts, self.device
        if p.schedule is not None:
            p.schedule.after_epoch()
        correct = progress.correct
        if p.classification and self.ranks.active:
            [correct] = self.ranks.sum([int(correct)], dev)
        self.ranks.sync_buffers(p.model)  # batch-norm statistics: their mean over the ranks
        # Evaluation, best.pt and last.pt see the optimizer in eval mode (Schedule-Free: its
        # averaged weights). A resumed run loads last.pt in that mode and switches to train
        # mode as an uninterrupted run does at the next epoch: the same bits either way.
        p.view.eval()
        val_loss, val_acc = self.evaluate(p.val)
        test_loss, test_acc = (None, None) if p.test is None else self.evaluate(p.test)
        seconds, cpu_seconds = progress.seconds()
        self.elapsed += seconds
        self.cpu += cpu_seconds
        self.epoch = progress.epoch
        mu, hyper_lr, _ = self._tuner_view()
        seen = max(progress.seen, 1)
        record = EpochRecord(
            epoch=progress.epoch, lr=self._lr(), lr_mean=progress.lr_sum / max(progress.n_steps, 1),
            mu=mu, hyper_lr=hyper_lr, train_loss=progress.loss_sum / seen,
            train_acc=int(correct) / seen if p.classification else None,
            val_loss=val_loss, val_acc=val_acc, test_loss=test_loss, test_acc=test_acc,
            elapsed_s=self.elapsed,
            nonfinite_hypergradients=(p.tuner.nonfinite_count - progress.nonfinite_before
                                      if p.tuner is not None else 0))
        self.lr_max_last_epoch = progress.lr_max
        return record, progress.steps, progress.lrs

    def _train_step(self, x: Tensor, y: Tensor, val_iter: Iterator,
                    n: int) -> tuple[float, Tensor, Tensor | None]:
        """One step on this rank's slice ``(x, y)`` of a batch of ``n`` examples."""
        p = self.parts
        model, criterion = p.model, p.loss
        lr_used = self._lr()
        kept: dict[str, Tensor] = {}
        weight = self.ranks.weight(n)  # 1 on one process

        def closure() -> Tensor:
            if weight == 0:  # this rank's slice of the batch is empty
                return self.ranks.zero_loss(model)
            output = model(x)
            kept.setdefault("output", output.detach())
            loss = criterion(output, y)
            return loss if weight == 1 else loss * weight

        part = None  # the HVP's loss, on the batch's leading fraction (hvp_fraction < 1)
        if self.config.hvp_fraction < 1 and p.tuner is not None and p.tuner.outer != "training":
            m = max(1, round(self.config.hvp_fraction * len(x)))

            def part() -> Tensor:
                if weight == 0:
                    return self.ranks.zero_loss(model)
                loss = criterion(model(x[:m]), y[:m])
                return loss if weight == 1 else loss * weight

        scaler = self.scaler
        if p.tuner is None:
            p.optimizer.zero_grad(set_to_none=True)
            with self._autocast():
                loss = closure()
            (loss if scaler is None else scaler.scale(loss)).backward()
            loss = self.ranks.average_gradients(model.parameters(), loss)
            if scaler is not None:
                scaler.unscale_(p.optimizer)
            if self.config.grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), self.config.grad_clip)
            p.view.before_step()
            if scaler is None:
                p.optimizer.step()
            else:
                scaler.step(p.optimizer)  # skipped when the gradients overflowed
                scaler.update()
            lr_used = p.view.after_step()
            if p.schedule is not None:
                p.schedule.after_step()
        elif p.tuner.outer == "training":  # HD moves the LR before the update
            with self._autocast():
                loss = p.tuner.step(closure, scaler=scaler)
            if scaler is not None:
                scaler.update()
            lr_used = self._lr()
        else:
            def val_loss() -> Tensor:
                xv, yv, nv = next(val_iter)
                v_weight = self.ranks.weight(nv)
                if v_weight == 0:
                    return self.ranks.zero_loss(model)
                model.eval()  # no dropout, and batch-norm statistics stay untouched
                try:
                    value = criterion(model(xv.to(self.device)), yv.to(self.device))
                    return value if v_weight == 1 else value * v_weight
                finally:
                    model.train()

            with self._autocast():
                loss = p.tuner.step(closure, val_loss=val_loss, scaler=scaler, hvp_loss=part)
            if scaler is not None:
                scaler.update()
        return lr_used, loss.detach(), kept.get("output")

    def _autocast(self) -> contextlib.AbstractContextManager:
        """The training forward's precision (LoopConfig.precision)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _val_batches(self, position: dict[str, Any] | None = None) -> Passes:
        """Validation batches forever: (this rank's x, y, the whole batch's size)."""
        def one_pass() -> Iterator[tuple[Tensor, Tensor, int]]:
            parts = self._batches(self.parts.val, shuffle=True, generator=self.val_gen)
            for i, (x, y) in enumerate(parts):
                yield x, y, self._global_size(self.parts.val, i)

        return Passes(one_pass, self.val_gen, position)

    def _requests(self) -> tuple[bool, bool]:
        """(stop, checkpoint): what SIGTERM and SIGUSR1 ask after this step, alike on every rank.

        See :meth:`adatune.running.distributed.Ranks.requests` (one all-reduce of two
        numbers per step when the ranks handle signals; none on one process).
        """
        return self.ranks.requests(self.device, agree=self._agree_signals)

    def _global_count(self, correct: Tensor | int) -> int:
        """The correct predictions so far in this epoch, summed over the ranks."""
        if not self.ranks.active:
            return int(correct)
        return int(self.ranks.sum([int(correct)], self.device)[0])

    def _stop_if_asked(self, where: str) -> None:
        """At a safe point (everything checkpointed): end the run if SIGTERM asked to."""
        signum = signals.stop_requested()
        if signum is not None:
            signals.acted_on_stop()
            raise signals.Terminated(signum, f"stopped by {signals.signal_name(signum)} "
                                             f"{where}; checkpointed there, a resume continues "
                                             "from it")

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
                n = y.shape[0]
                if n == 0:  # this rank's slice is empty
                    continue
                x, y = x.to(self.device), y.to(self.device)
                output = p.model(x)
                loss_sum += float(p.loss(output, y)) * n
                if p.classification:
                    correct += int((output.argmax(1) == y).sum())
                seen += n
        finally:
            p.model.train(was_training)
        if self.ranks.active:  # this rank evaluated its slice of every batch
            loss_sum, correct, seen = self.ranks.sum([loss_sum, correct, seen], self.device)
            correct, seen = int(correct), int(seen)
        return loss_sum / max(seen, 1), (correct / max(seen, 1) if p.classification else None)

    def _lr(self) -> float:
        if self.parts.tuner is not None:
            return self.parts.tuner.lr
        return self.parts.view.lr()

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
