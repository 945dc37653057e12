"""Run directories: one folder per training run, the source of truth for what happened.

``<output.dir>/<run-id>/`` holds ``config.yaml`` (fully resolved), ``run.json`` (config version,
times, status, environment, seed, parent run, sweep), ``metrics.jsonl`` (one JSON object per logged
step), ``checkpoints/``, ``adapter/`` (the final adapter, peft format) and ``loss.png``. Listing,
comparing and reporting on many runs is :mod:`peftkit.tracking`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
from typing import Any, NamedTuple, Optional


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def new_run_id(name: Optional[str], method: str, config_hash: str) -> str:
    """``20261122-184500-<name or method>-<hash6>``: sortable by time, readable, unique enough."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    label = "".join(c if c.isalnum() or c in "-_" else "-" for c in (name or method.lower()))
    return f"{stamp}-{label}-{config_hash[:6]}"


def create_run_dir(output_dir: str, run_id: str) -> str:
    """Make the run folder; a clash (two runs in the same second) gets a numeric suffix."""
    from ..names import child_path

    os.makedirs(output_dir, exist_ok=True)
    path, n = child_path(output_dir, run_id, what="run folder"), 1
    while True:
        try:
            os.makedirs(path)
            return path
        except FileExistsError:
            n += 1
            path = child_path(output_dir, f"{run_id}-{n}", what="run folder")


def output_dir_problem(path: str) -> Optional[str]:
    """Why run folders cannot be made in ``path`` (a file in the way, or a folder that cannot be
    written), or None. A folder that does not exist yet is judged by its nearest existing parent."""
    path = os.path.expanduser(path)
    existing = path
    while existing and not os.path.exists(existing):
        existing = os.path.dirname(existing.rstrip(os.sep)) or "."
    if not os.path.isdir(existing):
        blocker = "" if existing == path else f" ({existing!r} is a file)"
        return f"{path!r} cannot be a folder of runs: a file is in the way{blocker}; pick another output.dir"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"cannot write into {existing!r} (permissions or a read-only file system); pick another output.dir"
    return None


def write_json_atomic(path: str, data: Any) -> None:
    """Write ``path`` through a temporary file and a rename: the old file or the new one, never half
    of either (the temporary file is removed if writing fails, e.g. on a full disk)."""
    tmp = path + ".tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, default=str)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def read_run_json(run_dir: str) -> dict[str, Any]:
    """run.json as a dict; a damaged file (not UTF-8, not JSON, not an object) is a
    :class:`~peftkit.errors.CorruptFileError` naming it."""
    from ..errors import CorruptFileError
    from ..untrusted import read_json

    path = os.path.join(run_dir, "run.json")
    data = read_json(path)
    if not isinstance(data, dict):
        raise CorruptFileError(path, f"not a JSON object (a {type(data).__name__})")
    return data


def update_run_json(run_dir: str, **fields: Any) -> dict[str, Any]:
    """Merge ``fields`` into ``run.json`` (written atomically)."""
    path = os.path.join(run_dir, "run.json")
    data = read_run_json(run_dir) if os.path.exists(path) else {}
    data.update(fields)
    write_json_atomic(path, data)
    return data


class Snapshot(NamedTuple):
    """A run's record at one moment: run.json's fields and metrics.jsonl's bytes."""

    info: dict[str, Any]
    metrics: Optional[bytes]


def snapshot(run_dir: str) -> Snapshot:
    """The record of ``run_dir`` as it is now, to :func:`restore` if what follows must not count."""
    path = os.path.join(run_dir, "metrics.jsonl")
    metrics = None
    if os.path.exists(path):
        with open(path, "rb") as f:
            metrics = f.read()
    return Snapshot(read_run_json(run_dir), metrics)


def restore(run_dir: str, snap: Snapshot) -> None:
    """Put back a :func:`snapshot` (each file atomically)."""
    write_json_atomic(os.path.join(run_dir, "run.json"), snap.info)
    if snap.metrics is not None:
        tmp = os.path.join(run_dir, "metrics.jsonl.tmp")
        with open(tmp, "wb") as f:
            f.write(snap.metrics)
        os.replace(tmp, os.path.join(run_dir, "metrics.jsonl"))


def append_metrics(run_dir: str, record: dict[str, Any]) -> None:
    """One JSON object per line; flushed at once so a killed run keeps what it logged."""
    with open(os.path.join(run_dir, "metrics.jsonl"), "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()


def read_metrics(run_dir: str, problems: Optional[list[str]] = None) -> list[dict[str, Any]]:
    """The records of ``metrics.jsonl``: JSON objects whose ``step`` (if any) is an integer. Other
    lines are skipped: the half-written last line of a killed run (or one being written while
    another process reads) silently, any other (not UTF-8, not JSON, another shape) with a note
    naming the file and line appended to ``problems``."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    records = []
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line.decode("utf-8"))
        except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            record = None
        if isinstance(record, dict) and _integral(record.get("step", 0)):
            records.append(record)
        elif problems is not None and number < len(lines):  # the last piece has no newline yet: being written
            problems.append(f"{path} line {number}: skipped (not a JSON object with an integer step)")
    return records


def _integral(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def truncate_metrics(run_dir: str, step: int) -> None:
    """On resume, drop records logged after the checkpoint's step (they will be logged again)."""
    records = [r for r in read_metrics(run_dir) if r.get("step", 0) <= step]
    tmp = os.path.join(run_dir, "metrics.jsonl.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    os.replace(tmp, os.path.join(run_dir, "metrics.jsonl"))


def plot_loss(run_dir: str) -> Optional[str]:
    """``loss.png``: the run's curves (loss, learning rate, eval metrics) against the step; None
    when nothing was logged."""
    from ..tracking.plots import plot_runs
    from ..tracking.records import read_run

    return plot_runs([read_run(run_dir)], os.path.join(run_dir, "loss.png"))
