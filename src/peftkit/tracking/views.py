"""What the ``peftkit runs`` commands print (and the HTML report shows): the runs table, one run in
full, two runs side by side, many runs compared. Functions return rows or text; nothing prints here.

>>> headers, rows = runs_table(catalog.select(), catalog.groups())   # doctest: +SKIP
"""

from __future__ import annotations

import os
from typing import Any, Optional

from . import lineage
from .diff import MISSING, config_diff, environment_diff, metric_diff, result_values, varying_keys
from .records import Run, lower_is_better
from .table import fmt_change, fmt_duration, fmt_metric, fmt_score, fmt_value, format_table
from .versions import AGREE_RTOL, VersionGroup

RUN_COLUMNS = ["run", "name", "status", "version", "method", "r", "steps", "result", "duration", "re-runs"]
NUMERIC_RUN_COLUMNS = (5, 6, 8)


def primary_metric(run: Run) -> Optional[str]:
    """The metric a run is judged by: the first of its ``eval.metrics`` that measures the task
    (exact match, accuracy, F1) rather than the loss, else the loss; only metrics it measured."""
    measured = {**(run.summary.get("best") or {}), **(run.summary.get("final") or {})}
    wanted = [m for m in (run.config.get("eval") or {}).get("metrics") or [] if m in measured]
    wanted += [m for m in measured if m not in wanted]
    return next((m for m in wanted if not lower_is_better(m)), next(iter(wanted), None))


def result_cell(run: Run) -> str:
    """The run's primary metric at its end (the final evaluation, or the latest while it runs), with
    the count it stands for: ``exact_match 0.95 (19/20)``."""
    metric = primary_metric(run)
    if metric is None:
        return "-"
    value = (run.summary.get("final") or {}).get(metric)
    if value is None:
        value = run.summary["best"][metric]["value"]
    return f"{metric} {fmt_score(metric, value, run.info.get('eval_size'))}"


def run_row(run: Run, groups: dict[str, VersionGroup]) -> list[str]:
    adapter = run.config.get("adapter") or {}
    group = groups.get(run.version or "")
    return [run.id, run.info.get("name") or "-", run.status, run.version or "-", run.method or "-",
            fmt_value(adapter["r"]) if "r" in adapter else "-", str(run.summary.get("steps", 0)), result_cell(run),
            fmt_duration(run.duration()), group.label() if group else ""]


def runs_table(runs: list[Run], groups: dict[str, VersionGroup]) -> tuple[list[str], list[list[str]]]:
    return RUN_COLUMNS, [run_row(r, groups) for r in runs]


def group_line(group: VersionGroup) -> str:
    """One config version run more than once: how many runs, and whether their results agree."""
    done = sum(r.status == "completed" for r in group.runs)
    if group.agree is None:
        verdict = f"pending ({done} of {len(group.runs)} completed)"
    elif group.agree:
        verdict = f"agree on {', '.join(group.metrics)} (largest relative difference {group.max_rel_diff:.2g})"
    else:
        verdict = f"DIFFER: relative difference {group.max_rel_diff:.2g} > {AGREE_RTOL:g} on {', '.join(group.metrics)}"
    return f"{group.version}  {len(group.runs)} runs ({', '.join(r.id for r in group.runs)}): {verdict}"


def list_text(runs: list[Run], groups: dict[str, VersionGroup]) -> str:
    if not runs:
        return "no runs match"
    headers, rows = runs_table(runs, groups)
    text = format_table(headers, rows, right=NUMERIC_RUN_COLUMNS)
    shown = {r.version for r in runs}
    again = [g for v, g in groups.items() if v in shown and g.reruns > 1]
    if again:
        text += "\n\nconfig versions run more than once:\n" + "\n".join("  " + group_line(g) for g in again)
    damaged = [r for r in runs if r.problems]
    if damaged:
        text += "\n\nruns with damaged files (peftkit runs show RUN names them):\n" + "\n".join(
            f"  {r.id}: {r.problems[0]}" + (f" (+{len(r.problems) - 1} more)" if len(r.problems) > 1 else "") for r in damaged)
    return text


# --------------------------------------------------------------------------------------------- show
def _pairs_text(pairs: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in pairs)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in pairs if v)


def lineage_text(catalog: Any, run: Run) -> str:
    chain = lineage.chain(catalog, run)
    names = [c.id if isinstance(c, Run) else f"{c} (not found)" for c in chain]
    return " <- ".join(names) if len(names) > 1 else ""


