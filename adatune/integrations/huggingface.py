"""MARTHE, RTHO or HD in the Hugging Face ``Trainer``: ``TunedTrainer(..., tuner="marthe")``.

A ``Trainer`` subclass, because the tuner's step replaces the trainer's
``backward()`` (MARTHE's Hessian-vector product needs the graph of the
gradient that ``backward()`` frees): its ``training_step`` computes the loss
as ``Trainer`` does (``compute_loss``, under the trainer's autocast), and at
the last micro-batch of each gradient-accumulation window hands the window's
loss to the tuner, which takes the optimizer step. The trainer's own
``optimizer.step()`` then has nothing left to do, and its LR scheduler only
reports the tuner's LR. The optimizer the trainer holds has the tuner's
``state_dict``: the trainer's checkpoints save and restore it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from adatune.errors import ConfigError
from adatune.integrations import make_tuner, require, tuner_name
from adatune.integrations._common import Cycle, TunerStep, check_total

transformers = require(("transformers",), "Hugging Face Transformers", "huggingface")

__all__ = ["TunedTrainer"]

_NEEDS_VAL = ("marthe", "rtho")


class _TunedLR(torch.optim.lr_scheduler.LRScheduler):
    """The trainer's LR scheduler: it leaves the LR to the tuner and reports the LR that
    the last step used (what the trainer logs as ``learning_rate``)."""

    def __init__(self, optimizer: TunerStep) -> None:
        self.used: float | None = None
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def get_last_lr(self) -> list[float]:
        if self.used is None:
            return self.get_lr()
        ratios = self.optimizer.tuner.state["ratios"]
        return [ratio * self.used for ratio in ratios]

    def state_dict(self) -> dict[str, Any]:
        return {"used": self.used}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.used = state_dict.get("used")


class TunedTrainer(transformers.Trainer):
    """A ``transformers.Trainer`` whose optimizer's LR is tuned by MARTHE, RTHO or HD.

    >>> trainer = TunedTrainer(model=model, args=args, train_dataset=train,
    ...                        eval_dataset=val, tuner="marthe")

    ``tuner``: ``"marthe"``, ``"rtho"`` or ``"hd"``; ``tuner_options`` go to
    its constructor (``hyper_lr``, ``online=True``, ...). The trainer builds
    its optimizer as usual (``args.optim``: an SGD, Adam or AdamW from torch),
    and the tuner wraps it; ``total_steps`` defaults to the trainer's
    ``max_steps`` and ``args.max_grad_norm`` becomes the tuner's
    ``grad_clip`` (clipped exactly). ``args.learning_rate`` is where the LR
    starts: ``args.lr_scheduler_type`` and ``warmup_*`` are not used.

    MARTHE and RTHO take their validation batches from ``val_dataset``, or
    else ``eval_dataset``, one batch of ``per_device_eval_batch_size`` per
    step, pass after pass, with the model in eval mode. A gradient-accumulation
    window is one tuner step on the window's loss, which keeps the graphs of
    the whole window until its last micro-batch. ``fp16`` is refused (its loss
    scaling is not the tuner's); ``bf16`` is not. ``tuner`` is the
    tuner once training has started, and ``lrs`` the LR of every step.
    """

    def __init__(self, *args: Any, tuner: str = "marthe",
                 tuner_options: dict[str, Any] | None = None, val_dataset: Any = None,
                 **kwargs: Any) -> None:
        key = tuner_name(tuner)
        super().__init__(*args, **kwargs)
        if self.lr_scheduler is not None:
            raise ConfigError("TunedTrainer takes no LR scheduler in optimizers=: the tuner "
                              "sets the LR")
        if self.args.fp16:
            raise ConfigError("fp16=True needs loss scaling, which the tuner's exact gradients "
                              "do not take: use bf16=True or fp32")
        self.val_dataset = val_dataset if val_dataset is not None else self.eval_dataset
        if isinstance(self.val_dataset, dict):
            raise ConfigError("eval_dataset holds several datasets: give the tuner's with "
                              "TunedTrainer(val_dataset=...)")
        if key in _NEEDS_VAL and self.val_dataset is None:
            raise ConfigError(f"{key.upper()} needs validation batches: give the trainer an "
                              "eval_dataset, or TunedTrainer(val_dataset=...); HD needs none")
        self.tuner_name = key
        self.tuner_options = dict(tuner_options or {})
        self.tuner: Any = None
        self.lrs: list[float] = []
        self._window: list[Tensor] = []
        self._val: Cycle | None = None
        self._stepper: TunerStep | None = None

    # ------------------------------------------------------- optimizer, schedule
    def create_optimizer(self, model: Any = None) -> torch.optim.Optimizer:
        optimizer = super().create_optimizer(model) if model is not None \
            else super().create_optimizer()
        if isinstance(optimizer, TunerStep):
            return optimizer
        options = dict(self.tuner_options)
        if self.args.max_grad_norm and self.args.max_grad_norm > 0:
            options.setdefault("grad_clip", float(self.args.max_grad_norm))
        self.tuner = make_tuner(self.tuner_name, optimizer, options)
        self.optimizer = self._stepper = TunerStep(self.tuner)
        return self.optimizer

    def create_scheduler(self, num_training_steps: int,
                         optimizer: torch.optim.Optimizer | None = None) -> Any:
        tuner = self.tuner
        if tuner is None:
            raise ConfigError("the tuner is made in create_optimizer(), which must run first")
        if not tuner.online and tuner.total_steps is None:
            tuner.total_steps = check_total(num_training_steps)
        if self.lr_scheduler is None:
            self.lr_scheduler = _TunedLR(self._stepper)
        return self.lr_scheduler

    # ---------------------------------------------------------------- the step
    def training_step(self, model: Any, inputs: dict[str, Any],
                      num_items_in_batch: Any = None) -> Tensor:
        """The trainer's loss for this micro-batch; at a window's last one, the tuner's step."""
        model.train()
        inputs = self._prepare_inputs(inputs)
        with self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs, num_items_in_batch=num_items_in_batch)
        if self.args.n_gpu > 1:
            loss = loss.mean()
        if not self._loss_is_scaled(num_items_in_batch):
            loss = loss / getattr(self, "current_gradient_accumulation_steps",
                               self.args.gradient_accumulation_steps)
        self._window.append(loss)
        if not self.accelerator.sync_gradients:
            return loss.detach()
        window, self._window = self._window, []
        total = window[0] if len(window) == 1 else torch.stack(window).sum()
        tuner = self.tuner
        lr = tuner.lr
        if tuner.outer == "training":
            tuner.step(total)
            lr = tuner.lr  # HD moves the LR before the update
        else:
            tuner.step(total, val_loss=lambda: self._validation_loss(model))
        self.lrs.append(lr)
        self.lr_scheduler.used = lr
        return loss.detach()

    def _loss_is_scaled(self, num_items_in_batch: Any) -> bool:
        """Whether ``compute_loss`` already divided by the accumulation (as ``Trainer``)."""
        scaled = getattr(self, "loss_is_scaled_for_ga", None)
        if scaled is not None:
            return bool(scaled)
        return bool((getattr(self, "model_accepts_loss_kwargs", False)
                     and num_items_in_batch is not None)
                    or getattr(self, "compute_loss_func", None) is not None)

    def _validation_loss(self, model: Any) -> Tensor:
        if self._val is None:
            self._val = Cycle(self.get_eval_dataloader(self.val_dataset),
                              self._stepper.val_drawn)
        inputs = self._prepare_inputs(next(self._val))
        self._stepper.val_drawn = self._val.drawn
        model.eval()  # no dropout
        try:
            with self.compute_loss_context_manager():
                return self.compute_loss(model, inputs)
        finally:
            model.train()

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        """The trainer's logs, with the tuner's mu, hyper-LR and hypergradient beside the
        training loss."""
        tuner = self.tuner
        if tuner is not None and "loss" in logs:
            extra = {"adatune/mu": tuner.mu, "adatune/hyper_lr": tuner.hyper_lr,
                     "adatune/hypergradient": tuner.last_hypergradient}
            logs = {**logs, **{k: float(v) for k, v in extra.items() if v is not None}}
        super().log(logs, *args, **kwargs)
