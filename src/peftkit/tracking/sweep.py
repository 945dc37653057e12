"""Sweeps: ``peftkit train run.yaml --sweep adapter.r=8,16,32 --sweep train.lr=1e-4,3e-4`` trains
every point of the grid (here 6), one tracked run each, in order. The runs share a sweep id,
recorded in each run.json as ``sweep: {id, index, size, point}``; ``peftkit runs compare --sweep ID``
shows them in one table and one plot.

Every point's config is validated before the first run starts, so a bad value fails at once. A run
that fails is recorded (status failed) and the sweep goes on with the next point; Ctrl-C stops the
sweep. Values are YAML, split at top-level commas: ``--sweep "adapter.target_modules=[q_proj,v_proj],all-linear"``
is two points.

>>> grid([("adapter.r", ["8", "16"]), ("train.lr", ["1e-4"])])
[['adapter.r=8', 'train.lr=1e-4'], ['adapter.r=16', 'train.lr=1e-4']]
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

from ..errors import ConfigError

Axis = tuple[str, list[str]]


def split_values(text: str) -> list[str]:
    """``"8,16,[q,v]"`` -> ``["8", "16", "[q,v]"]``: commas inside brackets or quotes do not split."""
    parts, depth, quote, current = [], 0, None, []
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(ch)
    parts.append("".join(current).strip())
    return parts


def parse_axes(specs: Iterable[str], overrides: Iterable[str] = ()) -> list[Axis]:
    """``["adapter.r=8,16"]`` -> ``[("adapter.r", ["8", "16"])]``; every problem at once as a ConfigError."""
    axes: list[Axis] = []
    problems = []
    fixed = {o.partition("=")[0].strip() for o in overrides}
    for spec in specs:
        key, sep, text = (part.strip() for part in spec.partition("="))
        values = split_values(text) if sep else []
        if not sep or not key or not text:
            problems.append((key or spec, f"--sweep {spec!r} is not KEY=V1,V2,..., e.g. adapter.r=8,16,32"))
        elif "" in values:
            problems.append((key, f"--sweep {spec!r} has an empty value"))
        elif any(key == k for k, _ in axes):
            problems.append((key, "swept twice; give all its values in one --sweep"))
        elif key in fixed:
            problems.append((key, "given both as an override and as a --sweep; keep one"))
        else:
            axes.append((key, values))
    if problems:
        raise ConfigError("Invalid sweep:", problems)
    return axes


def grid(axes: list[Axis]) -> list[list[str]]:
    """The overrides of every point, the last axis varying fastest."""
    return [[f"{key}={value}" for (key, _), value in zip(axes, values)]
            for values in itertools.product(*(vals for _, vals in axes))]


def sweep_id(config: str, overrides: Iterable[str], axes: list[Axis]) -> str:
    """``sweep-<time>-<hash6 of config, overrides and axes>``."""
    digest = hashlib.sha256(json.dumps([config, list(overrides), axes]).encode()).hexdigest()[:6]
    return f"sweep-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}-{digest}"


@dataclass
class Point:
    index: int
    overrides: list[str]
    values: dict[str, Any]
    run_dir: Optional[str] = None
    error: Optional[str] = None


def plan(config: str, overrides: list[str], specs: list[str]) -> tuple[str, list[Point]]:
    """The sweep id and its points, each point's config validated (all problems at once)."""
    from ..train.config import load_run_config, resolved_dict

    axes = parse_axes(specs, overrides)
    points, problems = [], []
    for i, point in enumerate(grid(axes)):
        try:
            resolved = resolved_dict(load_run_config(config, [*overrides, *point]))
        except ConfigError as e:
            problems += [(f"{' '.join(point)} -> {p}" if p else " ".join(point), m) for p, m in e.problems]
            continue
        values = {key: resolved[key.split(".")[0]].get(key.split(".", 1)[1]) if "." in key else None for key, _ in axes}
        points.append(Point(i, point, values))
    if problems:
        raise ConfigError(f"Invalid sweep over {config}:", problems)
    return sweep_id(config, overrides, axes), points


def run_sweep(config: str, overrides: list[str], specs: list[str],
              train: Optional[Callable[..., str]] = None, echo: Callable[[str], None] = print) -> tuple[str, list[Point]]:
    """Train every point of the grid; returns the sweep id and the points with their run folders
    (or errors). ``train`` is :func:`~peftkit.train.runner.train_from_config` unless given."""
    if train is None:
        from ..train.runner import train_from_config as train
    sid, points = plan(config, overrides, specs)
    for point in points:
        echo(f"\n[{sid}] point {point.index + 1}/{len(points)}: {' '.join(point.overrides)}")
        extra = {"sweep": {"id": sid, "index": point.index, "size": len(points), "point": point.values}}
        try:
            point.run_dir = train(config, [*overrides, *point.overrides], extra=extra)
        except Exception as e:  # recorded in its run folder (if it got one); the sweep goes on (Ctrl-C stops it)
            point.error = f"{type(e).__name__}: {e}"
            echo(f"[{sid}] point {point.index + 1} failed: {point.error}")
    return sid, points
