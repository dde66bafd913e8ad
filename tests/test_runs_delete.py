"""`adatune runs delete`: the rows and the checkpoints go, or the command says where they stay."""

from __future__ import annotations

import json
from pathlib import Path

from adatune.running.folder import MARKER_FILE, RunLock
from adatune.store import open_store
from tests._cli import cli


def _folder(run_id: int, root: str = "adatune-runs") -> Path:
    return (Path(root) / f"run-{run_id}").resolve()


def test_delete_removes_the_checkpoint_folder(workdir, capsys) -> None:
    assert cli(capsys, "train", "--epochs", "1")[0] == 0
    assert cli(capsys, "baseline", "--epochs", "1", "--checkpoint-dir", "elsewhere")[0] == 0
    assert {p.name for p in _folder(1).iterdir()} >= {"last.pt", "best.pt"}
    code, out, err = cli(capsys, "runs", "delete", "1", "--yes")
    assert code == 0, err
    assert out.splitlines() == ["deleted run 1", f"removed {_folder(1)}"]
    assert not _folder(1).exists() and _folder(2, "elsewhere").is_dir()
    code, out, _ = cli(capsys, "runs", "delete", "2", "-y")
    assert code == 0 and f"removed {_folder(2, 'elsewhere')}" in out
    assert not _folder(2, "elsewhere").exists()
    with open_store("adatune.db") as db:
        assert db.list_runs() == []


def test_delete_a_search_removes_its_probes_folders(workdir, capsys) -> None:
    code, _, err = cli(capsys, "find-alpha", "--probe-epochs", "1", "--epochs", "1",
                       "--alpha-max", "1e-3")
    assert code == 0, err
    with open_store("adatune.db") as db:
        probes = [r.id for r in db.list_runs(kind="probe")]
        [search] = [r.id for r in db.list_runs(kind="find-alpha")]
    assert probes and all(_folder(p).is_dir() for p in probes)
    code, out, err = cli(capsys, "runs", "delete", str(search), "--yes")
    assert code == 0, err
    assert out.splitlines()[0] == f"deleted run {search} and its {len(probes)} child run" + (
        "s" if len(probes) > 1 else "")
    assert not any(_folder(p).exists() for p in probes)


def test_keep_checkpoints_says_where_they_stay(workdir, capsys) -> None:
    assert cli(capsys, "train", "--epochs", "1")[0] == 0
    code, out, err = cli(capsys, "runs", "delete", "1", "--yes", "--keep-checkpoints")
    assert code == 0, err
    assert out.splitlines() == ["deleted run 1", f"checkpoints kept in {_folder(1)}"]
    assert (_folder(1) / "last.pt").is_file()


def test_delete_keeps_what_is_not_the_runs(workdir, capsys) -> None:
    for _ in range(2):
        assert cli(capsys, "train", "--epochs", "1")[0] == 0
    (_folder(1) / "notes.txt").write_text("mine")
    marker = _folder(2) / MARKER_FILE  # a folder another store's run 2 wrote
    marker.write_text(json.dumps({"run_id": 2, "store": "/other/adatune.db"}))
    code, out, err = cli(capsys, "runs", "delete", "1", "--yes")
    assert code == 0, err
    assert f"kept {_folder(1)}: it holds other files: notes.txt" in out
    assert sorted(p.name for p in _folder(1).iterdir()) == ["notes.txt"]
    code, out, err = cli(capsys, "runs", "delete", "2", "--yes")
    assert code == 0 and "it belongs to run 2 of /other/adatune.db" in out
    assert (_folder(2) / "last.pt").is_file()


def test_a_run_still_training_is_not_deleted(workdir, capsys) -> None:
    assert cli(capsys, "train", "--epochs", "1")[0] == 0
    lock = RunLock(_folder(1)).acquire(1, str(workdir / "adatune.db"))
    try:  # as a live training process holds it
        code, _, err = cli(capsys, "runs", "delete", "1", "--yes")
    finally:
        lock.release()
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "is still running" in lines[0], err
    assert "nothing was deleted" in lines[0]
    with open_store("adatune.db") as db:
        assert [r.id for r in db.list_runs()] == [1]
    assert (_folder(1) / "last.pt").is_file()
