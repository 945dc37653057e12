"""The SQLite index of a runs folder (``<runs>/.peftkit-index.sqlite``): a cache of every run's
summary and flat key/value fields, so that listing, filtering and sorting many runs reads one small
database instead of every run's files.

The run folders stay the source of truth. :meth:`RunIndex.sync` compares each folder's signature
(size and modification time of run.json, config.yaml and metrics.jsonl) with the one indexed and
re-reads only the folders that changed; folders that are gone leave the index. A missing index is
built from the folders; one that SQLite cannot read, fails ``PRAGMA quick_check`` or has another
schema version is discarded and rebuilt. A runs folder that cannot be written (read-only media)
gets an in-memory index.

Several processes may train into, list and remove from the same runs folder at once: the database
is in WAL mode (readers never block the writer), every write is one ``BEGIN IMMEDIATE``
transaction, and a busy database is waited for (up to 60 s) rather than failed. WAL needs a local
file system; on a network file system keep the runs folder local or expect lock errors.

>>> index = RunIndex("runs")                                             # doctest: +SKIP
>>> [run.id for run in index.select(where=["adapter.r=16"], sort="-eval.loss")]  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from typing import Any, Iterator, Optional

from . import records
from .records import Run, dumps

INDEX_FILE = ".peftkit-index.sqlite"
SCHEMA_VERSION = "1"
BUSY_TIMEOUT_S = 60.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (id TEXT PRIMARY KEY, signature TEXT NOT NULL, started TEXT, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS fields (id TEXT NOT NULL, key TEXT NOT NULL, text TEXT, num REAL,
                                   PRIMARY KEY (id, key)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS fields_by_key ON fields (key, num, text);
"""


def encode(value: Any) -> tuple[str, Optional[float]]:
    """A field value as ``(text, number)``: numbers keep both (so ``adapter.r=16`` compares as a
    number), booleans are ``true``/``false``, lists and mappings canonical JSON."""
    if isinstance(value, bool):
        return ("true" if value else "false"), None
    if isinstance(value, (int, float)):
        return dumps(value), float(value)
    if isinstance(value, str):
        return value, None
    return dumps(value), None


