"""What a run will read and write, checked before the training stack is loaded.

:class:`~adatune.running.config.TrainConfig` checks values and names; this checks the
file system: the dataset's files are there (or are to be downloaded), a peer
optimizer's package and the top-level packages of the user's own
``--model``/``--data``/``--loss`` are installed (looked up, not imported), and
the checkpoint directory is, or can be made, a writable directory. None of it
needs torch, so the command rejects such input at once, before any run is
written. The user's modules are imported when the run's parts are built.

:func:`check_resume` does the same for ``--resume``: whether the recorded run
can go on, as asked, is known from the store and its checkpoint folder.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from adatune.catalog import check_dataset_files
from adatune.errors import ConfigError, RunBusy
from adatune.imports import check_findable
from adatune.methods.peers import check_available
from adatune.running.config import REPLAY, TrainConfig
from adatune.running.folder import checkpoint_root, folder_in_use, run_dir

if TYPE_CHECKING:
    from adatune.store import Store
    from adatune.store.records import RunRecord


def check_writable_dir(path: str | os.PathLike[str], what: str) -> None:
    """Raise :class:`ConfigError` unless ``path`` is, or can be created as, a writable folder."""
    target = Path(path).expanduser().absolute()
    existing = target
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent  # the deepest part that exists: it must be a folder
    if not existing.is_dir():
        raise ConfigError(f"invalid {what}: {path} ({existing} is not a directory)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"invalid {what}: {path} ({existing} is not writable)")


def check_device(device: str) -> None:
    """Refuse ``device='cuda'`` or ``'mps'`` where it cannot work, without importing torch.

    Refused only when it is certain: a torch built without CUDA (or ROCm), no
    GPU driver or no visible GPU for ``cuda``; anything but Apple silicon for
    ``mps``. Where this cannot tell, torch decides when the run is built.
    """
    if device == "mps":
        if sys.platform != "darwin" or platform.machine() != "arm64":
            raise ConfigError("device='mps': MPS is Apple silicon's, and this is not a Mac "
                              "with it (try device='auto' or device='cpu')")
        return
    if device != "cuda":
        return
    build = _torch_build()
    if build is not None and not (build.get("cuda") or build.get("hip")):
        raise ConfigError(f"device='cuda': the installed torch ({build.get('__version__')}) "
                          "is built without CUDA (try device='auto' or device='cpu')")
    if build is not None and build.get("hip"):
        return  # ROCm: torch knows
    count = _cuda_devices()
    if count == 0:
        raise ConfigError("device='cuda': no CUDA device is available here (no NVIDIA driver, "
                          "or no GPU visible to this process; try device='auto' or "
                          "device='cpu')")


def _torch_build() -> dict[str, str | None] | None:
    """``torch/version.py``'s fields (``cuda``, ``hip``, ``__version__``), read as text."""
    import ast
    from importlib.util import find_spec

    try:
        spec = find_spec("torch")
        if spec is None or spec.origin is None:
            return None
        tree = ast.parse((Path(spec.origin).parent / "version.py").read_text())
    except (OSError, ValueError, SyntaxError, ImportError):
        return None
    fields: dict[str, str | None] = {}
    for node in tree.body:
        target = node.target if isinstance(node, ast.AnnAssign) else (
            node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else None)
        if isinstance(target, ast.Name) and isinstance(node.value, ast.Constant):
            value = node.value.value
            fields[target.id] = value if isinstance(value, str) else None
    return fields if "cuda" in fields else None


def _cuda_devices() -> int | None:
    """The CUDA devices the driver shows this process (0 without a driver); None: unknown."""
    import ctypes

    names = ("nvcuda.dll",) if sys.platform == "win32" else ("libcuda.so.1", "libcuda.so",
                                                             "libcuda.dylib")
    for name in names:
        try:
            driver = ctypes.CDLL(name)
            break
        except OSError:
            continue
    else:
        return 0
    try:
        count = ctypes.c_int(0)
        if driver.cuInit(0) != 0:
            return 0  # no device, or none visible (CUDA_VISIBLE_DEVICES)
        if driver.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return None
        return count.value
    except (AttributeError, OSError):
        return None


