"""The command starts light: which modules each command loads, and input checked before torch.

A behaviour check, not a timing (the timings are in benchmarks/cli_startup.py):
a fresh interpreter imports the CLI, runs commands in-process through
``adatune_cli.main.main`` one after the other, and records after each which of
the heavy modules are in ``sys.modules``. The first command that loads one is
the one that failed.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from adatune.catalog import check_dataset_files
from adatune.errors import ConfigError, DatasetError
from adatune.running.preflight import check_writable_dir

ROOT = Path(__file__).resolve().parent.parent
_NO_MODULE = "adatune_no_such_module"
_PASSWORD = "s3cret-pw"
TRAINING = ("torch", "torchvision", "sklearn", "adatune.methods.tuners.hypergradient",
            "adatune.running.engine")
HEAVY = (*TRAINING, "plotly", "optuna", "sqlalchemy", "alembic")

_RUNNER = textwrap.dedent("""
    import contextlib, io, json, os, sys

    WATCH = json.loads(sys.argv[1])
    before = [m for m in WATCH if m in sys.modules]
    from adatune_cli.main import main

    results = []
    for case in json.loads(sys.stdin.read()):
        os.environ.update(case.get("env", {}))
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(case["argv"])
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
        for key in case.get("env", {}):
            del os.environ[key]
        results.append({"code": code, "stdout": out.getvalue(), "stderr": err.getvalue(),
                        "loaded": [m for m in WATCH if m in sys.modules]})
    import adatune
    adatune.MARTHE  # the control: a tuner does load torch, and this check sees it
    print(json.dumps({"before": before, "results": results,
                      "control": [m for m in WATCH if m in sys.modules]}))
""")


def _run_in_one_process(cases: list[dict], cwd: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "ADATUNE_STORE"}
    proc = subprocess.run([sys.executable, "-c", _RUNNER, json.dumps(HEAVY)],
                          input=json.dumps(cases), capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def _run_count(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return db.execute("SELECT count(*) FROM adatune_runs").fetchone()[0]


def _dump(path: Path) -> str:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return "\n".join(db.iterdump())


@pytest.fixture(scope="module")
def place(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a store of 3 runs, a store of a newer schema and some bad paths."""
    from adatune.report.synthetic import record_details, synthetic_details
    from adatune.store import VERSION_TABLE, open_store

    d = tmp_path_factory.mktemp("startup")
    with open_store(d / "good.db") as store:
        record_details(store, synthetic_details(3, 4, methods=("marthe", "hd", "cosine"),
                                                steps_per_epoch=2))
    with open_store(d / "newer.db"):
        pass
    with contextlib.closing(sqlite3.connect(d / "newer.db")) as db:
        with db:  # as if a later adatune had migrated it
            db.execute(f"UPDATE {VERSION_TABLE} SET version_num = 'f00dfeedbeef'")
    (d / "no-data").mkdir()
    (d / "a-file").write_text("not a folder\n")
    (d / "a-folder").mkdir()
    return d