class RunIndex:
    """The index of the runs folder ``runs_dir`` (which must exist)."""

    def __init__(self, runs_dir: str):
        self.runs_dir = os.path.abspath(runs_dir)
        self.path = os.path.join(self.runs_dir, INDEX_FILE)
        self.rebuilt = False  # True when this instance found the index missing or broken
        self.conn = self._open()

    # ------------------------------------------------------------------------------- opening
    def _connect(self, path: str) -> sqlite3.Connection:
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)  # explicit transactions
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        if path != ":memory:":
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
        return conn

    def _open(self) -> sqlite3.Connection:
        existed = os.path.exists(self.path)
        for attempt in range(2):
            conn = None
            try:
                conn = self._connect(self.path)
                self._check(conn)
                self.rebuilt = attempt > 0 or not existed
                return conn
            except sqlite3.OperationalError as e:
                if conn is not None:
                    conn.close()
                if "locked" in str(e):  # another process held it past the busy timeout: not broken
                    raise
                return self._in_memory()  # cannot create or write it here (read-only folder)
            except sqlite3.DatabaseError:  # not a database, malformed, failed its check: rebuild
                if conn is not None:
                    conn.close()
                self._discard()
        raise sqlite3.DatabaseError(f"{self.path}: cannot create the runs index")

    def _in_memory(self) -> sqlite3.Connection:
        conn = self._connect(":memory:")
        self._check(conn)
        self.path, self.rebuilt = ":memory:", True
        return conn

    def _check(self, conn: sqlite3.Connection) -> None:
        """Create the schema, or raise ``sqlite3.DatabaseError`` for an index that must be rebuilt."""
        row = conn.execute("PRAGMA quick_check").fetchone()
        if row is None or row[0] != "ok":
            raise sqlite3.DatabaseError(f"index failed its integrity check: {row}")
        with self._transaction(conn):
            for statement in filter(str.strip, SCHEMA.split(";")):
                conn.execute(statement)
            found = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if found is None:
                conn.execute("INSERT INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
            elif found[0] != SCHEMA_VERSION:  # written by another peftkit version: start afresh
                conn.execute("DELETE FROM runs")
                conn.execute("DELETE FROM fields")
                conn.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (SCHEMA_VERSION,))

    def _discard(self) -> None:
        """Remove a broken index (and its WAL files); the next sync refills a new one."""
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.path + suffix)

    @staticmethod
    @contextlib.contextmanager
    def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
        """One write transaction; IMMEDIATE takes the write lock at once, so two writers queue
        (busy timeout) instead of deadlocking on a lock upgrade."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "RunIndex":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------------------- writing
    def put(self, runs: list[tuple[Run, str]]) -> None:
        """Store ``(run, signature)`` pairs, replacing what was indexed for them."""
        rows = []
        for run, sig in runs:
            rows.append((run, sig, [(run.id, key, *encode(value)) for key, value in run.fields().items()]))
        with self._transaction(self.conn):
            for run, sig, fields in rows:
                self.conn.execute("INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?)",
                                  (run.id, sig, run.info.get("started"), dumps(records.to_json(run))))
                self.conn.execute("DELETE FROM fields WHERE id = ?", (run.id,))
                self.conn.executemany("INSERT INTO fields VALUES (?, ?, ?, ?)", fields)

    def forget(self, run_ids: list[str]) -> None:
        with self._transaction(self.conn):
            for run_id in run_ids:
                self.conn.execute("DELETE FROM runs WHERE id = ?", (run_id,))
                self.conn.execute("DELETE FROM fields WHERE id = ?", (run_id,))

    def update(self, run_dir: str) -> None:
        """Index (or re-index) one run folder now: what ``peftkit train`` calls as a run starts and ends."""
        sig = records.signature(run_dir)
        self.put([(records.read_run(run_dir), sig)])

    def sync(self) -> int:
        """Bring the index in line with the folders; returns how many runs were (re-)read or dropped."""
        on_disk = {}
        for name in os.listdir(self.runs_dir):
            path = os.path.join(self.runs_dir, name)
            if not name.startswith(".") and records.is_run_dir(path):
                on_disk[name] = records.signature(path)  # taken before reading: a change meanwhile shows next time
        known = dict(self.conn.execute("SELECT id, signature FROM runs").fetchall())
        stale = [name for name, sig in on_disk.items() if known.get(name) != sig]
        gone = [name for name in known if name not in on_disk]
        if stale:
            self.put([(records.read_run(os.path.join(self.runs_dir, n)), on_disk[n]) for n in stale])
        if gone:
            self.forget(gone)
        return len(stale) + len(gone)

    # ------------------------------------------------------------------------------- reading
    def ids(self) -> list[str]:
        return [row[0] for row in self.conn.execute("SELECT id FROM runs ORDER BY started, id")]

    def keys(self) -> list[str]:
        return [row[0] for row in self.conn.execute("SELECT DISTINCT key FROM fields ORDER BY key")]

    def load(self, run_ids: Optional[list[str]] = None) -> list[Run]:
        """Runs by id (in that order), or all of them oldest first."""
        if run_ids is None:
            rows = self.conn.execute("SELECT record FROM runs ORDER BY started, id").fetchall()
            return [records.from_json(json.loads(r[0])) for r in rows]
        found = {}
        for run_id in run_ids:
            row = self.conn.execute("SELECT record FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row:
                found[run_id] = records.from_json(json.loads(row[0]))
        return [found[i] for i in run_ids if i in found]

    def query(self, sql_where: str, params: list[Any], order: str, order_params: list[Any], joins: str) -> list[Run]:
        """Runs matching a WHERE clause over ``runs`` (see :mod:`peftkit.tracking.query`)."""
        sql = f"SELECT runs.record FROM runs {joins} WHERE {sql_where} ORDER BY {order}"
        rows = self.conn.execute(sql, order_params + params).fetchall()
        return [records.from_json(json.loads(r[0])) for r in rows]

    def integrity(self) -> str:
        return self.conn.execute("PRAGMA integrity_check").fetchone()[0]
