"""The store's repository API, on every backend (SQLite file and a real PostgreSQL)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib.metadata
import math
import socket

import pytest
from sqlalchemy import create_engine, update
from sqlalchemy.exc import IntegrityError

import adatune
from adatune.errors import RunNotFound, StoreError
from adatune.store import (
    STALE_AFTER_S,
    EpochRecord,
    NewRun,
    RunDetail,
    RunRecord,
    StepRecord,
    Store,
    open_store,
)
from adatune.store.orm import RunRow

NAN, INF = float("nan"), float("inf")


def new_run(**changes: object) -> NewRun:
    base = NewRun(
        kind="train",
        method="marthe",
        optimizer="sgd",
        network="mlp",
        dataset="digits",
        seed=7,
        config={"lr": 0.05, "epochs": 3, "tuner": {"mu": "auto"}, "layers": [64, 32]},
        name="first",
        experiment="exp-a",
        device="cpu",
    )
    return dataclasses.replace(base, **changes)


def epoch_record(epoch: int, **changes: object) -> EpochRecord:
    base = EpochRecord(
        epoch=epoch,
        lr=0.05 / epoch,
        lr_mean=0.06 / epoch,
        mu=0.99,
        hyper_lr=1e-4,
        train_loss=2.0 / epoch,
        train_acc=0.5 + 0.1 * epoch,
        val_loss=2.1 / epoch,
        val_acc=0.4 + 0.1 * epoch,
        test_loss=2.2 / epoch,
        test_acc=0.3 + 0.1 * epoch,
        elapsed_s=1.25 * epoch,
        nonfinite_hypergradients=epoch - 1,
    )
    return dataclasses.replace(base, **changes)


def step_records(epoch: int, n: int = 5) -> list[StepRecord]:
    return [
        StepRecord(
            step=(epoch - 1) * 100 + 20 * i,
            epoch=epoch,
            lr=0.05 + 1e-3 * i,
            mu=0.99 if i % 2 else None,
            hyper_lr=1e-4,
            hypergradient=(-1) ** i * 1.5e-7 * (i + 1),
            train_loss=2.0 - 0.1 * i,
        )
        for i in range(n)
    ]


def comparable(record: object) -> tuple:
    """A record as a tuple where NaN equals NaN (dataclass == says NaN != NaN)."""
    return tuple(
        "NaN" if isinstance(v, float) and math.isnan(v) else v for v in dataclasses.astuple(record)
    )


@pytest.fixture
def store(store_url: str):
    with open_store(store_url) as opened:
        yield opened


def backdate_heartbeat(store: Store, run_id: int, seconds: float) -> None:
    """Pretend the run's process stopped heartbeating ``seconds`` ago."""
    when = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=seconds)
    engine = create_engine(store.url)
    try:
        with engine.begin() as conn:
            conn.execute(update(RunRow).where(RunRow.id == run_id).values(heartbeat_at=when))
    finally:
        engine.dispose()


def test_create_run_records_what_the_engine_knows(store: Store) -> None:
    before = dt.datetime.now(dt.timezone.utc)
    run_id = store.create_run(new_run())
    run = store.get_run(run_id).run
    assert isinstance(run, RunRecord)
    assert run.id == run_id
    assert (run.kind, run.method, run.optimizer, run.network, run.dataset, run.seed) == (
        "train",
        "marthe",
        "sgd",
        "mlp",
        "digits",
        7,
    )
    assert run.config == new_run().config
    assert (run.name, run.experiment, run.device, run.parent_id) == ("first", "exp-a", "cpu", None)
    assert run.status == "running"
    assert run.started_at.tzinfo is not None
    assert before - dt.timedelta(seconds=1) <= run.started_at <= dt.datetime.now(dt.timezone.utc)
    assert run.heartbeat_at == run.started_at
    assert run.ended_at is None
    assert (run.epochs, run.best_val_acc, run.best_epoch, run.test_acc) == (0, None, None, None)
    assert run.adatune_version == adatune.__version__
    assert run.torch_version == importlib.metadata.version("torch")
    assert run.host == socket.gethostname()
    assert run.summary == {} and run.error is None


