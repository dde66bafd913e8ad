"""Alembic migrations: base <-> head on every backend, version checks, shipping in the wheel."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text

from adatune.errors import StoreError
from adatune.store import (
    VERSION_TABLE,
    NewRun,
    inspect_store,
    migrate,
    open_store,
    upgrade_store,
)
from adatune.store.orm import Base
from tests._wait import WAIT_S

ROOT = Path(__file__).resolve().parents[1]
OUR_TABLES = {"adatune_experiments", "adatune_runs", "adatune_epochs", "adatune_steps"}


def tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def version_rows(url: str) -> list[str]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return [r[0] for r in conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}"))]
    finally:
        engine.dispose()


def set_version(url: str, revision: str) -> None:
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = :r"), {"r": revision})
    finally:
        engine.dispose()


def schema_diff(url: str) -> list:
    """Differences between the migrated database and the ORM models (ours only)."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn,
                opts={
                    "version_table": VERSION_TABLE,
                    "include_name": lambda name, type_, parent: (
                        type_ != "table" or name in Base.metadata.tables
                    ),
                    "compare_type": True,
                },
            )
            return compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()


def a_run() -> NewRun:
    return NewRun(
        kind="train",
        method="hd",
        optimizer="adam",
        network="mlp",
        dataset="digits",
        seed=0,
        config={},
    )


def test_base_to_head_one_revision_at_a_time_and_back(store_url: str) -> None:
    cfg = migrate.alembic_config(store_url)  # env.py makes its own engine from the URL
    script = ScriptDirectory.from_config(cfg)
    revisions = [r.revision for r in reversed(list(script.walk_revisions()))]
    assert revisions[-1] == migrate.head_revision()
    for revision in revisions:
        command.upgrade(cfg, revision)
        assert version_rows(store_url) == [revision]
    assert OUR_TABLES | {VERSION_TABLE} <= tables(store_url)
    assert "alembic_version" not in tables(store_url)  # Alembic's default name stays free
    assert schema_diff(store_url) == []  # the revisions build exactly what the models describe

    command.downgrade(cfg, "base")
    assert not (OUR_TABLES & tables(store_url))
    assert version_rows(store_url) == []

    command.upgrade(cfg, "head")  # and up again, then use it
    with open_store(store_url) as store:
        run_id = store.create_run(a_run())
        assert store.get_run(run_id).run.method == "hd"


def test_new_store_is_created_at_head(store_url: str) -> None:
    if store_url.startswith("sqlite"):
        with pytest.raises(StoreError, match="no store at"):  # and it does not create one
            inspect_store(store_url)
        assert not Path(store_url.removeprefix("sqlite:///")).exists()
    else:
        assert inspect_store(store_url).state == "new"
    with open_store(store_url):
        pass
    assert version_rows(store_url) == [migrate.head_revision()]
    assert schema_diff(store_url) == []
    state = inspect_store(store_url)
    assert (state.state, state.current, state.head) == ("current", state.head, state.head)
    before, after = upgrade_store(store_url)  # nothing to do
    assert before.state == after.state == "current"


def test_store_beside_optuna_tables(store_url: str) -> None:
    """Optuna keeps its own Alembic history (alembic_version) in the same database."""
    optuna = pytest.importorskip("optuna")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(store_url)
    optuna.create_study(study_name="before", storage=storage)
    optuna_version = _optuna_version(store_url)
    assert optuna_version  # Optuna stamped its own history
    with open_store(store_url) as store:  # a new store in a database that has other tables
        store.create_run(a_run())
    assert _optuna_version(store_url) == optuna_version
    study = optuna.create_study(study_name="after", storage=optuna.storages.RDBStorage(store_url))
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)
    with open_store(store_url) as store:
        assert len(store.list_runs()) == 1
    assert version_rows(store_url) == [migrate.head_revision()]


def _optuna_version(url: str) -> list[str]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return [r[0] for r in conn.execute(text("SELECT version_num FROM alembic_version"))]
    finally:
        engine.dispose()


def test_newer_store_tells_the_user_to_upgrade_adatune(store_url: str) -> None:
    with open_store(store_url):
        pass
    set_version(store_url, "9999_from_the_future")
    for call in (open_store, upgrade_store):
        with pytest.raises(StoreError) as info:
            call(store_url)
        message = str(info.value)
        assert "\n" not in message
        assert "newer adatune" in message and "upgrade adatune" in message
        assert "9999_from_the_future" in message
    assert inspect_store(store_url).state == "newer"
    assert version_rows(store_url) == ["9999_from_the_future"]  # nothing was touched


def test_older_store_asks_for_backup_and_db_upgrade(
    store_url: str, later_release: Callable[[], str]
) -> None:
    with open_store(store_url) as store:  # the store is written by the current release...
        run_id = store.create_run(a_run())
    old = migrate.head_revision()
    next_revision = later_release()  # ...and opened by a later one
    with pytest.raises(StoreError) as info:
        open_store(store_url)
    message = str(info.value)
    assert "\n" not in message
    assert "older schema" in message and "back it up" in message
    assert "adatune db upgrade" in message and old in message and next_revision in message
    assert inspect_store(store_url).state == "older"
    assert version_rows(store_url) == [old]  # opening changed nothing

    before, after = upgrade_store(store_url)
    assert (before.current, after.current) == (old, next_revision)
    engine = create_engine(store_url)
    try:
        assert "note" in {c["name"] for c in inspect(engine).get_columns("adatune_runs")}
    finally:
        engine.dispose()
    with open_store(store_url) as store:  # the upgraded store keeps its runs
        assert [r.id for r in store.list_runs()] == [run_id]