def _cases(d: Path) -> list[tuple[str, dict, tuple[str, ...]]]:
    """(label, case, modules allowed) in the order they run (one process)."""
    good, newer = str(d / "good.db"), str(d / "newer.db")
    light = ("plotly", "optuna", *TRAINING)
    at_once = (*light, "alembic")  # a store is opened and classified without Alembic
    bare = (*at_once, "sqlalchemy")

    def c(label: str, *argv: str, code: int = 0, forbid: tuple[str, ...] = light,
          err: str | None = None, env: dict[str, str] | None = None):
        return label, {"argv": list(argv), "code": code, "err": err, "env": env or {}}, forbid

    return [
        c("--help", "--help", forbid=bare),
        c("--version", "--version", forbid=bare),
        c("train --help", "train", "--help", forbid=bare),
        c("sweep --show-space", "sweep", "--method", "marthe", "--show-space", forbid=bare),
        c("completion of a command name", env={"_ADATUNE_COMPLETE": "complete_bash",
                                               "COMP_WORDS": "adatune ru", "COMP_CWORD": "1"},
          forbid=bare),
        # bad input that needs no store: refused before SQLAlchemy too (the user's own
        # parts, the peers, the bounds, what --resume may be given with)
        c("train --loss nope", "train", "--loss", "nope", "--store", good, code=2,
          err="unknown loss 'nope'", forbid=bare),
        c("train --model not a path", "train", "--model", "not a path", "--store", good,
          code=2, err="invalid --model", forbid=bare),
        c("train --model of a missing module", "train", "--model", f"{_NO_MODULE}:make",
          "--store", good, code=2, err=f"no module named '{_NO_MODULE}'", forbid=bare),
        c("train --data of a missing module", "train", "--data", f"{_NO_MODULE}.sub:load",
          "--store", good, code=2, err=f"no module named '{_NO_MODULE}'", forbid=bare),
        c("train --loss of a missing module", "train", "--loss", f"{_NO_MODULE}:fn", "--store",
          good, code=2, err=f"no module named '{_NO_MODULE}'", forbid=bare),
        c("train --network with --model", "train", "--network", "mlp", "--model", "m:f",
          "--store", good, code=2, err="not both", forbid=bare),
        c("train --workers 9999", "train", "--workers", "9999", "--store", good, code=2,
          err="workers", forbid=bare),
        c("train --seed -1", "train", "--seed", "-1", "--store", good, code=2, err="seed",
          forbid=bare),
        c("baseline --method nope", "baseline", "--method", "nope", "--store", good, code=2,
          err="unknown method 'nope'", forbid=bare),
        c("baseline --method marthe", "baseline", "--method", "marthe", "--store", good,
          code=2, err="is a tuner", forbid=bare),
        c("baseline --method prodigy --momentum", "baseline", "--method", "prodigy",
          "--momentum", "0.5", "--store", good, code=2, err="momentum does not apply",
          forbid=bare),
        c("schedule export --help", "schedule", "export", "--help", forbid=bare),
        c("baseline --lr-scheduler replay without a source", "baseline", "--lr-scheduler",
          "replay", "--store", good, code=2, err="needs --from-run RUN_ID or --from-file",
          forbid=bare),
        c("baseline --from-run without replay", "baseline", "--from-run", "1", "--store", good,
          code=2, err="--from-run needs --lr-scheduler replay", forbid=bare),
        c("baseline --lr-scheduler replay --t-0", "baseline", "--lr-scheduler", "replay",
          "--from-run", "1", "--t-0", "3", "--store", good, code=2,
          err="--t-0: for the built-in schedules", forbid=bare),
        c("baseline --resume with --from-run", "baseline", "--resume", "1", "--from-run", "2",
          "--store", good, code=2, err="--from-run would change it", forbid=bare),
        c("sweep --method nope", "sweep", "--method", "nope", "--store", good, code=2,
          err="unknown method 'nope'", forbid=bare),
        c("bench --batch-size 0", "bench", "--batch-size", "0", code=2, err="batch_size",
          forbid=bare),
        # a device this machine lacks (MPS: only Apple silicon has it), before store or torch
        *([c("train --device mps", "train", "--device", "mps", "--store", str(d / "mps.db"),
             code=2, err="--device mps", forbid=bare)] if sys.platform != "darwin" else []),
        c("train --resume with --lr", "train", "--resume", "1", "--lr", "0.1", "--store", good,
          code=2, err="--resume 1 continues the run as it was recorded", forbid=bare),
        # bad input: rejected before torch (and without writing a run)
        c("train --lr -1", "train", "--lr", "-1", "--store", good, code=2, err="lr"),
        c("train --network nope", "train", "--network", "nope", "--store", good, code=2,
          err="unknown network 'nope'"),
        c("baseline --lr-scheduler nope", "baseline", "--lr-scheduler", "nope", "--store", good,
          code=2, err="unknown lr scheduler"),
        c("find-alpha --factor 0.5", "find-alpha", "--factor", "0.5", "--store", good, code=2,
          err="factor"),
        c("find-alpha --tuner cosine", "find-alpha", "--tuner", "cosine", "--store", good,
          code=2, err="baseline schedule"),
        c("sweep --trials 0", "sweep", "--method", "marthe", "--trials", "0", "--store", good,
          code=2, err="trials"),
        c("sweep --space missing", "sweep", "--method", "marthe", "--space",
          str(d / "missing.toml"), "--store", good, code=2, err="cannot read the space file"),
        c("train on missing mnist files", "train", "--dataset", "mnist", "--data-dir",
          str(d / "no-data"), "--store", good, code=2, err="mnist not found"),
        c("find-alpha on missing cifar10 files", "find-alpha", "--network", "resnet18",
          "--dataset", "cifar10", "--data-dir", str(d / "no-data"), "--store", good, code=2,
          err="cifar10 not found"),
        c("train --checkpoint-dir under a file", "train", "--checkpoint-dir",
          str(d / "a-file" / "runs"), "--store", good, code=2, err="not a directory"),
        c("train, store of a newer schema", "train", "--store", newer, code=2,
          err="newer adatune", forbid=at_once),
        c("find-alpha, store of a newer schema", "find-alpha", "--store", newer, code=2,
          err="newer adatune", forbid=at_once),
        c("sweep, store of a newer schema", "sweep", "--method", "hd", "--store", newer,
          code=2, err="newer adatune", forbid=at_once),
        c("baseline, store is a folder", "baseline", "--store", str(d / "a-folder"), code=2,
          err="is a directory"),
        c("train --resume of an unknown run", "train", "--resume", "999", "--store", good,
          code=2, err="no run with id 999"),
        c("train --resume --epochs of an unknown run", "train", "--resume", "999", "--epochs",
          "30", "--store", good, code=2, err="no run with id 999", forbid=at_once),
        c("baseline --resume of an unknown run", "baseline", "--resume", "999", "--store", good,
          code=2, err="no run with id 999"),
        c("train --resume of a completed run, too few --epochs", "train", "--resume", "1",
          "--epochs", "3", "--store", good, code=2, err="already completed (4 epochs)",
          forbid=at_once),
        c("train --resume from a missing store", "train", "--resume", "1", "--store",
          str(d / "missing.db"), code=2, err="no store at", forbid=at_once),
        c("train, a PostgreSQL store that refuses", "train", "--store",
          f"postgresql://someone:{_PASSWORD}@127.0.0.1:1/adatune", code=2, err=":***@",
          forbid=at_once),
        c("runs list of a missing store", "runs", "list", "--store", str(d / "missing.db"),
          code=2, err="no store at", forbid=at_once),
        c("schedule export of a missing store", "schedule", "export", "1", "--store",
          str(d / "missing.db"), code=2, err="no store at", forbid=at_once),
        c("report table of a missing store", "report", "table", "--store",
          str(d / "missing.db"), code=2, err="no store at", forbid=at_once),
        # the store commands
        c("runs list", "runs", "list", "--store", good, forbid=at_once),
        c("runs list --json", "runs", "list", "--json", "--store", good),
        c("runs show", "runs", "show", "1", "--store", good, forbid=at_once),
        c("runs show --json", "runs", "show", "1", "--json", "--store", good),
        c("runs delete", "runs", "delete", "3", "--yes", "--store", good),
        c("db current", "db", "current", "--store", good),
        c("db check", "db", "check", "--store", good),
        c("db upgrade of a new store", "db", "upgrade", "--store", str(d / "fresh.db")),
        c("report table", "report", "table", "--store", good),
        c("report table --json", "report", "table", "--json", "--store", good),
        # last: it may load plotly
        c("report html", "report", "html", "--store", good, "-o", str(d / "report.html"),
          forbid=TRAINING),
    ]


