"""Cases for the data-parallel exactness test: ``adatune.fit`` in float64 on tiny data.

``python -m tests._dist_fit OUT_DIR`` runs every case (as one rank of a run,
when launched with torch.distributed's environment: see ``tests/_ranks.py``)
and writes ``OUT_DIR/result-RANK.json``: per case, the LR and hypergradient of
every step, read from the store (rank 0) or from the result (every rank).
:func:`run_cases` is the same in one process: the reference.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import torch
from torch import nn

import adatune
import adatune.running.loop
from adatune.methods.peers import PEER_NAMES, build_peer
from adatune.methods.tuners import collectives
from adatune.running import signals
from adatune.store import open_store

# (name, tuner, optimizer, options). Sizes make uneven slices: 43 training examples in
# batches of 6 (the last batch has 1: rank 0's slice of it is empty), 17 validation
# examples (the last validation batch splits 2/3).
CASES = [
    ("marthe-momentum", "marthe", "sgd", {"mu": 0.9, "weight_decay": 1e-3}),
    ("marthe-adam-auto-mu", "marthe", "adam", {"mu": "auto"}),
    ("marthe-momentum-clip", "marthe", "sgd", {"mu": 0.95, "grad_clip": 0.3}),
    ("rtho-momentum-buckets", "rtho", "sgd", {"bucket_bytes": 256}),
    ("marthe-momentum-fd", "marthe", "sgd", {"mu": 0.9, "hvp": "finite-difference"}),
    # the HVP and the validation gradient on every other step (hvps None in between)
    ("marthe-momentum-every-2", "marthe", "sgd", {"mu": 0.9, "hyper_every": 2}),
    ("hd-momentum", "hd", "sgd", {"weight_decay": 1e-3}),
    ("hd-adam-own-group", "hd", "adam", {"own_group": True}),
    ("baseline-momentum", None, "sgd", {}),
    # the peers: their packages' optimizers step on the averaged gradients
    ("peer-prodigy", None, "prodigy", {}),
    ("peer-schedulefree-sgd", None, "schedulefree-sgd", {}),
    ("peer-dog", None, "dog", {}),
    ("peer-mechanic-sgd", None, "mechanic-sgd", {}),
]
# The finite difference divides a difference of two gradients by eps ~ 1e-8: the
# summation-order rounding of one process and of two ranks (1e-16) comes out ~1e-8
# relative, inside the finite difference's own error. Every other case: 1e-9.
TOLERANCE = {"marthe-momentum-fd": 1e-7}
SIZES = (43, 17, 11)
BATCH = 6
EPOCHS = 2


def _data(seed: int = 0, sizes: tuple[int, ...] = SIZES):
    g = torch.Generator().manual_seed(seed)
    sets = []
    for n in sizes:
        x = torch.randn(n, 5, generator=g, dtype=torch.float64)
        y = (x[:, 0] + 0.5 * x[:, 1] > 0).long() + (x[:, 2] > 0.8).long()
        sets.append((x, y))
    return sets


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()


def run_case(name: str, store: Path, ckpt: Path) -> dict:
    _, tuner_name, opt_name, options = next(c for c in CASES if c[0] == name)
    options = dict(options)
    bucket = options.pop("bucket_bytes", None)
    wd = options.pop("weight_decay", 0.0)
    if options.pop("own_group", False) and torch.distributed.is_initialized():
        # a group of its own (not the default one): the tuner and the loop use it
        options["process_group"] = torch.distributed.new_group([0, 1])
    model = _model()
    if opt_name == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=wd)
        hyper_lr = 1e-2 if tuner_name != "hd" else 1e-2
    elif opt_name in PEER_NAMES:
        opt = build_peer(opt_name, model.parameters())
    else:
        opt = torch.optim.Adam(model.parameters(), lr=0.01, weight_decay=wd)
        hyper_lr = 1e-4
    if tuner_name == "marthe":
        tuner = adatune.MARTHE(opt, hyper_lr=hyper_lr, model=model, **options, online=True)
    elif tuner_name == "rtho":
        tuner = adatune.RTHO(opt, hyper_lr=hyper_lr, model=model, **options, online=True)
    elif tuner_name == "hd":
        tuner = adatune.HD(opt, hyper_lr=hyper_lr, **options, online=True)
    else:
        tuner = None
    train, val, test = _data()
    saved = collectives.BUCKET_BYTES
    if bucket is not None:
        collectives.BUCKET_BYTES = bucket
    try:
        result = adatune.fit(model, train, val, test, optimizer=opt, tuner=tuner,
                             epochs=EPOCHS, batch_size=BATCH, log_every=1, store=str(store),
                             checkpoint_dir=str(ckpt), name=name)
    finally:
        collectives.BUCKET_BYTES = saved
    out = {"status": result.status, "run_id": result.run_id,
           "val_loss": [e.val_loss for e in result.epochs],
           "train_loss": [e.train_loss for e in result.epochs],
           "weights": [p.detach().reshape(-1).tolist() for p in model.parameters()],
           "final_lr": tuner.lr if tuner is not None else opt.param_groups[0]["lr"]}
    if store.exists() and (not torch.distributed.is_initialized()
                           or torch.distributed.get_rank() == 0):
        out.update(_recorded_steps(store, result.run_id))
    return out


def _recorded_steps(store: Path, run_id: int) -> dict:
    """Every step's LR and hypergradient as the store recorded them (rank 0 reads it)."""
    with open_store(store) as db:
        steps = db.get_run(run_id).steps
    return {"lr": [s.lr for s in steps], "h": [s.hypergradient for s in steps]}