def test_current_release_refuses_a_store_a_later_release_created(
    store_url: str, monkeypatch: pytest.MonkeyPatch, later_release: Callable[[], str]
) -> None:
    later_release()
    with open_store(store_url):  # created by the later release, at its head
        pass
    monkeypatch.undo()
    with pytest.raises(StoreError, match="newer adatune"):
        open_store(store_url)


@pytest.mark.slow
def test_non_editable_install_creates_a_store_from_anywhere(tmp_path: Path) -> None:
    """``pip install .`` (not -e) ships the migrations: a store can be made from any folder."""
    src = tmp_path / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("pyproject.toml", "README.md", "adatune", "adatune_cli", "migrations"):
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=ignore)
        elif (ROOT / name).exists():
            shutil.copy2(ROOT / name, src / name)
    if not (src / "README.md").exists():
        (src / "README.md").write_text("adatune\n")
    if importlib.util.find_spec("setuptools") is None:
        pytest.skip("setuptools is not installed here, so the wheel cannot be built offline")
    target = tmp_path / "site"
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--quiet",
            "--target",
            str(target),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=WAIT_S,
    )
    assert build.returncode == 0, build.stderr
    shipped = target / "adatune" / "migrations"
    assert (shipped / "env.py").is_file() and (shipped / "script.py.mako").is_file()
    assert {p.name for p in (shipped / "versions").glob("*.py")} == {
        p.name for p in (ROOT / "migrations" / "versions").glob("*.py")
    }

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    probe = textwrap.dedent(
        """
        import sqlite3, adatune, adatune.migrations
        from adatune.store import open_store
        print(adatune.__file__)
        print(adatune.migrations.__file__)
        with open_store("here.db") as store:
            print(store.url)
        names = sqlite3.connect("here.db").execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        print(",".join(sorted(n for (n,) in names)))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    env.pop("ADATUNE_STORE", None)
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=WAIT_S,
    )
    assert result.returncode == 0, result.stderr
    adatune_file, migrations_file, url, names = result.stdout.split()
    assert Path(adatune_file).is_relative_to(target)  # the installed copy, not the source tree
    assert Path(migrations_file).is_relative_to(target)
    assert url == f"sqlite:///{elsewhere / 'here.db'}"
    assert set(names.split(",")) == OUR_TABLES | {VERSION_TABLE}


def test_a_0001_store_with_runs_upgrades_to_per_step_lrs(store_url: str, capsys) -> None:
    """A store from before per-step LRs: `adatune db upgrade` keeps every row, adds the column."""
    from adatune.store import EpochRecord, StepRecord
    from tests._cli import cli

    cfg = migrate.alembic_config(store_url)
    command.upgrade(cfg, "0001")
    engine = create_engine(store_url)
    try:  # rows as adatune 0001 wrote them, through plain SQL on the old schema
        with engine.begin() as conn:
            conn.execute(text(
                "INSERT INTO adatune_runs (id, kind, method, optimizer, network, dataset, seed, "
                "config, status, started_at, epochs, adatune_version, torch_version) VALUES "
                "(1, 'train', 'marthe', 'sgd', 'mlp', 'digits', 0, '{}', 'completed', "
                "'2026-01-01 00:00:00', 2, '0.1', '2.5')"))
            for epoch in (1, 2):
                conn.execute(text(
                    "INSERT INTO adatune_epochs (run_id, epoch, lr, lr_mean, train_loss, "
                    "val_loss, elapsed_s, nonfinite_hypergradients) VALUES "
                    f"(1, {epoch}, 0.05, 0.04, 1.0, 1.1, {epoch}.5, 0)"))
            conn.execute(text(
                "INSERT INTO adatune_steps (run_id, step, epoch, lr, train_loss) "
                "VALUES (1, 0, 1, 0.05, 2.3)"))
    finally:
        engine.dispose()
    with pytest.raises(StoreError, match="adatune db upgrade"):
        open_store(store_url)

    code, out, err = cli(capsys, "db", "upgrade", "--store", store_url)
    assert code == 0, err
    assert "from revision 0001 to 0002" in out
    assert version_rows(store_url) == ["0002"] == [migrate.head_revision()]
    assert schema_diff(store_url) == []
    with open_store(store_url) as store:
        detail = store.get_run(1)
        assert [e.epoch for e in detail.epochs] == [1, 2]
        assert [e.lr_mean for e in detail.epochs] == [0.04, 0.04]
        assert [s.lr for s in detail.steps] == [0.05]
        assert [(g.epoch, g.lrs) for g in store.get_step_lrs(1)] == [(1, None), (2, None)]
        record = EpochRecord(epoch=3, lr=0.05, lr_mean=0.05, mu=None, hyper_lr=None,
                             train_loss=1.0, train_acc=None, val_loss=1.0, val_acc=None,
                             test_loss=None, test_acc=None, elapsed_s=4.0)
        store.record_epoch(1, record, [StepRecord(step=5, epoch=3, lr=0.05, mu=None,
                                                  hyper_lr=None, hypergradient=None,
                                                  train_loss=1.0)], lrs=[0.05, 0.025])
        assert store.get_step_lrs(1)[-1].lrs == (0.05, 0.025)
    command.downgrade(cfg, "0001")  # and back: the column goes, the rows stay
    engine = create_engine(store_url)
    try:
        columns = {c["name"] for c in inspect(engine).get_columns("adatune_epochs")}
        assert "step_lrs" not in columns
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM adatune_epochs")).scalar() == 3
    finally:
        engine.dispose()