@pytest.fixture(scope="module")
def outcome(place: Path) -> tuple[list, dict]:
    cases = _cases(place)
    runs_before = _run_count(place / "good.db")
    newer_before = _dump(place / "newer.db")
    got = _run_in_one_process([case for _, case, _ in cases], place)
    got["runs_before"], got["runs_after"] = runs_before, _run_count(place / "good.db")
    got["newer_unchanged"] = _dump(place / "newer.db") == newer_before
    got["missing_store_made"] = (place / "missing.db").exists() or (place / "mps.db").exists()
    return cases, got


def test_the_interpreter_starts_without_the_heavy_modules(outcome) -> None:
    _, got = outcome
    assert got["before"] == []
    assert len(got["results"]) == len(outcome[0])


@pytest.mark.parametrize("index", range(len(_cases(Path("/x")))),
                         ids=[label for label, _, _ in _cases(Path("/x"))])
def test_each_command_loads_only_what_it_needs(outcome, index: int) -> None:
    cases, got = outcome
    label, case, forbid = cases[index]
    result = got["results"][index]
    assert result["code"] == case["code"], (label, result["stdout"][-500:], result["stderr"])
    loaded = [m for m in forbid if m in result["loaded"]]
    assert not loaded, f"`adatune {' '.join(case['argv'])}` loaded {loaded}"
    if case["err"] is not None:  # one clear line, no traceback
        lines = result["stderr"].strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("adatune: error: "), result["stderr"]
        assert case["err"] in lines[0]


