"""What differs between runs: config keys, results and environment.

>>> [d.key for d in config_diff(run_a, run_b)]          # doctest: +SKIP
['adapter.r', 'train.lr']
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from ..train.config import UNVERSIONED
from .lineage import versioned_source
from .records import Run
from .versions import relative_difference

MISSING = object()  # a key one of the runs does not have


def flat_config(run: Run) -> dict[str, Any]:
    """``{"adapter.r": 16, "train.lr": 0.0002, ...}``: the resolved config, one level of sections."""
    return {f"{section}.{key}": value for section, values in run.config.items() if isinstance(values, dict)
            for key, value in values.items()}


@dataclass
class KeyDiff:
    key: str
    values: list[Any]  # one per run; MISSING where a run lacks the key
    same_version: bool = False  # the values differ as written but count the same in the config version

    @property
    def versioned(self) -> bool:
        """False for keys that are not part of the config version (where outputs and metrics go), and
        for values that the version counts as equal (copies of one adapter in ``adapter.from``)."""
        return not self.same_version and self.key.split(".", 1)[0] not in UNVERSIONED


def version_value(key: str, value: Any) -> Any:
    """A value as the config version counts it: ``adapter.from`` as its adapter's content
    fingerprint where the adapter can be read (see peftkit.tracking.lineage), else as written."""
    if key == "adapter.from" and isinstance(value, str):
        return versioned_source(value)
    return value


def varying_keys(runs: list[Run], include_unversioned: bool = False) -> list[KeyDiff]:
    """The config keys whose values are not the same in every run, in config order."""
    flats = [flat_config(r) for r in runs]
    keys = list(dict.fromkeys(k for flat in flats for k in flat))
    found = []
    for key in keys:
        values = [flat.get(key, MISSING) for flat in flats]
        if any(v != values[0] for v in values[1:]):
            counted = [version_value(key, v) for v in values]
            diff = KeyDiff(key, values, same_version=all(c == counted[0] for c in counted[1:]))
            if include_unversioned or diff.versioned:
                found.append(diff)
    return found


def config_diff(a: Run, b: Run) -> list[KeyDiff]:
    """Key by key, what differs between two runs' resolved configs (output and tracking included)."""
    return varying_keys([a, b], include_unversioned=True)


@dataclass
class MetricDiff:
    metric: str
    a: Optional[float]
    b: Optional[float]

    @property
    def relative(self) -> Optional[float]:
        return None if self.a is None or self.b is None else relative_difference(self.a, self.b)


def result_values(run: Run) -> dict[str, Optional[float]]:
    """The numbers ``diff`` and ``compare`` put side by side: final and best eval metrics, the last
    training loss, steps and training time."""
    s = run.summary
    values: dict[str, Optional[float]] = {f"eval.{k}": v for k, v in (s.get("final") or {}).items()}
    values.update({f"best.eval.{k}": v["value"] for k, v in (s.get("best") or {}).items()})
    values.update({"loss": s.get("loss"), "steps": s.get("steps"), "duration": run.duration()})
    return values


def metric_diff(a: Run, b: Run) -> list[MetricDiff]:
    va, vb = result_values(a), result_values(b)
    keys = list(dict.fromkeys([*va, *vb]))
    return [MetricDiff(k, va.get(k), vb.get(k)) for k in keys if va.get(k) is not None or vb.get(k) is not None]


def environment_diff(a: Run, b: Run) -> list[KeyDiff]:
    """Package versions, Python, device and git commit that differ (the usual suspects when a
    re-run of the same config version does not agree)."""
    def flat(run: Run) -> dict[str, Any]:
        env = run.info.get("environment") or {}
        out = {k: env.get(k) for k in ("python", "os", "device", "cuda")}
        out.update({f"packages.{k}": v for k, v in (env.get("packages") or {}).items()})
        git = env.get("git") or {}
        out.update({"git.commit": git.get("commit"), "git.dirty": git.get("dirty")})
        return out

    fa, fb = flat(a), flat(b)
    keys = list(dict.fromkeys([*fa, *fb]))
    return [KeyDiff(k, [fa.get(k, MISSING), fb.get(k, MISSING)]) for k in keys
            if fa.get(k, MISSING) != fb.get(k, MISSING)]