def test_ids_increase_and_seed_may_be_large(store: Store) -> None:
    a = store.create_run(new_run(seed=2**40))
    b = store.create_run(new_run(experiment=None, name=None))
    assert b > a
    assert store.get_run(a).run.seed == 2**40
    assert store.get_run(b).run.experiment is None


def test_invalid_kind_and_unknown_parent_are_refused(store: Store) -> None:
    with pytest.raises(ValueError, match="Invalid run kind"):
        store.create_run(new_run(kind="bogus"))
    with pytest.raises(RunNotFound, match="no run with id 999"):
        store.create_run(new_run(kind="probe", parent_id=999))
    assert store.list_runs() == []


def test_epochs_and_steps_round_trip_in_order(store: Store) -> None:
    run_id = store.create_run(new_run())
    epochs = [epoch_record(e) for e in (1, 2, 3)]
    steps = {e: step_records(e) for e in (1, 2, 3)}
    for record in epochs:
        store.record_epoch(run_id, record, steps[record.epoch])
    detail = store.get_run(run_id)
    assert isinstance(detail, RunDetail)
    assert detail.epochs == tuple(epochs)
    assert detail.steps == tuple(s for e in (1, 2, 3) for s in steps[e])
    assert detail.run.epochs == 3
    light = store.get_run(run_id, steps=False)
    assert light.steps == () and light.epochs == tuple(epochs)


def test_record_epoch_without_steps_and_with_none_fields(store: Store) -> None:
    run_id = store.create_run(new_run(method="constant", kind="baseline"))
    record = epoch_record(1, mu=None, hyper_lr=None, test_loss=None, test_acc=None)
    store.record_epoch(run_id, record)
    detail = store.get_run(run_id)
    assert detail.epochs == (record,)
    assert detail.steps == ()
    assert detail.run.test_acc is None and detail.run.best_epoch == 1


def test_nonfinite_values_round_trip(store: Store) -> None:
    run_id = store.create_run(new_run(config={"beta": INF, "clip": -INF, "x": NAN}))
    record = epoch_record(
        1,
        lr=NAN,
        lr_mean=INF,
        mu=-INF,
        hyper_lr=NAN,
        train_loss=INF,
        train_acc=NAN,
        val_loss=NAN,
        val_acc=0.5,
        test_loss=-INF,
        test_acc=NAN,
        elapsed_s=INF,
    )
    steps = [
        StepRecord(
            step=0, epoch=1, lr=INF, mu=NAN, hyper_lr=-INF, hypergradient=NAN, train_loss=INF
        ),
        StepRecord(
            step=1, epoch=1, lr=0.1, mu=None, hyper_lr=None, hypergradient=-INF, train_loss=NAN
        ),
        StepRecord(
            step=2,
            epoch=1,
            lr=1e-300,
            mu=0.0,
            hyper_lr=-0.0,
            hypergradient=5e-324,
            train_loss=1.7976931348623157e308,
        ),
    ]
    store.record_epoch(run_id, record, steps)
    store.finish_run(run_id, "diverged", summary={"alpha": NAN, "best": INF, "ok": 1})
    detail = store.get_run(run_id)
    assert [comparable(e) for e in detail.epochs] == [comparable(record)]
    assert [comparable(s) for s in detail.steps] == [comparable(s) for s in steps]
    assert math.copysign(1.0, detail.steps[2].hyper_lr) == -1.0  # -0.0 kept
    run = detail.run
    assert math.isnan(run.test_acc)  # test accuracy at the best-val epoch, even if NaN
    assert run.best_val_acc == 0.5 and run.best_epoch == 1
    assert run.config["beta"] == INF and run.config["clip"] == -INF
    assert math.isnan(run.config["x"])
    assert math.isnan(run.summary["alpha"]) and run.summary["best"] == INF
    assert store.list_runs(ids=[run_id])[0].status == "diverged"


