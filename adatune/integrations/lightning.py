"""MARTHE, RTHO or HD in PyTorch Lightning: ``callbacks=[AdatuneCallback("marthe")]``.

A tuner's step replaces ``backward()`` and ``optimizer.step()``, and MARTHE's
Hessian-vector product needs the graph of the gradient that Lightning's
``backward()`` frees. So for ``fit`` the callback runs the module under
Lightning's manual optimization, and wraps its ``training_step``: the step
computes the loss (the module's own ``training_step``) and hands it to the
tuner, through the optimizer Lightning holds, so that Lightning counts the
step (``global_step``, ``max_steps``, checkpoints every N steps) and runs its
``on_before_optimizer_step`` hooks. That optimizer's ``state_dict`` is the
tuner's: Lightning's own checkpoints save and restore it. After ``fit`` the
module is as it was.

Under Lightning's DDP strategy the tuner averages the gradient, the
Hessian-vector product and the validation side over the ranks itself (as
under ``torchrun``); DDP's own gradient hooks never fire, since the tuner
takes gradients with ``torch.autograd.grad``. Every rank takes the same step
and the same LR.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from torch import Tensor

from adatune.errors import ConfigError
from adatune.integrations import make_tuner, require, tuner_name
from adatune.integrations._common import Cycle, Recorder, TunerStep, check_total, loss_of

pl = require(("lightning.pytorch", "pytorch_lightning"), "PyTorch Lightning", "lightning")

__all__ = ["AdatuneCallback"]

_NEEDS_VAL = ("marthe", "rtho")


class AdatuneCallback(pl.Callback):
    """Tune the LR of a ``LightningModule``'s optimizer with MARTHE, RTHO or HD.

    >>> trainer = L.Trainer(max_epochs=10, callbacks=[AdatuneCallback("marthe")])

    ``tuner``: ``"marthe"``, ``"rtho"`` or ``"hd"``; ``options`` go to its
    constructor (``hyper_lr``, ``online=True``, ...). ``total_steps`` defaults
    to ``trainer.estimated_stepping_batches``, and the trainer's
    ``gradient_clip_val`` becomes the tuner's ``grad_clip`` (clipped exactly).
    ``configure_optimizers`` returns one SGD, Adam or AdamW optimizer and no
    LR scheduler (the tuner sets the LR).

    MARTHE and RTHO take validation batches from ``val_dataloader`` or else
    from the trainer's (the module's ``val_dataloader``, the datamodule's, or
    ``fit(val_dataloaders=...)``), one per step, pass after pass.
    ``val_loss(module, batch)`` is the validation loss; by default the
    module's ``training_step`` on the batch, in eval mode, with ``self.log``
    silenced.

    Every step logs ``adatune/lr`` (the LR the step used), ``adatune/mu``,
    ``adatune/hyper_lr`` and ``adatune/hypergradient`` through the module's
    ``log``. ``store`` (a path or URL): the run is also recorded in that
    adatune store, every step's LR and one record per epoch (the validation
    loss and accuracy are the logged ``val_metric`` and ``val_acc_metric``,
    when the module logs them), for ``adatune report`` and
    ``adatune schedule export``.
    """

    def __init__(self, tuner: str = "marthe", *, val_dataloader: Any = None,
                 val_loss: Callable[[Any, Any], Tensor] | None = None,
                 store: str | os.PathLike[str] | None = None, name: str | None = None,
                 log_every: int = 10, val_metric: str = "val_loss",
                 val_acc_metric: str = "val_acc", **options: Any) -> None:
        self.name = tuner_name(tuner)
        self.options = dict(options)
        self.val_dataloader = val_dataloader
        self.val_loss = val_loss
        self.val_metric, self.val_acc_metric = val_metric, val_acc_metric
        self.recorder = None if store is None else Recorder(store, name, log_every)
        self.tuner: Any = None
        self.lrs: list[float] = []  # the LR of every step of this fit, as logged
        self._val: Cycle | None = None
        self._val_drawn = 0
        self._module: Any = None
        self._original: Any = None

    # ------------------------------------------------------------- the hooks
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage != "fit":
            return
        if str(trainer.precision).startswith("16"):
            raise ConfigError(f"precision={trainer.precision!r} needs loss scaling, which the "
                              "tuner's exact gradients do not take: use '32-true' or "
                              "'bf16-mixed'")
        if not pl_module.automatic_optimization:
            raise ConfigError("the module uses manual optimization: call the tuner in its "
                              "training_step (tuner.step(loss, val_loss=...)) instead of the "
                              "callback")
        if trainer.accumulate_grad_batches != 1:
            raise ConfigError("accumulate_grad_batches must be 1 with the tuner (it steps on "
                              "every batch; raise the batch size instead)")
        if trainer.gradient_clip_val and trainer.gradient_clip_algorithm != "norm":
            raise ConfigError("gradient_clip_algorithm must be 'norm' with the tuner")
        self._module, self._original = pl_module, pl_module.training_step
        pl_module.automatic_optimization = False
        pl_module.training_step = self._training_step

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage == "fit":
            self._restore(pl_module)

    def _restore(self, pl_module: Any) -> None:
        """The module as it was before ``fit``."""
        if self._module is pl_module and self._original is not None:
            del pl_module.training_step  # the class's again
            pl_module.automatic_optimization = True
            self._original = None

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        """Build the tuner around the module's optimizer, before the first step."""
        if len(trainer.optimizers) != 1:
            raise ConfigError(f"the tuner takes one optimizer; configure_optimizers returned "
                              f"{len(trainer.optimizers)}")
        if trainer.lr_scheduler_configs:
            raise ConfigError("configure_optimizers returned an LR scheduler: the tuner sets "
                              "the LR, return the optimizer alone")
        options = dict(self.options)
        if trainer.gradient_clip_val:
            options.setdefault("grad_clip", float(trainer.gradient_clip_val))
        if options.get("hvp") == "finite-difference":
            options.setdefault("model", pl_module)
        optimizer = trainer.optimizers[0]
        if isinstance(optimizer, TunerStep):  # fit called again with this callback
            optimizer = optimizer.tuner.optimizer
        tuner = make_tuner(self.name, optimizer, options)
        if not tuner.online and tuner.total_steps is None:
            tuner.total_steps = check_total(trainer.estimated_stepping_batches)
        if self.name in _NEEDS_VAL:
            self._val = Cycle(self._validation_loader(trainer), self._val_drawn)
        self.tuner = tuner
        self.lrs = []
        trainer.strategy.optimizers = [TunerStep(tuner)]  # Lightning steps the tuner
        if self.recorder is not None and trainer.is_global_zero:
            self.recorder.start(
                method=self.name, optimizer=type(optimizer).__name__.lower(),
                network=type(pl_module).__name__, dataset="lightning",
                seed=int(os.environ.get("PL_GLOBAL_SEED", 0)),
                config={"integration": "lightning", "tuner": self.name,
                        "total_steps": tuner.total_steps, "online": tuner.online,
                        "max_epochs": trainer.max_epochs, "world_size": trainer.world_size})

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if self.recorder is not None and trainer.is_global_zero:  # the tuner is restored
            self.recorder.catch_up(trainer.current_epoch + 1, self.tuner)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if self.recorder is not None and trainer.is_global_zero and not trainer.sanity_checking:
            metrics = trainer.callback_metrics  # (a checkpoint may be written next)
            self.recorder.note_validation(_number(metrics.get(self.val_metric)),
                                          _number(metrics.get(self.val_acc_metric)))

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self.recorder is not None and trainer.is_global_zero:
            self.recorder.end_epoch(trainer.current_epoch + 1, self.tuner)

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        if self.recorder is not None and trainer.is_global_zero:
            self.recorder.finish("completed")

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._restore(pl_module)  # Lightning calls no teardown after an exception
        if self.recorder is not None and trainer.is_global_zero:
            status = "interrupted" if isinstance(exception, KeyboardInterrupt) else "failed"
            self.recorder.finish(status, f"{type(exception).__name__}: {exception}")

    def state_dict(self) -> dict[str, Any]:
        """Where the validation batches and the recorded run are (the tuner's own state is
        the optimizer's, in the checkpoint's optimizer states)."""
        return {"val_drawn": self._val.drawn if self._val is not None else self._val_drawn,
                "recorder": None if self.recorder is None else self.recorder.state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._val_drawn = int(state_dict.get("val_drawn", 0))
        if self.recorder is not None and state_dict.get("recorder"):
            self.recorder.load(state_dict["recorder"])

    # ------------------------------------------------------------- the step
    def _training_step(self, *args: Any, **kwargs: Any) -> Any:
        """The module's ``training_step`` with the tuner's step after it."""
        module, tuner = self._module, self.tuner
        kept: dict[str, Any] = {}

        def loss() -> Tensor:
            kept["output"] = self._original(*args, **kwargs)
            return loss_of(kept["output"], "training_step")

        def step() -> Tensor:
            if tuner.outer == "training":
                return tuner.step(loss)
            return tuner.step(loss, val_loss=self._validation_loss)

        lr = tuner.lr
        value = module.optimizers().step(closure=step)
        if tuner.outer == "training":  # HD moves the LR before the update
            lr = tuner.lr
        self.lrs.append(lr)
        self._log(module, lr)
        if self.recorder is not None and module.trainer.is_global_zero:
            self.recorder.add_step(module.trainer.current_epoch + 1, lr, float(value), tuner)
        output = kept["output"]
        if isinstance(output, dict):
            return {**output, "loss": value}
        return value

    def _log(self, module: Any, lr: float) -> None:
        tuner = self.tuner
        values = {"adatune/lr": lr, "adatune/mu": tuner.mu, "adatune/hyper_lr": tuner.hyper_lr,
                  "adatune/hypergradient": tuner.last_hypergradient}
        for key, value in values.items():
            if value is not None:
                module.log(key, float(value), on_step=True, on_epoch=False)

    def _validation_loss(self) -> Tensor:
        module = self._module
        batch = module.trainer.strategy.batch_to_device(next(self._val))
        index = self._val.drawn - 1  # the batch_idx the module sees
        was_training = module.training
        module.eval()  # no dropout, and batch-norm statistics stay untouched
        module.log = module.log_dict = _silent
        try:
            if self.val_loss is not None:
                return self.val_loss(module, batch)
            return loss_of(self._original(batch, index), "training_step")
        finally:
            del module.log, module.log_dict
            module.train(was_training)

    def _validation_loader(self, trainer: Any) -> Any:
        loader = self.val_dataloader
        if loader is None:
            trainer.fit_loop.epoch_loop.val_loop.setup_data()
            loader = trainer.val_dataloaders
            if isinstance(loader, (list, tuple)):
                loader = loader[0] if len(loader) == 1 else None
        try:
            empty = loader is None or len(loader) == 0
        except TypeError:  # an iterable without len()
            empty = False
        if empty:
            raise ConfigError(
                f"{self.name.upper()} needs validation batches: give the LightningModule a "
                "val_dataloader (and a validation_step), pass val_dataloaders to trainer.fit, "
                "or AdatuneCallback(val_dataloader=...); HD needs none")
        return loader


def _silent(*args: Any, **kwargs: Any) -> None:
    return None


def _number(value: Any) -> float | None:
    return None if value is None else float(value)
