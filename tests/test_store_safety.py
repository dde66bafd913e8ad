"""Stores under hostile or unlucky conditions: secrets in URLs, missing, half-made,
damaged and unversioned stores, and two processes reopening one run."""

from __future__ import annotations

import json
import os
import resource
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from adatune.errors import RunBusy, StoreError
from adatune.redact import mask_secrets
from adatune.running.config import TrainConfig
from adatune.store import VERSION_TABLE, NewRun, open_store
from adatune.store import health as store_health
from adatune.store.migrate import head_revision
from tests._cli import cli

SECRET = "SECRETPW"


def one_error_line(code: int, err: str, *fragments: str) -> str:
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("adatune: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def new_run(**config) -> NewRun:
    return NewRun(kind="train", method="hd", optimizer="sgd", network="mlp", dataset="digits",
                  seed=0, config=config)


# ------------------------------------------------------------------ secrets
@pytest.mark.parametrize("raw, shown", [
    ("postgresql://u:SECRETPW@h/db", "postgresql://u:***@h/db"),
    ("postgresql+psycopg://u:SEC@RETPW@h:5432/db", "postgresql+psycopg://u:***@h:5432/db"),
    ("postgresql://u:SEC/RETPW@h/db", "postgresql://u:***@h/db"),
    ("post-gres://u:SECRETPW@127.0.0.1:1/db", "post-gres://u:***@127.0.0.1:1/db"),
    ("postgresql://u@h/db?password=SECRETPW&connect_timeout=2",
     "postgresql://u@h/db?password=***&connect_timeout=2"),
    ("postgresql://h/db?sslmode=require&sslpassword=SECRETPW",
     "postgresql://h/db?sslmode=require&sslpassword=***"),
    ("url 'mysql://root:SECRETPW@localhost' failed", "url 'mysql://root:***@localhost' failed"),
    ("&amp;password=SECRETPW&amp;x=1", "&amp;password=***&amp;x=1"),
])
def test_mask_secrets_masks_passwords_in_any_text(raw: str, shown: str) -> None:
    assert mask_secrets(raw) == shown
    assert mask_secrets(shown) == shown  # masking twice changes nothing


@pytest.mark.parametrize("plain", [
    "http://example.org:8080/x", "sqlite:////tmp/a.db", "/data/run:1/x@y", "no url at all",
    "postgresql://user@host/db",
])
def test_mask_secrets_leaves_text_without_passwords_alone(plain: str) -> None:
    assert mask_secrets(plain) == plain


@pytest.mark.parametrize("url, fragment", [
    (f"post-gres://u:{SECRET}@127.0.0.1:1/db", "invalid store URL"),
    (f"postgresql+psycopg://u:{SECRET}@127.0.0.1:abc/db", "the port is not a number"),
    (f"postgresql+psycopg://u@127.0.0.1:1/db?password={SECRET}&connect_timeout=5",
     "the store postgresql+psycopg://u"),
    (f"postgresql+psycopg://u:{SECRET}@127.0.0.1:1/db?connect_timeout=5",
     "the store postgresql+psycopg://u"),
])
@pytest.mark.parametrize("command", [["runs", "list"], ["train", "--epochs", "1"],
                                     ["db", "current"], ["report", "table"]])
def test_a_store_url_password_is_never_printed(workdir, capsys, monkeypatch, url, fragment,
                                               command) -> None:
    monkeypatch.setenv("ADATUNE_STORE", url)
    code, out, err = cli(capsys, *command)
    line = one_error_line(code, err)
    assert SECRET not in out + err
    assert fragment in line
    assert "***" in line


def test_runs_show_and_the_report_mask_urls_recorded_in_a_run(workdir, capsys) -> None:
    url = f"postgresql://alice:{SECRET}@db.example.org/runs?password={SECRET}"
    with open_store("adatune.db") as db:
        config = TrainConfig(method="hd", data_dir=url, extra={"note": url}).to_dict()
        run_id = db.create_run(new_run(**config))
        db.finish_run(run_id, "failed", error=f"could not reach {url}")
    for args in (["runs", "show", str(run_id)], ["runs", "show", str(run_id), "--json"],
                 ["runs", "list", "--json"]):
        code, out, err = cli(capsys, *args)
        assert code == 0, err
        assert SECRET not in out + err
        if "show" in args:
            assert "alice:***@db.example.org" in out
    code, out, err = cli(capsys, "report", "html", "-o", "r.html")
    assert code == 0, err
    page = Path("r.html").read_text()
    assert "alice:***@db.example.org" in page and SECRET not in page


# ------------------------------------------------------- read-only commands
READ_ONLY = [
    ["runs", "list"], ["runs", "list", "--json"], ["runs", "show", "1"],
    ["runs", "delete", "5", "--yes"], ["report", "table"], ["report", "html"],
    ["db", "current"], ["db", "check"],
]


@pytest.mark.parametrize("args", READ_ONLY, ids=" ".join)
def test_read_only_commands_never_create_a_store(workdir, capsys, args) -> None:
    code, out, err = cli(capsys, *args)
    one_error_line(code, err, "no store at")
    assert list(workdir.iterdir()) == []


def test_read_only_commands_do_not_create_tables_in_an_empty_database(
        postgres_url, capsys, monkeypatch) -> None:
    monkeypatch.setenv("ADATUNE_STORE", postgres_url)
    for args in (["runs", "list"], ["runs", "show", "1"], ["runs", "delete", "1", "--yes"],
                 ["report", "table"]):
        code, _, err = cli(capsys, *args)
        one_error_line(code, err, "no adatune store")
    engine = create_engine(postgres_url)
    with engine.connect() as conn:
        tables = conn.execute(text("SELECT tablename FROM pg_tables "
                                   "WHERE schemaname = 'public'")).fetchall()
    engine.dispose()
    assert tables == []


def _limited(max_bytes: int):
    def apply() -> None:  # a "full disk": no file may grow beyond max_bytes
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))
    return apply