def test_what_the_light_commands_print(outcome) -> None:
    cases, got = outcome
    by_label = {label: result for (label, _, _), result in zip(cases, got["results"])}
    assert "train" in by_label["--help"]["stdout"] and "--install-completion" in (
        by_label["--help"]["stdout"])
    assert by_label["--version"]["stdout"].startswith("adatune ")
    assert "[lr]" in by_label["sweep --show-space"]["stdout"]
    assert by_label["completion of a command name"]["stdout"].split() == ["runs"]
    listed = json.loads(by_label["runs list --json"]["stdout"])
    assert [r["id"] for r in listed] == [1, 2, 3]
    assert json.loads(by_label["runs show --json"]["stdout"])["epochs"][-1]["epoch"] == 4
    assert "revision" in by_label["db current"]["stdout"]
    assert by_label["db check"]["stdout"].splitlines()[-1].startswith("ok (")
    assert "created the store schema" in by_label["db upgrade of a new store"]["stdout"]
    groups = json.loads(by_label["report table --json"]["stdout"])
    assert {g["method"] for g in groups} == {"marthe", "hd"}  # run 3 (cosine) was deleted
    assert "wrote" in by_label["report html"]["stdout"]


def test_bad_input_writes_nothing(outcome) -> None:
    _, got = outcome
    assert got["runs_after"] == got["runs_before"] - 1  # only `runs delete 3` changed it
    assert got["newer_unchanged"]
    assert not got["missing_store_made"]  # the read-only commands created no store


def test_no_password_is_printed(outcome) -> None:
    _, got = outcome
    assert all(_PASSWORD not in r["stderr"] + r["stdout"] for r in got["results"])


def test_the_check_sees_torch_once_a_tuner_is_touched(outcome) -> None:
    _, got = outcome
    assert "torch" in got["control"]
    assert "adatune.methods.tuners.hypergradient" in got["control"]


def test_light_modules_never_import_torch() -> None:
    light = ["adatune", "adatune.errors", "adatune.checks", "adatune.catalog",
             "adatune.imports", "adatune.redact", "adatune.methods",
             "adatune.methods.hyper_update", "adatune.methods.peers",
             "adatune.methods.schedules", "adatune.methods.schedule_file",
             "adatune.methods.tuners", "adatune.methods.tuners.settings", "adatune.data",
             "adatune.running", "adatune.running.config", "adatune.running.losses",
             "adatune.running.runtypes", "adatune.running.preflight", "adatune.running.folder",
             "adatune.running.deletion", "adatune.running.signals",
             "adatune.running.checkpoint", "adatune.search", "adatune.search.findalpha",
             "adatune.search.space", "adatune.search.sweep", "adatune.bench",
             "adatune.bench.config", "adatune.store.records", "adatune.report",
             "adatune.report.info", "adatune.report.table", "adatune.report.select",
             "adatune.report.synthetic", "adatune.replay", "adatune.signals",
             "adatune.checkpoint"]
    store = ["adatune.store", "adatune.store.repository", "adatune.store.migrate",
             "adatune.store.health"]
    script = (f"import sys, json\nfor m in {light!r}: __import__(m)\n"
              f"first = [m for m in {list(HEAVY)!r} if m in sys.modules]\n"
              f"for m in {store!r}: __import__(m)\n"
              f"print(json.dumps([first, [m for m in {list(HEAVY)!r} if m in sys.modules]]))")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, check=True)
    first, with_store = json.loads(proc.stdout)
    assert first == [], f"light modules loaded {first}"
    # The store's SQL layer, but not Alembic (a third of a store command's start): import
    # Alembic inside the functions that migrate or classify a store not at head.
    assert with_store == ["sqlalchemy"], with_store


def test_public_names_load_on_first_use() -> None:
    import adatune
    import adatune.report
    import adatune.store
    from adatune import MARTHE, ReplayLR
    from adatune.methods.replay import ReplayLR as replay_lr
    from adatune.methods.tuners import MARTHE as tuners_marthe

    assert MARTHE is tuners_marthe and ReplayLR is replay_lr
    for package in (adatune, adatune.store, adatune.report):
        for name in package.__all__:
            assert getattr(package, name) is not None
            assert name in dir(package)
    assert isinstance(adatune.__version__, str)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        adatune.nope  # noqa: B018