def check_run_inputs(config: TrainConfig, store: str | None = None) -> None:
    """The dataset's files, the packages and the checkpoint directory ``config`` names.

    Without a ``checkpoint_dir``, the folder checked is ``store``'s own
    (:func:`~adatune.running.folder.default_checkpoint_dir`; None: the default store's).
    Raises :class:`ConfigError` or :class:`~adatune.errors.DatasetError`.
    """
    check_device(config.device)
    if config.dataset is not None:  # None: the user's own --data
        check_dataset_files(config.dataset, config.data_dir, download=config.download)
    if config.is_peer:
        check_available(config.method)
    for option, path in (("model", config.model), ("data", config.data),
                         ("loss", config.loss)):
        if path is not None and ":" in path:  # an import path (not a built-in loss name)
            check_findable(option, path)
    check_writable_dir(config.checkpoint_dir or checkpoint_root(None, store), "checkpoint_dir")


def check_resume(store: Store, run_id: int, *, epochs: int | None = None) -> RunRecord:
    """The recorded run, if it can be resumed with ``epochs`` (its new total) as asked.

    Refused with one line (:class:`ConfigError`, or :class:`RunBusy` while its
    process is alive): an unknown run, one of ``adatune.fit``, a diverged one, a
    completed one unless ``epochs`` is above what it trained, one that stopped
    early, ``epochs`` below what it trained, a new total for a replay, and a run
    with epochs but no checkpoint.
    """
    run = store.get_run(run_id, steps=False).run
    if run.config.get("entry") == "fit":
        raise ConfigError(f"run {run_id} was started from Python with adatune.fit; resume "
                          f"it there with adatune.fit(..., resume={run_id})")
    folder = run_dir(checkpoint_root(run.config.get("checkpoint_dir"), store), run_id)
    _check_resumable(run, folder, epochs)
    recorded = run.config.get("epochs")
    if epochs is not None and epochs != recorded:
        if epochs < run.epochs:
            raise ConfigError(f"epochs={epochs}: run {run.id} has already trained "
                              f"{run.epochs} epochs")
        if run.config.get("method") == REPLAY:  # its schedule was laid out for its epochs
            raise ConfigError(f"epochs={epochs}: run {run.id} replays a schedule laid out "
                              f"for {recorded} epochs; start a new replay with epochs={epochs} "
                              "(and stretch=True to map the schedule onto it)")
    return run


def _check_resumable(run: RunRecord, ckpt_dir: Path, epochs: int | None) -> None:
    if run.status == "running" and folder_in_use(ckpt_dir):
        raise RunBusy(f"run {run.id} is still running (its process is alive)")
    check_status(run, epochs)
    if run.epochs > 0 and not (ckpt_dir / "last.pt").exists():
        raise ConfigError(f"run {run.id} has no checkpoint at {ckpt_dir / 'last.pt'}; it "
                          "cannot be resumed")


def check_status(run: RunRecord, epochs: int | None) -> None:
    """Refuse a diverged run, and a completed one unless ``epochs`` trains it longer."""
    if run.status == "diverged":
        raise ConfigError(f"run {run.id} diverged ({run.error}); start a new run instead")
    if run.status == "completed" and not (epochs is not None and epochs > run.epochs):
        raise ConfigError(f"run {run.id} already completed ({run.epochs} epochs); give "
                          f"epochs= above {run.epochs} to train it longer")
    if run.status == "completed" and (run.summary or {}).get("stopped_early"):
        raise ConfigError(f"run {run.id} stopped early (no better validation score for "
                          f"{run.config.get('patience')} epochs); more epochs would stop it "
                          "again")
