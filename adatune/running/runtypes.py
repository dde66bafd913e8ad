"""What a training run promises its callers, without torch.

The loop's settings (:class:`LoopConfig`), the rules that judge a run
divergent (:class:`DivergenceRules`), the progress callbacks (:class:`Events`)
and what a finished run returns (:class:`RunResult`) are plain Python, so that
code which only configures, reports on or listens to runs (the find-alpha
search, sweeps, the command's progress bars) can be imported without the
training stack.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from adatune.store.records import EpochRecord

#: A store's checkpoint folder, unless ``checkpoint_dir`` says otherwise, is named after the
#: store with this suffix (``adatune.db``: ``adatune-runs/``; ``run-ID/`` inside it; see
#: :func:`adatune.running.folder.default_checkpoint_dir`).
CHECKPOINT_SUFFIX = "-runs"


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


#: The precisions a run's forward may take: fp32 (none), or autocast to bf16 or fp16
#: (fp16 with a gradient scaler). The parameters, the optimizer and the tuner stay fp32.
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
DEFAULT_PRECISION = PRECISIONS[0]


@dataclass(frozen=True)
class LoopConfig:
    """How the loop runs: everything that is not one of the parts.

    :func:`adatune.running.build.loop_config` makes it from a run's
    configuration, whose fields hold the defaults. ``grad_clip`` clips the
    gradient norm of untuned steps (a tuner clips its own). ``workers`` feeds
    datasets that are not in-memory tensors through that many
    :class:`~torch.utils.data.DataLoader` worker processes. ``precision``
    (:data:`PRECISIONS`): the training forward and loss run under
    ``torch.autocast`` in bf16 or fp16 (fp16 with a ``torch.amp.GradScaler``).
    ``hvp_fraction`` < 1: MARTHE/RTHO take their Hessian-vector product on that
    leading fraction of each batch (the tuner step's ``hvp_loss``).
    """

    epochs: int
    batch_size: int
    seed: int
    patience: int | None
    log_every: int
    grad_clip: float | None
    workers: int
    rules: DivergenceRules
    precision: str = DEFAULT_PRECISION
    hvp_fraction: float = 1.0  # MARTHE/RTHO: the HVP on this leading part of each batch


class Events:
    """Progress callbacks; override what you need. The defaults do nothing."""

    def run_started(self, run_id: int, config: dict[str, Any], *, steps_per_epoch: int,
                    start_epoch: int) -> None:
        """Run ``run_id`` starts at ``start_epoch`` (> 1 when resumed); ``config`` is the
        configuration the store records for it (``RunRecord.config``), whichever entry point
        (the command, :func:`adatune.fit`) started it."""

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