def test_best_val_acc_tracks_first_maximum_and_ignores_nan(store: Store) -> None:
    run_id = store.create_run(new_run())
    for epoch, val_acc, test_acc in [
        (1, 0.5, 0.45),
        (2, 0.7, 0.66),
        (3, 0.7, 0.99),
        (4, 0.6, 0.9),
        (5, NAN, 1.0),
    ]:
        store.record_epoch(run_id, epoch_record(epoch, val_acc=val_acc, test_acc=test_acc))
        if epoch == 1:
            run = store.get_run(run_id).run
            assert (run.best_val_acc, run.best_epoch, run.test_acc) == (0.5, 1, 0.45)
    run = store.list_runs(ids=[run_id])[0]
    assert (run.best_val_acc, run.best_epoch, run.test_acc, run.epochs) == (0.7, 2, 0.66, 5)


def test_record_epoch_bumps_heartbeat(store: Store) -> None:
    run_id = store.create_run(new_run())
    backdate_heartbeat(store, run_id, STALE_AFTER_S + 60)
    assert store.get_run(run_id).run.status == "interrupted"
    store.record_epoch(run_id, epoch_record(1))
    run = store.get_run(run_id).run
    assert run.status == "running"
    assert run.heartbeat_at > run.started_at


def test_finish_run(store: Store) -> None:
    run_id = store.create_run(new_run())
    store.record_epoch(run_id, epoch_record(1))
    store.finish_run(run_id, "failed", error="RuntimeError: boom\nline 2", summary={"a": [1, 2]})
    run = store.get_run(run_id).run
    assert run.status == "failed"
    assert run.error == "RuntimeError: boom\nline 2"
    assert run.summary == {"a": [1, 2]}
    assert run.ended_at is not None and run.ended_at >= run.started_at
    store.finish_run(run_id, "completed")  # summary None keeps the old one, error cleared
    run = store.get_run(run_id).run
    assert (run.status, run.error, run.summary) == ("completed", None, {"a": [1, 2]})
    for bad in ("running", "done", ""):
        with pytest.raises(ValueError, match="Invalid final status"):
            store.finish_run(run_id, bad)


def test_finished_run_is_never_shown_interrupted(store: Store) -> None:
    run_id = store.create_run(new_run())
    store.finish_run(run_id, "completed")
    backdate_heartbeat(store, run_id, 10 * STALE_AFTER_S)
    assert store.get_run(run_id).run.status == "completed"


def test_stale_running_runs_are_shown_and_filtered_as_interrupted(store: Store) -> None:
    alive = store.create_run(new_run(name="alive"))
    dead = store.create_run(new_run(name="dead"))
    stopped = store.create_run(new_run(name="stopped"))
    store.finish_run(stopped, "interrupted")
    backdate_heartbeat(store, dead, STALE_AFTER_S + 5)
    backdate_heartbeat(store, alive, STALE_AFTER_S - 60)
    shown = {r.name: r.status for r in store.list_runs()}
    assert shown == {"alive": "running", "dead": "interrupted", "stopped": "interrupted"}
    assert [r.id for r in store.list_runs(status="running")] == [alive]
    assert [r.id for r in store.list_runs(status="interrupted")] == [dead, stopped]
    assert store.get_run(dead).run.status == "interrupted"
    store.heartbeat(dead)  # it was only slow: it is running again
    assert [r.id for r in store.list_runs(status="running")] == [alive, dead]