@pytest.mark.parametrize("args", [["train", "--epochs", "1"], ["db", "upgrade"]])
def test_a_store_that_cannot_be_created_leaves_no_file(tmp_path: Path, args) -> None:
    env = {k: v for k, v in os.environ.items() if k != "ADATUNE_STORE"}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    proc = subprocess.run([sys.executable, "-m", "adatune_cli", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600,
                          preexec_fn=_limited(8192))
    one_error_line(proc.returncode, proc.stderr, "cannot create the store")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_new_store_is_complete_or_absent(tmp_path: Path) -> None:
    with open_store(tmp_path / "fresh.db") as db:
        db.create_run(new_run())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh.db"]  # no leftovers
    with sqlite3.connect(tmp_path / "fresh.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("SELECT count(*) FROM adatune_runs").fetchone() == (1,)


# ---------------------------------------------------------------- damage
def _store_with_runs(path: Path, n: int = 3) -> None:
    from adatune.store import EpochRecord, StepRecord

    with open_store(path) as db:
        for r in range(n):
            run_id = db.create_run(new_run(r=r))
            for e in range(1, 31):
                db.record_epoch(run_id, EpochRecord(e, .1, .1, .9, 1e-4, 1., .5, 1., .5, 1., .5,
                                                    float(e)),
                                [StepRecord(e * 40 + k, e, .1, .9, 1e-4, .01, 1.)
                                 for k in range(40)])
    with sqlite3.connect(path) as conn:  # everything in the main file, as after a clean exit
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def _damage_page(path: Path, page: int = 4) -> None:
    size = 4096
    with open(path, "r+b") as f:
        f.seek((page - 1) * size)
        f.write(bytes((i * 37 + 11) % 256 for i in range(size)))


def test_a_damaged_store_is_refused_and_not_written(workdir, capsys) -> None:
    store = workdir / "adatune.db"
    _store_with_runs(store)
    _damage_page(store)
    before = store.read_bytes()
    for args in (["train", "--epochs", "1"], ["runs", "list"], ["runs", "delete", "1", "--yes"]):
        code, _, err = cli(capsys, *args)
        one_error_line(code, err, "is damaged", "quick_check", "adatune db check")
    assert store.read_bytes() == before
    code, out, err = cli(capsys, "db", "check")
    assert code == 1, (out, err)
    assert "problem: integrity_check:" in out and "damaged" in out
    assert store.read_bytes() == before


def test_db_check_on_a_healthy_store(store_url, capsys) -> None:
    with open_store(store_url) as db:
        db.create_run(new_run())
    code, out, err = cli(capsys, "db", "check", "--store", store_url)
    assert code == 0, (out, err)
    assert "ok (" in out and f"revision {head_revision()}" in out and "problem" not in out


def test_the_quick_check_is_skipped_above_its_size_threshold(tmp_path, monkeypatch) -> None:
    store = tmp_path / "big.db"
    _store_with_runs(store)
    _damage_page(store)
    with pytest.raises(StoreError, match="is damaged"):
        open_store(store)
    monkeypatch.setattr(store_health, "QUICK_CHECK_MAX_BYTES", store.stat().st_size - 1)
    open_store(store).close()  # not checked: as the README says, `adatune db check` is


def test_a_store_without_its_version_row_says_so(store_url, capsys) -> None:
    with open_store(store_url) as db:
        db.create_run(new_run())
    engine = create_engine(store_url)
    with engine.begin() as conn:
        conn.execute(text(f"DELETE FROM {VERSION_TABLE}"))
    for args in (["runs", "list"], ["train", "--epochs", "1"], ["db", "upgrade"]):
        code, _, err = cli(capsys, *args, "--store", store_url)
        line = one_error_line(code, err, "no schema revision", VERSION_TABLE, "db check")
        assert "already exists" not in line
    code, out, _ = cli(capsys, "db", "current", "--store", store_url)
    assert code == 0 and "revision: missing" in out
    code, out, _ = cli(capsys, "db", "check", "--store", store_url)
    assert code == 1 and "no schema revision" in out
    with engine.connect() as conn:  # nothing was changed
        assert conn.execute(text(f"SELECT count(*) FROM {VERSION_TABLE}")).scalar() == 0
        assert conn.execute(text("SELECT count(*) FROM adatune_runs")).scalar() == 1
    engine.dispose()


# ------------------------------------------------------------ run ids, CAS
@pytest.mark.parametrize("run_id", ["0", "-3", str(2**63), "99999999999999999999999"])
def test_any_run_id_is_one_line(workdir, capsys, run_id) -> None:
    with open_store("adatune.db"):
        pass
    for args in (["runs", "show", run_id], ["runs", "delete", run_id, "--yes"],
                 ["train", "--resume", run_id]):
        code, _, err = cli(capsys, *args)
        # "-3" as an argument reads as an unknown option: one line too
        one_error_line(code, err, *(() if run_id.startswith("-") else ("no run with id",)))
    code, out, err = cli(capsys, "report", "table", "--run", run_id)
    assert code == 2 and "no runs yet" in err and "Traceback" not in err  # an empty store


def test_reopening_a_run_is_a_compare_and_set(store_url) -> None:
    with open_store(store_url) as a, open_store(store_url) as b:
        run_id = a.create_run(new_run())
        a.finish_run(run_id, "interrupted", error="interrupted during epoch 2")
        seen_by_a = a.get_run(run_id).run
        seen_by_b = b.get_run(run_id).run
        a.reopen_run(run_id, seen=seen_by_a, config={"epochs": 9}, device="cpu")
        with pytest.raises(RunBusy, match="another process"):
            b.reopen_run(run_id, seen=seen_by_b)
        run = b.get_run(run_id).run
        assert (run.status, run.error, run.config, run.device) == (
            "running", None, {"epochs": 9}, "cpu")
        # a fresh look sees the new state, and may take it over
        b.reopen_run(run_id, seen=run)
        with pytest.raises(RunBusy):
            a.reopen_run(run_id, seen=seen_by_a)


def test_deleting_a_run_returns_what_was_deleted(store_url) -> None:
    with open_store(store_url) as db:
        parent = db.create_run(new_run(checkpoint_dir="/x"))
        child = db.create_run(NewRun(kind="probe", method="hd", optimizer="sgd", network="mlp",
                                     dataset="digits", seed=0, config={}, parent_id=parent))
        deleted = db.delete_run(parent)
        assert [r.id for r in deleted] == [parent, child]
        assert deleted[0].config == {"checkpoint_dir": "/x"}
        assert db.list_runs() == []


def test_store_messages_never_carry_the_password(tmp_path) -> None:
    url = f"postgresql+psycopg://u:{SECRET}@127.0.0.1:1/db?password={SECRET}&connect_timeout=5"
    with pytest.raises(StoreError) as info:
        open_store(url)
    assert SECRET not in str(info.value)
    payload = json.dumps({"error": str(info.value)})
    assert SECRET not in payload


_RACER = """
import sys, time
from pathlib import Path
from adatune.errors import RunBusy
from adatune.store import open_store

url, run_id, workdir, me = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
with open_store(url) as store:
    seen = store.get_run(run_id).run
    (workdir / f"ready-{me}").touch()
    while not (workdir / "go").exists():  # both read the run before either reopens it
        time.sleep(0.001)
    try:
        store.reopen_run(run_id, seen=seen, config={"by": me})
        print("reopened")
    except RunBusy:
        print("busy")
"""


def test_two_processes_reopening_one_run_exactly_one_wins(store_url, tmp_path) -> None:
    script = tmp_path / "racer.py"
    script.write_text(_RACER)
    with open_store(store_url) as db:
        run_id = db.create_run(new_run())
        db.finish_run(run_id, "interrupted", error="test")
    procs = [subprocess.Popen([sys.executable, str(script), store_url, str(run_id),
                               str(tmp_path), str(k)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for k in range(2)]
    from tests._wait import wait_for

    wait_for(lambda: all((tmp_path / f"ready-{k}").exists() for k in range(2)),
             what="both racers ready")
    (tmp_path / "go").touch()
    results = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), results
    said = sorted(out.strip() for out, _ in results)
    assert said == ["busy", "reopened"], results
    winner = str(["reopened" in out for out, _ in results].index(True))
    with open_store(store_url) as db:
        run = db.get_run(run_id).run
    assert run.status == "running" and run.config == {"by": winner}
