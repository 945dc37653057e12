"""One run folder read into a :class:`Run`: its ``run.json``, resolved config and a summary of its
metrics, plus the flat ``key -> value`` view that the index stores and ``--where`` / ``--sort`` use.

Keys of the flat view (see docs/tracking.md):

- run fields: ``id``, ``name``, ``status``, ``version`` (the config hash), ``method``, ``parent``,
  ``reproduces``, ``sweep``, ``started``, ``ended``, ``duration`` (seconds), ``steps``, ``seed``;
- metrics: ``loss`` (the last logged training loss), ``eval.<metric>`` (the run's result: the final
  evaluation, or the latest one while it runs) and ``best.eval.<metric>`` (the best evaluation after
  step 0: lowest for losses, highest for the rest);
- every resolved config key, dotted: ``adapter.r``, ``train.lr``, ``model.name``, ...;
- the environment: ``env.python``, ``env.device``, ``env.git.commit``, ``env.packages.torch``, ...

>>> run = read_run("runs/20261122-192453-quickstart-12785c")  # doctest: +SKIP
>>> run.fields()["eval.exact_match"], run.fields()["adapter.r"]  # doctest: +SKIP
(0.95, 16)
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Optional

import yaml

from ..errors import CorruptFileError
from ..train import runs
from ..untrusted import decode_utf8, read_bytes

RUN_FILE, CONFIG_FILE, METRICS_FILE = "run.json", "config.yaml", "metrics.jsonl"
# Keys every run may have (absent where unset: a run without a parent has no "parent" field).
RUN_KEYS = ("id", "name", "status", "version", "method", "parent", "reproduces", "sweep", "started", "ended",
            "duration", "steps", "seed", "loss")


def is_run_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, RUN_FILE))


def lower_is_better(metric: str) -> bool:
    """Losses (and perplexities) fall as a run improves; accuracy, F1 and exact match rise."""
    return "loss" in metric or "perplexity" in metric


@dataclass
class Run:
    """A run folder as read from disk: ``info`` is run.json, ``config`` the resolved config.yaml,
    ``summary`` what its metrics.jsonl says (see :func:`summarize`)."""

    id: str
    path: str
    info: dict[str, Any]
    config: dict[str, Any]
    summary: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # damaged files or fields, each naming its file

    @property
    def status(self) -> str:
        return str(self.info.get("status", "unknown"))

    @property
    def version(self) -> Optional[str]:
        return self.info.get("config_hash")

    @property
    def method(self) -> Optional[str]:
        return (self.config.get("adapter") or {}).get("method")

    def duration(self) -> Optional[float]:
        """Seconds: training time of a finished run; for a running one, the time since it started."""
        if self.info.get("train_seconds") is not None:
            return float(self.info["train_seconds"])
        start, end = _time(self.info.get("started")), _time(self.info.get("ended"))
        if start and not end and self.status == "running":
            end = dt.datetime.now(dt.timezone.utc)
        return (end - start).total_seconds() if start and end else None

    def fields(self) -> dict[str, Any]:
        """The flat view: every key ``--where`` and ``--sort`` can name (module docstring)."""
        info, summary = self.info, self.summary
        sweep = info.get("sweep") or {}
        flat: dict[str, Any] = {
            "id": self.id, "name": info.get("name"), "status": self.status, "version": self.version,
            "method": self.method, "parent": info.get("parent"), "reproduces": info.get("reproduces"),
            "sweep": sweep.get("id"), "started": info.get("started"), "ended": info.get("ended"),
            "duration": self.duration(), "steps": summary.get("steps"), "seed": info.get("seed"),
            "loss": summary.get("loss"),
        }
        flat.update({f"eval.{k}": v for k, v in summary.get("final", {}).items()})
        flat.update({f"best.eval.{k}": v["value"] for k, v in summary.get("best", {}).items()})
        for section, values in self.config.items():
            if isinstance(values, dict):
                flat.update({f"{section}.{k}": v for k, v in values.items()})
        flat.update(_flatten(info.get("environment") or {}, "env", skip=("argv",)))
        return {k: v for k, v in flat.items() if v is not None}


def _flatten(data: dict[str, Any], prefix: str, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key in skip:
            continue
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}.{key}"))
        else:
            out[f"{prefix}.{key}"] = value
    return out


def _time(text: Optional[str]) -> Optional[dt.datetime]:
    try:
        return dt.datetime.fromisoformat(text) if text else None
    except ValueError:
        return None


def summarize(records: list[dict[str, Any]], info: dict[str, Any]) -> dict[str, Any]:
    """``steps`` (the last step logged), ``loss`` (the last training loss), ``final`` (metric ->
    value of the final evaluation; the latest one for an unfinished run) and ``best`` (metric ->
    ``{"value", "step"}`` over evaluations after step 0). Metric names drop the ``eval_`` prefix;
    the curves themselves stay in metrics.jsonl (see :mod:`peftkit.tracking.plots`)."""
    steps = max((int(r.get("step", 0)) for r in records), default=0)
    train = [r for r in records if _number(r.get("loss")) and not r.get("final")]
    evals = [{k[5:]: v for k, v in r.items() if k.startswith("eval_") and _number(v)} | {"step": r.get("step", 0)}
             for r in records if not r.get("final") and any(k.startswith("eval_") for k in r)]
    final = {k[5:]: v for k, v in (info.get("final_metrics") or {}).items() if k.startswith("eval_") and _number(v)}
    if not final and evals:
        final = {k: v for k, v in evals[-1].items() if k != "step"}
    best: dict[str, dict[str, Any]] = {}
    for record in evals:
        if record["step"] == 0:  # the untouched base model, measured with eval.at_start
            continue
        for metric, value in record.items():
            if metric == "step" or not math.isfinite(value):
                continue
            old = best.get(metric)
            better = old is None or (value < old["value"] if lower_is_better(metric) else value > old["value"])
            if better:
                best[metric] = {"value": value, "step": record["step"]}
    return {"steps": steps, "loss": train[-1]["loss"] if train else None, "final": final, "best": best}


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_config(path: str, problems: Optional[list[str]] = None) -> dict[str, Any]:
    """The resolved config of a run folder as plain data: ``{}`` when it is missing or unreadable,
    and only its sections that are mappings; what was wrong is appended to ``problems``."""
    from ..train.yaml_io import MAX_BYTES, load_yaml  # YAML 1.2 floats, as the run wrote them; size limits

    file = os.path.join(path, CONFIG_FILE)
    notes = problems if problems is not None else []
    try:
        data = load_yaml(decode_utf8(read_bytes(file, MAX_BYTES), file))
    except FileNotFoundError:
        return {}
    except (OSError, CorruptFileError, yaml.YAMLError) as e:
        notes.append(f"{file}: {getattr(e, 'reason', None) or getattr(e, 'strerror', None) or _one_line(e)}")
        return {}
    if not isinstance(data, dict):
        notes.append(f"{file}: not a mapping of sections")
        return {}
    for section in [k for k, v in data.items() if not isinstance(v, dict)]:
        notes.append(f"{file}: section {str(section)[:40]!r} is not a mapping; ignored")
    return {str(k): v for k, v in data.items() if isinstance(v, dict)}


# run.json fields that readers use, with the type they need; a field of another type is left out
# (and reported) so that one edited or damaged field does not stop a listing.
INFO_TYPES: dict[str, tuple[type, ...]] = {
    "status": (str,), "name": (str,), "config_hash": (str,), "parent": (str,), "parent_path": (str,),
    "parent_adapter": (str,), "reproduces": (str,), "started": (str,), "ended": (str,), "resumed": (str,),
    "resumed_from": (str,), "error": (str,), "seed": (int,), "train_seconds": (int, float), "processes": (int,),
    "sweep": (dict,), "environment": (dict,), "data": (dict,), "trackers": (dict,), "final_metrics": (dict,),
}


def _checked_info(info: dict[str, Any], file: str, problems: list[str]) -> dict[str, Any]:
    kept = {}
    for key, value in info.items():
        wanted = INFO_TYPES.get(key)
        if value is None or wanted is None or (isinstance(value, wanted) and not isinstance(value, bool)):
            kept[key] = value
        else:
            problems.append(f"{file}: field {key!r} should be {'/'.join(t.__name__ for t in wanted)}, "
                            f"got {type(value).__name__}; ignored")
    return kept


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())[:300]


def read_run(path: str) -> Run:
    """Read one run folder. Whatever is damaged (run.json, config.yaml or lines of metrics.jsonl:
    not UTF-8, not JSON/YAML, fields of the wrong type) is left out and named in ``problems``; a
    run.json that cannot be read at all gives status ``unreadable``. The run is listed either way,
    so that it can be looked at and removed."""
    path = os.path.abspath(path)
    problems: list[str] = []
    try:
        info = _checked_info(runs.read_run_json(path), os.path.join(path, RUN_FILE), problems)
    except (OSError, CorruptFileError) as e:
        reason = getattr(e, "reason", None) or getattr(e, "strerror", None) or str(e)
        problems.append(f"{os.path.join(path, RUN_FILE)}: {reason}")
        info = {"status": "unreadable", "error": f"run.json: {reason}"}
    config = read_config(path, problems)
    run = Run(id=os.path.basename(path), path=path, info=info, config=config)
    run.summary = summarize(runs.read_metrics(path, problems), info)
    run.problems = problems
    return run


def signature(path: str) -> str:
    """Changes whenever a file the summary is read from changes (size and modification time)."""
    parts = []
    for name in (RUN_FILE, CONFIG_FILE, METRICS_FILE):
        try:
            st = os.stat(os.path.join(path, name))
            parts.append(f"{st.st_size}:{st.st_mtime_ns}")
        except OSError:
            parts.append("-")
    return "|".join(parts)


def to_json(run: Run) -> dict[str, Any]:
    """What the index stores for a run and ``--json`` prints."""
    return {"id": run.id, "path": run.path, "info": run.info, "config": run.config, "summary": run.summary,
            "problems": run.problems}


def from_json(data: dict[str, Any]) -> Run:
    return Run(id=data["id"], path=data["path"], info=data["info"], config=data["config"], summary=data["summary"],
               problems=list(data.get("problems") or []))


def dumps(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