def test_list_runs_filters(store: Store) -> None:
    specs = [
        dict(experiment="exp-a", method="marthe", dataset="digits"),
        dict(experiment="exp-a", method="hd", dataset="mnist"),
        dict(experiment="exp-b", method="marthe", dataset="mnist"),
        dict(experiment=None, method="constant", dataset="digits", kind="baseline"),
    ]
    ids = [store.create_run(new_run(**spec)) for spec in specs]
    store.finish_run(ids[1], "completed")
    store.finish_run(ids[2], "diverged")
    probe = store.create_run(new_run(kind="probe", parent_id=ids[0], experiment=None))

    def found(**filters: object) -> list[int]:
        runs = store.list_runs(**filters)
        assert [r.id for r in runs] == sorted(r.id for r in runs)  # ordered by id
        return [r.id for r in runs]

    assert found() == [*ids, probe]
    assert found(experiment="exp-a") == ids[:2]
    assert found(experiment=["exp-a", "exp-b"]) == ids[:3]
    assert found(experiment="nope") == []
    assert found(method="marthe") == [ids[0], ids[2], probe]
    assert found(dataset="mnist") == ids[1:3]
    assert found(status="running") == [ids[0], ids[3], probe]
    assert found(status=["completed", "diverged"]) == ids[1:3]
    assert found(kind="baseline") == [ids[3]]
    assert found(kind="probe") == [probe]
    assert found(parent_id=ids[0]) == [probe]
    assert found(ids=[ids[3], ids[0], 12345]) == [ids[0], ids[3]]
    assert found(ids=[]) == []
    assert found(experiment="exp-a", method="marthe", dataset="digits", status="running") == [
        ids[0]
    ]
    assert {r.experiment for r in store.list_runs()} == {"exp-a", "exp-b", None}
    with pytest.raises(ValueError, match="unknown status .complete. "):
        store.list_runs(status=["completed", "complete"])
    with pytest.raises(ValueError, match="unknown kind .probes. "):
        store.list_runs(kind="probes")


def test_experiments_are_created_once(store: Store) -> None:
    assert store.list_experiments() == []
    store.create_run(new_run(experiment="zeta"))
    store.create_run(new_run(experiment="alpha"))
    store.create_run(new_run(experiment="zeta"))
    store.create_run(new_run(experiment=None))
    assert store.list_experiments() == ["alpha", "zeta"]
    assert len(store.list_runs(experiment="zeta")) == 2


def test_delete_run_removes_epochs_steps_and_child_probes(store: Store) -> None:
    search = store.create_run(new_run(kind="find-alpha"))
    probes = [store.create_run(new_run(kind="probe", parent_id=search)) for _ in range(2)]
    grandchild = store.create_run(new_run(kind="probe", parent_id=probes[0]))
    keep = store.create_run(new_run(name="keep"))
    for run_id in (search, *probes, grandchild, keep):
        store.record_epoch(run_id, epoch_record(1), step_records(1))
    store.delete_run(search)
    assert [r.id for r in store.list_runs()] == [keep]
    for gone in (search, *probes, grandchild):
        with pytest.raises(RunNotFound):
            store.get_run(gone)
    detail = store.get_run(keep)
    assert len(detail.epochs) == 1 and len(detail.steps) == 5
    # no orphan rows are left behind
    engine = create_engine(store.url)
    try:
        with engine.connect() as conn:
            for table in ("adatune_epochs", "adatune_steps"):
                rows = conn.exec_driver_sql(f"SELECT DISTINCT run_id FROM {table}").all()
                assert rows == [(keep,)]
    finally:
        engine.dispose()


def test_unknown_run_ids(store: Store) -> None:
    for call in (
        lambda: store.get_run(42),
        lambda: store.delete_run(42),
        lambda: store.heartbeat(42),
        lambda: store.finish_run(42, "completed"),
        lambda: store.record_epoch(42, epoch_record(1)),
    ):
        with pytest.raises(RunNotFound) as info:
            call()
        assert isinstance(info.value, StoreError)
        message = str(info.value)
        assert message.startswith("no run with id 42 in ") and "\n" not in message
        assert message.endswith(f" in {store.location}")


def test_reopening_keeps_everything(store_url: str) -> None:
    with open_store(store_url) as first:
        run_id = first.create_run(new_run())
        first.record_epoch(run_id, epoch_record(1), step_records(1))
        first.finish_run(run_id, "completed", summary={"alpha": 1e-4})
    with open_store(store_url) as second:
        detail = second.get_run(run_id)
        assert detail.run.status == "completed" and detail.run.summary == {"alpha": 1e-4}
        assert detail.epochs == (epoch_record(1),) and detail.steps == tuple(step_records(1))
        assert second.url == first.url


def test_records_are_frozen(store: Store) -> None:
    run_id = store.create_run(new_run())
    run = store.get_run(run_id).run
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.status = "completed"  # type: ignore[misc]


