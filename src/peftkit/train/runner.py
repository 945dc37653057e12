"""``peftkit train``: one config in, one tracked run folder out (see :mod:`peftkit.train.runs`).

What fails before a run folder exists, and so leaves none behind: a bad config
(:class:`~peftkit.errors.ConfigError`) and bad data (a missing or wrongly typed field, an empty
file, a sequence over ``max_seq_len`` with ``truncation: error``: a
:class:`~peftkit.train.data.DataError` naming file, row and field). Both are checked before the
model is loaded; so are an ``adapter.from`` that names no adapter of the method, and a tracker
whose package is missing. Anything later (the model cannot be loaded, a NaN loss, a crash) is recorded in
the run folder's ``run.json`` as ``status: failed`` with the error; Ctrl-C as ``interrupted``.
On resume, data problems likewise fail before ``run.json`` is touched.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import time
from typing import Any, Iterable, Optional

from . import runs, state
from .config import RunConfig, config_hash, dump_yaml, load_run_config, resolved_dict
from .model_check import check_model


def start_run(cfg: RunConfig, parent: Any = None, processes: int = 1, extra: Optional[dict] = None) -> str:
    """Create the run folder with its resolved config and ``run.json``; returns its path. ``parent``
    is the :class:`~peftkit.tracking.lineage.Parent` the adapter starts from (lineage); ``extra``
    adds fields to run.json (``sweep``, ``reproduces``)."""
    from ..tracking import env
    from ..tracking.lineage import adapter_fingerprint

    version = config_hash(cfg)
    run_id = runs.new_run_id(cfg.output.name, cfg.adapter["method"], version)
    run_dir = runs.create_run_dir(cfg.output.dir, run_id)
    dump_yaml(cfg, os.path.join(run_dir, "config.yaml"))
    runs.update_run_json(
        run_dir, run_id=os.path.basename(run_dir), name=cfg.output.name, config_hash=version, status="running",
        started=runs.now(), ended=None, seed=cfg.train.seed, parent=parent.run_id if parent else None,
        parent_path=parent.run_dir if parent else None, parent_adapter=parent.adapter_dir if parent else None,
        parent_fingerprint=adapter_fingerprint(parent.adapter_dir) if parent else None, processes=processes, environment=env.capture(),
        data=env.data_fingerprints({"train": cfg.data.train, "eval": cfg.data.eval}), **(extra or {}),
    )
    return run_dir


def resolve_parent(cfg: RunConfig) -> Any:
    """``adapter.from`` as a :class:`~peftkit.tracking.lineage.Parent` (None without it); the config
    then names the absolute adapter folder, so that the version does not depend on its spelling."""
    source = cfg.adapter.get("from")
    if not source:
        return None
    from ..tracking.lineage import resolve_parent as resolve

    parent = resolve(source, cfg.output.dir, cfg.adapter["method"])
    cfg.adapter["from"] = parent.adapter_dir
    return parent


def train_from_config(config_path: Optional[str], overrides: Iterable[str] = (), resume: Optional[str] = None,
                      extra: Optional[dict] = None) -> str:
    """Run a config file (with dotted overrides), or resume the run folder ``resume``; returns the
    run folder. The final adapter is in ``<run>/adapter`` in the peft format. ``extra`` adds fields
    to a new run's run.json (a sweep's point, the run a reproduction repeats).

    Example:
        >>> run_dir = train_from_config("examples/quickstart.yaml", ["train.max_steps=10"])  # doctest: +SKIP
    """
    from accelerate import Accelerator

    from ..tracking import trackers
    from .loop import train
    from .prepare import prepare_data

    if resume:
        cfg = load_run_config(os.path.join(resume, "config.yaml"), overrides)
        runs.read_run_json(resume)  # a damaged record fails now, before the data or the model are loaded
        run_dir, checkpoint = resume, state.intact_checkpoint(os.path.join(resume, "checkpoints"), warn=_say)
        parent = None
    else:
        cfg = load_run_config(config_path, overrides)
        check_model(cfg)  # the task fits the model, the targets exist: before any folder or weight
        run_dir, checkpoint = None, None
        parent = resolve_parent(cfg)
    trackers.check_backends(cfg.tracking.backends)
    accelerator = Accelerator(gradient_accumulation_steps=cfg.train.grad_accum, mixed_precision=cfg.train.mixed_precision)
    prepared_data = prepare_data(cfg)  # bad data fails here: no model loaded, no run folder made
    main = accelerator.is_main_process
    first_step = None  # a resumed run logs again from this step on (without a checkpoint: from 0)
    before = None  # a resumed run's record as it was, put back if the run cannot continue
    if run_dir is None:
        run_dir = start_run(cfg, parent, accelerator.num_processes, extra) if main else None
        run_dir = _share(accelerator, run_dir)
    elif main:
        first_step = int(os.path.basename(checkpoint).split("-")[1]) + 1 if checkpoint else 0
        before = runs.snapshot(run_dir)
        runs.truncate_metrics(run_dir, first_step - 1)
        runs.update_run_json(run_dir, status="running", resumed_from=checkpoint, resumed=runs.now())
    began = time.time()
    try:
        if main:
            previous = runs.read_run_json(run_dir).get("trackers") if resume else None
            opened = trackers.open_trackers(accelerator, cfg, run_dir, config_hash(cfg), previous, first_step)
            if opened:
                runs.update_run_json(run_dir, trackers=opened)
            index_run(run_dir)
        final = train(cfg, run_dir, resume_from=checkpoint, accelerator=accelerator, prepared_data=prepared_data)
    except KeyboardInterrupt:
        if main and not _kept_finished(run_dir, before, first_step):
            runs.update_run_json(run_dir, status="interrupted", ended=runs.now())
        if main:
            _closed(accelerator, run_dir, "interrupted")
        raise
    except Exception as e:
        if main and not _kept_finished(run_dir, before, first_step) and runs.read_run_json(run_dir).get("status") == "running":
            runs.update_run_json(run_dir, status="failed", error=f"{type(e).__name__}: {e}", ended=runs.now())
        if main:
            _closed(accelerator, run_dir, "failed")
        raise
    if main:
        _finish(run_dir, final, time.time() - began)
        _closed(accelerator, run_dir, "completed")
    return run_dir


def _say(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _kept_finished(run_dir: str, before: Optional[runs.Snapshot], first_step: Optional[int]) -> bool:
    """A resumed run that had completed and stopped before training a single new step keeps its
    record as it was (run.json, metrics.jsonl): it did not continue, so nothing it says changed.
    Returns whether that happened."""
    if before is None or before.info.get("status") != "completed":
        return False
    if any(record.get("step", 0) >= first_step for record in runs.read_metrics(run_dir)):
        return False  # it trained on: what it did since is the record now
    runs.restore(run_dir, before)
    print(f"{run_dir} was left as it was (status {before.info.get('status')})", file=sys.stderr)
    return True


def _closed(accelerator, run_dir: str, status: str) -> None:
    from ..tracking.trackers import close_trackers

    close_trackers(accelerator, status)
    index_run(run_dir)


def index_run(run_dir: str) -> None:
    """Update the runs folder's index for this run, if the folder has one (the first ``peftkit runs``
    command makes it; a runs folder that no one lists holds nothing but run folders). The index is a
    cache of the run folders, re-read when they change, so a failure here never stops training."""
    from ..tracking.index import INDEX_FILE, RunIndex

    runs_dir = os.path.dirname(os.path.abspath(run_dir))
    if not os.path.exists(os.path.join(runs_dir, INDEX_FILE)):
        return
    try:
        with RunIndex(runs_dir) as index:
            index.update(run_dir)
    except (sqlite3.Error, OSError):
        pass


def _finish(run_dir: str, final: dict, seconds: float) -> None:
    runs.update_run_json(run_dir, status="completed", ended=runs.now(), final_metrics=final, train_seconds=round(seconds, 1))
    if final:
        last = runs.read_metrics(run_dir)
        runs.append_metrics(run_dir, {"step": last[-1]["step"] if last else 0, "final": True, **final})
    runs.plot_loss(run_dir)


def _share(accelerator, run_dir: Optional[str]) -> str:
    """The main process picks the run folder; the others learn it from it."""
    if accelerator.num_processes == 1:
        return run_dir
    from accelerate.utils import broadcast_object_list

    holder = [run_dir]
    broadcast_object_list(holder, from_process=0)
    return holder[0]


__all__ = ["RunConfig", "resolved_dict", "start_run", "train_from_config"]