def run_cases(workdir: Path) -> dict:
    store = workdir / "runs.db"
    return {name: run_case(name, store, workdir / "ckpt") for name, *_ in CASES}


class _StopAfterFirstEpoch(adatune.Events):
    def epoch_done(self, record) -> None:
        if record.epoch == 1:
            raise KeyboardInterrupt


def resume_phase(workdir: Path, phase: str) -> dict:
    """A model with dropout and batch norm, MARTHE, 3 epochs: ``full``, or ``stop`` after
    epoch 1 (rank 0 is interrupted) and ``continue`` it with ``resume=``.

    Batches of 8 split 4/4; the last of each set (4 and 2) splits 2/2 and 1/1.
    """
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Dropout(0.3),
                          nn.Linear(8, 3)).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    tuner = adatune.MARTHE(opt, hyper_lr=1e-2, mu=0.9, model=model, online=True)
    train, val, test = _data(1, (44, 18, 10))  # batch norm: slices of 2 examples or more
    store = workdir / f"{'full' if phase == 'full' else 'stopped'}.db"
    resume = None
    if phase == "continue":
        resume = json.loads((workdir / "stop-0.json").read_text())["run_id"]
    kw = dict(optimizer=opt, tuner=tuner, epochs=3, batch_size=8, log_every=1,
              store=str(store), checkpoint_dir=str(workdir / f"ckpt-{store.stem}"),
              resume=resume, events=_StopAfterFirstEpoch() if phase == "stop" else None)
    try:
        result = adatune.fit(model, train, val, test, **kw)
    except collectives.RankFailure as exc:  # rank 0 stopped: the other ranks lose it
        return {"status": "rank-failure", "error": str(exc)}
    out = {"status": result.status, "run_id": result.run_id,
           "weights": [p.detach().reshape(-1).tolist() for p in model.parameters()],
           "buffers": [b.reshape(-1).tolist() for b in model.buffers()]}
    if torch.distributed.get_rank() == 0:
        out.update(_recorded_steps(store, result.run_id))
    return out


def _signal_checks(workdir: Path) -> dict:
    """The collectives of one run with SIGTERM/SIGUSR1 handled and without."""
    out = {}
    for armed in (False, True):
        with collectives.counting() as count:
            with signals.handle_preemption() if armed else contextlib.nullcontext():
                run_case("baseline-momentum", workdir / f"signals-{armed}.db",
                         workdir / f"ckpt-signals-{armed}")
        key = "armed" if armed else "unarmed"
        out[key], out[f"{key}_bytes"] = count.collectives, count.bytes
    return out


def _low_level_refused() -> str:
    """compute_hg() under a process group of two ranks: the error it raises."""
    model = _model()
    tuner = adatune.MARTHE(torch.optim.SGD(model.parameters(), lr=0.1), hyper_lr=1e-3, online=True)
    try:
        tuner.compute_hg(model, [torch.zeros_like(p) for p in model.parameters()])
    except ValueError as exc:
        return str(exc)
    return "not refused"


def main(workdir: str, phase: str = "cases") -> None:
    path = Path(workdir)
    torch.distributed.init_process_group("gloo")
    try:
        results = run_cases(path) if phase == "cases" else resume_phase(path, phase)
        if phase == "cases":
            results["low-level API"] = _low_level_refused()
            results["signal checks"] = _signal_checks(path)
        rank = torch.distributed.get_rank()
        # Every rank is done with the group before any tears it down (in "stop" rank 0
        # left the run: rank 1 has no other rank to wait for).
        if phase != "stop":
            torch.distributed.barrier()
    finally:
        torch.distributed.destroy_process_group()
    (path / f"{'result' if phase == 'cases' else phase}-{rank}.json").write_text(
        json.dumps(results))


if __name__ == "__main__":
    main(*sys.argv[1:])