def test_reopen_run_for_resume(store: Store) -> None:
    run_id = store.create_run(new_run())
    store.record_epoch(run_id, epoch_record(1))
    store.finish_run(run_id, "interrupted", error="KeyboardInterrupt")
    store.reopen_run(run_id)
    run = store.get_run(run_id).run
    assert (run.status, run.ended_at, run.error, run.epochs) == ("running", None, None, 1)
    store.record_epoch(run_id, epoch_record(2))
    store.finish_run(run_id, "completed")
    assert [e.epoch for e in store.get_run(run_id).epochs] == [1, 2]
    with pytest.raises(RunNotFound):
        store.reopen_run(run_id + 100)


def test_a_failed_epoch_write_leaves_nothing_and_the_next_one_works(store: Store) -> None:
    # record_epoch runs on its own prepared DBAPI connection: a statement that
    # fails halfway (here the step rows, after the epoch row went in) must roll
    # the whole epoch back and leave that connection usable.
    run_id = store.create_run(new_run())
    store.record_epoch(run_id, epoch_record(1), step_records(1))
    clashing = [dataclasses.replace(s, epoch=2) for s in step_records(1)[:1]]
    with pytest.raises(IntegrityError):
        store.record_epoch(run_id, epoch_record(2), step_records(2) + clashing)
    detail = store.get_run(run_id)
    assert [e.epoch for e in detail.epochs] == [1] and detail.run.epochs == 1
    assert detail.steps == tuple(step_records(1))
    store.record_epoch(run_id, epoch_record(2), step_records(2))
    detail = store.get_run(run_id)
    assert [e.epoch for e in detail.epochs] == [1, 2] and detail.run.epochs == 2
    assert detail.steps == tuple(step_records(1) + step_records(2))


def test_every_step_lr_round_trips_exactly_per_epoch(store: Store) -> None:
    run_id = store.create_run(new_run())
    per_epoch = {
        1: [0.05, 0.05 + 1e-17, 1 / 3, 5e-324, 0.0],  # exact doubles, subnormal, zero
        2: [math.pi * 1e-3 * k for k in range(1, 40)],
        3: [],  # an epoch of no steps is still an array
    }
    for epoch, lrs in per_epoch.items():
        store.record_epoch(run_id, epoch_record(epoch), step_records(epoch), lrs=lrs)
    got = store.get_step_lrs(run_id)
    assert [g.epoch for g in got] == [1, 2, 3]
    for g in got:
        assert g.lrs == tuple(per_epoch[g.epoch])
        assert all(type(v) is float for v in g.lrs)
    assert math.copysign(1.0, got[0].lrs[-1]) == 1.0
    # the arrays never ride along with the usual reads
    detail = store.get_run(run_id)
    assert [e.epoch for e in detail.epochs] == [1, 2, 3]
    assert not any(hasattr(e, "lrs") or hasattr(e, "step_lrs") for e in detail.epochs)


def test_epochs_without_step_lrs_read_back_as_none(store: Store) -> None:
    run_id = store.create_run(new_run())
    store.record_epoch(run_id, epoch_record(1))
    store.record_epoch(run_id, epoch_record(2), lrs=[0.1, 0.2])
    assert [(g.epoch, g.lrs) for g in store.get_step_lrs(run_id)] == [(1, None), (2, (0.1, 0.2))]
    assert store.get_step_lrs(store.create_run(new_run())) == ()
    with pytest.raises(RunNotFound, match="no run with id 999"):
        store.get_step_lrs(999)


def test_packed_lrs_are_little_endian_doubles() -> None:
    import struct

    from adatune.store.repository import pack_lrs, unpack_lrs

    values = [0.05, -0.0, 1e300, float("inf")]
    blob = pack_lrs(values)
    assert blob == struct.pack("<4d", *values)  # the documented layout, on every machine
    assert unpack_lrs(blob)[:3] == (0.05, -0.0, 1e300) and unpack_lrs(blob)[3] == INF
    with pytest.raises(ValueError, match="whole number of doubles"):
        unpack_lrs(blob[:-1])