def test_the_public_module_paths_name_the_library_s_objects() -> None:
    """``adatune.distributed``, ``.replay``, ``.signals`` and ``.checkpoint`` stay importable
    for users (the docs name them); each name there is the library's own object."""
    import adatune.checkpoint
    import adatune.distributed
    import adatune.replay
    import adatune.signals
    from adatune.methods import schedule_file
    from adatune.running import checkpoint, distributed, signals

    for public, home in ((adatune.checkpoint, checkpoint), (adatune.distributed, distributed),
                         (adatune.replay, schedule_file), (adatune.signals, signals)):
        for name in public.__all__:
            assert getattr(public, name) is getattr(home, name), (public.__name__, name)


def test_the_revisions_read_from_the_files_are_alembics(tmp_path: Path, monkeypatch,
                                                       later_release) -> None:
    from adatune.store import migrate

    def alembics() -> tuple[str, frozenset[str]]:
        script = migrate._script()
        return migrate.head_revision(script), frozenset(r.revision for r in script.walk_revisions())

    assert migrate.revisions_from_files() == alembics()
    later_release()
    assert migrate.revisions_from_files() == alembics()
    assert migrate.revisions_from_files()[0] == "9000"
    two = tmp_path / "two_heads"
    (two / "versions").mkdir(parents=True)
    for rev in ("a1", "b2"):
        (two / "versions" / f"{rev}.py").write_text(f'revision = "{rev}"\ndown_revision = None\n')
    monkeypatch.setattr(migrate, "migrations_location", lambda: str(two))
    assert migrate.revisions_from_files() is None  # not sure: Alembic decides (and refuses)


def test_opening_classifies_like_alembic(tmp_path: Path, later_release) -> None:
    """Each state open_store decides without Alembic is the state Alembic gives."""
    from sqlalchemy import create_engine

    from adatune.store import VERSION_TABLE, migrate, open_store

    path = tmp_path / "s.db"
    with open_store(path):
        pass
    engine = create_engine(f"sqlite:///{path}")

    def both(revision: str) -> tuple[migrate.SchemaState | None, migrate.SchemaState]:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"UPDATE {VERSION_TABLE} SET version_num = '{revision}'")
        with engine.connect() as conn:
            return migrate._classify_from_files(conn, "s"), migrate.classify(conn, "s")

    try:
        head = migrate.head_revision()
        fast, alembic = both(head)
        assert fast == alembic and alembic.state == "current"
        fast, alembic = both("f00dfeedbeef")  # written by a later adatune
        assert fast == alembic and alembic.state == "newer"
        later_release()  # this adatune is the later one now
        fast, alembic = both(head)
        assert fast == alembic and alembic.state == "older"
    finally:
        engine.dispose()


def test_checkpoint_dir_must_be_a_writable_folder(tmp_path: Path, read_only) -> None:
    check_writable_dir(tmp_path, "checkpoint_dir")
    check_writable_dir(tmp_path / "new" / "deeper", "checkpoint_dir")  # created later
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is not a directory"):
        check_writable_dir(tmp_path / "file" / "runs", "checkpoint_dir")
    locked = tmp_path / "locked"
    locked.mkdir()
    with read_only(locked), pytest.raises(ConfigError, match="is not writable"):
        check_writable_dir(locked / "runs", "checkpoint_dir")


def test_missing_dataset_files_are_found_before_reading(tmp_path: Path) -> None:
    from adatune.catalog import DATASETS, MNIST_FILES
    from adatune.data.datasets import load_splits

    folder = tmp_path / DATASETS["mnist"].folder
    with pytest.raises(DatasetError) as early:
        check_dataset_files("mnist", tmp_path)
    with pytest.raises(DatasetError) as loading:
        load_splits("mnist", data_dir=tmp_path)
    assert str(early.value) == str(loading.value)  # the loader would have said the same
    check_dataset_files("mnist", tmp_path, download=True)  # fetched later
    check_dataset_files("digits", tmp_path)  # embedded
    folder.mkdir(parents=True)
    for name in MNIST_FILES[:-1]:
        (folder / name).write_bytes(b"")
    (folder / f"{MNIST_FILES[-1]}.gz").write_bytes(b"")  # the distributed form counts
    check_dataset_files("mnist", tmp_path)
    with pytest.raises(DatasetError, match="cifar10 not found"):
        check_dataset_files("cifar_10", tmp_path)
