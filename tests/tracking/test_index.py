"""The SQLite index of a runs folder: built from the folders, kept in step with them, rebuilt when
missing or broken, and consistent when two processes write to it at once."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from fake_runs import make_run

from peftkit.tracking.index import INDEX_FILE, RunIndex


def ids(runs_dir) -> list[str]:
    with RunIndex(runs_dir) as index:
        index.sync()
        return index.ids()


@pytest.fixture
def runs(tmp_path) -> Path:
    folder = tmp_path / "runs"
    make_run(folder, "20261122-100000-lora-aaaaaa", started="2026-11-22T10:00:00+00:00")
    make_run(folder, "20261122-110000-lora-bbbbbb", started="2026-11-22T11:00:00+00:00", adapter={"r": 16})
    return folder


def test_index_is_built_from_the_folders_and_follows_them(runs):
    with RunIndex(runs) as index:
        assert index.rebuilt and index.sync() == 2 and index.sync() == 0  # the second sync reads nothing
        assert index.ids() == ["20261122-100000-lora-aaaaaa", "20261122-110000-lora-bbbbbb"]
        assert {"adapter.r", "eval.loss", "best.eval.loss", "status", "version", "env.packages.torch"} <= set(index.keys())
    (runs / "not-a-run").mkdir()  # folders without run.json and other files are not runs
    (runs / "notes.txt").write_text("x")
    make_run(runs, "20261122-120000-lora-cccccc", started="2026-11-22T12:00:00+00:00")
    info = json.loads((runs / "20261122-100000-lora-aaaaaa" / "run.json").read_text())
    (runs / "20261122-100000-lora-aaaaaa" / "run.json").write_text(json.dumps({**info, "status": "failed", "x": 1}))
    os.rename(runs / "20261122-110000-lora-bbbbbb", runs.parent / "moved-away")
    with RunIndex(runs) as index:
        assert not index.rebuilt and index.sync() == 3  # one new, one changed, one gone
        assert index.ids() == ["20261122-100000-lora-aaaaaa", "20261122-120000-lora-cccccc"]
        assert index.load(["20261122-100000-lora-aaaaaa"])[0].status == "failed"


@pytest.mark.parametrize("damage", ["garbage", "truncated", "old schema", "empty file"])
def test_a_broken_index_is_rebuilt_from_the_folders(runs, damage):
    expected = ids(runs)
    path = runs / INDEX_FILE
    if damage == "garbage":
        path.write_bytes(b"this is not a database" * 100)
    elif damage == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 3])
    elif damage == "old schema":
        with sqlite3.connect(path) as conn:
            conn.execute("UPDATE meta SET value = '0' WHERE key = 'schema'")
    else:
        path.write_bytes(b"")
    with RunIndex(runs) as index:
        index.sync()
        assert index.ids() == expected and index.integrity() == "ok"
    assert ids(runs) == expected


def test_a_missing_index_is_rebuilt(runs):
    expected = ids(runs)
    os.remove(runs / INDEX_FILE)
    with RunIndex(runs) as index:
        assert index.rebuilt
    assert ids(runs) == expected


def test_an_index_that_cannot_be_opened_is_kept_in_memory(runs):
    """As on a read-only runs folder (root writes anyway, so a folder in the index's place stands in)."""
    (runs / INDEX_FILE).mkdir()
    with RunIndex(runs) as index:
        index.sync()
        assert index.path == ":memory:" and len(index.ids()) == 2
    assert (runs / INDEX_FILE).is_dir()  # left as it was


def test_half_written_metrics_line_is_skipped(runs):
    run = runs / "20261122-100000-lora-aaaaaa"
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 9, "loss": 0.')  # a writer killed mid-line
    with RunIndex(runs) as index:
        index.sync()
        (found,) = index.load([run.name])
    assert found.summary["steps"] == 4


WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from fake_runs import make_run
    from peftkit.tracking.index import RunIndex
    from peftkit.tracking.query import select
    runs, tag, count = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    while not (runs / "go").exists():  # start both writers together
        time.sleep(0.01)
    index = RunIndex(runs)
    for i in range(count):
        path = make_run(runs, f"run-{tag}-{i:03d}", started=f"2026-11-22T10:00:{i % 60:02d}+00:00",
                        adapter={"r": 4 + i % 3})
        index.update(str(path))  # what `peftkit train` does as a run starts and ends
        if i % 5 == 0:
            index.sync()  # what `peftkit runs list` does, reading the other writer's runs too
            select(index, ["status=completed"], sort="-eval.loss")
    index.close()
""")


def test_two_processes_writing_at_once_keep_the_index_consistent(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    here = os.path.dirname(__file__)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([here, os.environ.get("PYTHONPATH", "")])}
    count = 25
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(runs), tag, str(count)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for tag in ("a", "b")]
    (runs / "go").write_text("")
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    folders = sorted(p.name for p in runs.iterdir() if (p / "run.json").exists())
    assert len(folders) == 2 * count
    with sqlite3.connect(runs / INDEX_FILE) as conn:  # as the writers left it, before any sync
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        indexed = sorted(r[0] for r in conn.execute("SELECT id FROM runs"))
        per_run = set(conn.execute("SELECT COUNT(*) FROM fields GROUP BY id").fetchall())
    assert indexed == folders  # every run of both writers, once
    assert len(per_run) == 1  # every run has all its fields: no half-written run
    with RunIndex(runs) as index:
        assert index.sync() == 0  # the writers left nothing stale
