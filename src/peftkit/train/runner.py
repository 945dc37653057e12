"""``peftkit train``: one config in, one tracked run folder out (see :mod:`peftkit.train.runs`).

What fails before a run folder exists, and so leaves none behind: a bad config
(:class:`~peftkit.errors.ConfigError`) and bad data (a missing or wrongly typed field, an empty
file, a sequence over ``max_seq_len`` with ``truncation: error``: a
:class:`~peftkit.train.data.DataError` naming file, row and field). Both are checked before the
model is loaded. Anything later (the model cannot be loaded, a NaN loss, a crash) is recorded in
the run folder's ``run.json`` as ``status: failed`` with the error; Ctrl-C as ``interrupted``.
On resume, data problems likewise fail before ``run.json`` is touched.
"""

from __future__ import annotations

import os
import time
from typing import Iterable, Optional

from . import runs, state
from .config import RunConfig, config_hash, dump_yaml, load_run_config, resolved_dict


def start_run(cfg: RunConfig, parent: Optional[str] = None, processes: int = 1) -> str:
    """Create the run folder with its resolved config and ``run.json``; returns its path."""
    version = config_hash(cfg)
    run_id = runs.new_run_id(cfg.output.name, cfg.adapter["method"], version)
    run_dir = runs.create_run_dir(cfg.output.dir, run_id)
    dump_yaml(cfg, os.path.join(run_dir, "config.yaml"))
    runs.update_run_json(
        run_dir, run_id=os.path.basename(run_dir), name=cfg.output.name, config_hash=version, status="running",
        started=runs.now(), ended=None, seed=cfg.train.seed, parent=parent, processes=processes,
        environment=runs.environment(),
    )
    return run_dir


def train_from_config(config_path: str, overrides: Iterable[str] = (), resume: Optional[str] = None) -> str:
    """Run a config file (with dotted overrides), or resume the run folder ``resume``; returns the
    run folder. The final adapter is in ``<run>/adapter`` in the peft format.

    Example:
        >>> run_dir = train_from_config("examples/quickstart.yaml", ["train.max_steps=10"])  # doctest: +SKIP
    """
    from accelerate import Accelerator

    from .loop import train
    from .prepare import prepare_data

    if resume:
        cfg = load_run_config(os.path.join(resume, "config.yaml"), overrides)
        run_dir, checkpoint = resume, state.latest_checkpoint(os.path.join(resume, "checkpoints"))
    else:
        cfg = load_run_config(config_path, overrides)
        run_dir, checkpoint = None, None
    accelerator = Accelerator(gradient_accumulation_steps=cfg.train.grad_accum, mixed_precision=cfg.train.mixed_precision)
    prepared_data = prepare_data(cfg)  # bad data fails here: no model loaded, no run folder made
    if run_dir is None:
        run_dir = start_run(cfg, processes=accelerator.num_processes) if accelerator.is_main_process else None
        run_dir = _share(accelerator, run_dir)
    elif accelerator.is_main_process:
        step = int(os.path.basename(checkpoint).split("-")[1]) if checkpoint else 0
        runs.truncate_metrics(run_dir, step)
        runs.update_run_json(run_dir, status="running", resumed_from=checkpoint, resumed=runs.now())
    began = time.time()
    try:
        final = train(cfg, run_dir, resume_from=checkpoint, accelerator=accelerator, prepared_data=prepared_data)
    except KeyboardInterrupt:
        if accelerator.is_main_process:
            runs.update_run_json(run_dir, status="interrupted", ended=runs.now())
        raise
    except Exception as e:
        if accelerator.is_main_process and runs.read_run_json(run_dir).get("status") == "running":
            runs.update_run_json(run_dir, status="failed", error=f"{type(e).__name__}: {e}", ended=runs.now())
        raise
    if accelerator.is_main_process:
        _finish(run_dir, final, time.time() - began)
    return run_dir


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