def show_text(catalog: Any, run: Run, groups: dict[str, VersionGroup]) -> str:
    """Everything about one run, a fact a line."""
    info, env = run.info, run.info.get("environment") or {}
    group = groups.get(run.version or "")
    others = [r.id for r in group.runs if r.id != run.id] if group else []
    version = (run.version or "-") + (f"  (same version: {', '.join(others)}; results "
                                      f"{ {True: 'agree', False: 'differ', None: 'pending'}[group.agree] })" if others else "")
    results = "   ".join(f"{k} {fmt_metric(v)}" for k, v in result_values(run).items()
                         if v is not None and not k.startswith("best.") and k not in ("steps", "duration"))
    best = "   ".join(f"eval.{k} {fmt_metric(v['value'])} @{v['step']}" for k, v in (run.summary.get("best") or {}).items())
    resumed = f"resumed at {info['resumed']} from {info.get('resumed_from') or 'the start'}" if info.get("resumed") else ""
    sweep = info.get("sweep") or {}
    point = " ".join(f"{k}={fmt_value(v)}" for k, v in (sweep.get("point") or {}).items())
    packages = ", ".join(f"{k} {v}" for k, v in (env.get("packages") or {}).items())
    git = env.get("git") or {}
    git_line = (f"{(git.get('commit') or 'no commit')[:12]}" + (f" ({git['branch']})" if git.get("branch") else "")
                + (", dirty" if git.get("dirty") else ", clean") + f" in {git.get('root')}") if git else ""
    data = "; ".join(f"{role} {d.get('path')}" + (f" (sha256 {d['sha256'][:12]})" if d.get("sha256") else "")
                     for role, d in (info.get("data") or {}).items())
    kids = ", ".join(r.id for r in lineage.children(catalog.all(), run))
    adapter = run.config.get("adapter") or {}
    pairs = [
        ("run", run.id), ("path", run.path), ("name", info.get("name") or ""), ("status", run.status),
        ("error", info.get("error") or ""), ("damaged", "\n  ".join(["", *run.problems]) if run.problems else ""),
        ("version", version),
        ("method", (run.method or "-") + (f"  r={fmt_value(adapter['r'])}" if "r" in adapter else "")),
        ("started", f"{info.get('started') or '-'}   ended {info.get('ended') or '-'}   duration "
                    f"{fmt_duration(run.duration())}"),
        ("resumed", resumed), ("steps", str(run.summary.get("steps", 0))), ("results", results), ("best", best),
        ("lineage", lineage_text(catalog, run)), ("parent adapter", info.get("parent_adapter") or ""),
        ("combines", _combination_text(info)),
        ("children", kids), ("reproduces", info.get("reproduces") or ""),
        ("sweep", f"{sweep['id']}  point {sweep.get('index', 0) + 1}/{sweep.get('size', '?')}: {point}" if sweep else ""),
        ("data", data), ("python", f"{env.get('python', '-')} on {env.get('os', '-')}"), ("device", env.get("device", "")),
        ("packages", packages), ("git", git_line), ("trackers", _trackers_line(info.get("trackers") or {})),
        ("config", os.path.join(run.path, "config.yaml") + "  (--config prints it)"),
    ]
    return _pairs_text(pairs)


def _combination_text(info: dict[str, Any]) -> str:
    """``peftkit combine``'s parents with their weights, and how they were combined."""
    parents = [p for p in info.get("parents") or [] if isinstance(p, dict)]
    if not parents:
        return ""
    how = info.get("combination") or {}
    error = how.get("max_relative_error")
    head = f"{how.get('type', '?')}" + (f", largest relative error {error:.3g}" if isinstance(error, float) else "")
    return head + "".join(f"\n  {fmt_value(p.get('weight'))} x {p.get('run') or p.get('adapter')}" for p in parents)


def _trackers_line(trackers: dict[str, Any]) -> str:
    parts = []
    if "tensorboard" in trackers:
        parts.append(f"tensorboard {trackers['tensorboard'].get('dir')}")
    if "mlflow" in trackers:
        m = trackers["mlflow"]
        parts.append(f"mlflow run {m.get('run_id')} in {m.get('uri')} (experiment {m.get('experiment')})")
    if "wandb" in trackers:
        parts.append(f"wandb project {trackers['wandb'].get('project')}")
    return "; ".join(parts)


# --------------------------------------------------------------------------------------------- diff
def _cell(value: Any) -> str:
    return "(absent)" if value is MISSING else fmt_value(value)


def diff_text(a: Run, b: Run) -> str:
    """Config differences key by key, then metric differences, then environment differences."""
    lines = [f"A  {a.id}", f"B  {b.id}", ""]
    same = a.version == b.version
    lines.append(f"config version: {a.version} (the same)" if same else f"config versions: {a.version} vs {b.version}")
    keys = config_diff(a, b)
    if keys:
        rows = [[d.key, _cell(d.values[0]), _cell(d.values[1]),
                 "" if d.versioned else "(same adapter content)" if d.same_version else "(not part of the version)"]
                for d in keys]
        lines += [f"\nconfig: {len(keys)} key(s) differ", _indent(format_table(["key", "A", "B", ""], rows))]
    else:
        lines.append("\nconfig: identical")
    metrics = metric_diff(a, b)
    if metrics:
        rows = [[m.metric, fmt_duration(m.a), fmt_duration(m.b), ""] if m.metric == "duration" else
                [m.metric, fmt_metric(m.a), fmt_metric(m.b), fmt_change(m.a, m.b)] for m in metrics]
        lines += ["\nresults", _indent(format_table(["metric", "A", "B", "B - A"], rows, right=(1, 2, 3)))]
    env = environment_diff(a, b)
    if env:
        rows = [[d.key, _cell(d.values[0]), _cell(d.values[1])] for d in env]
        lines += ["\nenvironment: differs", _indent(format_table(["key", "A", "B"], rows))]
    return "\n".join(lines)


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


# --------------------------------------------------------------------------------------------- compare
def compare_table(runs: list[Run]) -> tuple[list[str], list[list[str]], int]:
    """One row per run: the config keys that vary among them, then their results; also the index of
    the first result column (those are numbers, right-aligned)."""
    keys = varying_keys(runs)
    values = [result_values(r) for r in runs]
    metrics = [m for m in dict.fromkeys(k for v in values for k in v) if any(v.get(m) is not None for v in values)]
    headers = ["run", *(k.key for k in keys), *metrics]
    rows = []
    for i, run in enumerate(runs):
        cells = [run.id, *(_cell(k.values[i]) for k in keys)]
        cells += [fmt_duration(values[i][m]) if m == "duration" else fmt_metric(values[i].get(m)) for m in metrics]
        rows.append(cells)
    return headers, rows, 1 + len(keys)


def compare_text(runs: list[Run]) -> str:
    headers, rows, first = compare_table(runs)
    return format_table(headers, rows, right=tuple(range(first, len(headers))))
