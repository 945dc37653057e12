"""Config versions: runs whose resolved configs hash alike (``config_hash``) are the same experiment
run again. A group *agrees* when every completed run in it has the same results: each final eval
metric (or, without eval data, the last training loss) within a relative difference of
:data:`AGREE_RTOL` of the first completed run's. On CPU a re-run of the same version reproduces
bit for bit (difference 0); on GPU, non-deterministic kernels may make it differ a little.

>>> groups = version_groups(runs)                          # doctest: +SKIP
>>> groups["3f2a9c0d1b7e"].agree, groups["3f2a9c0d1b7e"].max_rel_diff  # doctest: +SKIP
(True, 0.0)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from .records import Run

AGREE_RTOL = 1e-6


def results(run: Run) -> dict[str, float]:
    """What a re-run must reproduce: the final eval metrics, else the last training loss."""
    final = dict(run.summary.get("final") or {})
    if not final and run.summary.get("loss") is not None:
        final = {"train_loss": run.summary["loss"]}
    return final


def relative_difference(a: float, b: float) -> float:
    scale = max(abs(a), abs(b))
    return abs(a - b) / scale if scale > 0 else 0.0


@dataclass
class VersionGroup:
    """The runs of one config version (oldest first) and whether their results agree: ``agree`` is
    None while fewer than two of them completed with comparable results."""

    version: str
    runs: list[Run] = field(default_factory=list)
    agree: Optional[bool] = None
    max_rel_diff: Optional[float] = None
    metrics: list[str] = field(default_factory=list)

    @property
    def reruns(self) -> int:
        return len(self.runs)

    def label(self) -> str:
        """The ``list`` column: empty for a version run once, else ``2x agree`` / ``2x differ`` /
        ``2x pending`` (fewer than two finished)."""
        if len(self.runs) < 2:
            return ""
        word = "pending" if self.agree is None else "agree" if self.agree else "differ"
        return f"{len(self.runs)}x {word}"


def compare_results(runs: list[Run]) -> tuple[Optional[bool], Optional[float], list[str]]:
    """``(agree, largest relative difference, metrics compared)`` over the completed ``runs``."""
    done = [r for r in runs if r.status == "completed" and results(r)]
    if len(done) < 2:
        return None, None, []
    first = results(done[0])
    metrics = [m for m in first if all(m in results(r) for r in done[1:])]
    if not metrics:
        return None, None, []
    worst = max(relative_difference(first[m], results(r)[m]) for r in done[1:] for m in metrics)
    return worst <= AGREE_RTOL, worst, metrics


def version_groups(runs: list[Run]) -> dict[str, VersionGroup]:
    """Every config version among ``runs`` with its runs and their agreement."""
    groups: dict[str, VersionGroup] = {}
    for run in runs:
        if run.version:
            groups.setdefault(run.version, VersionGroup(run.version)).runs.append(run)
    for group in groups.values():
        group.agree, group.max_rel_diff, group.metrics = compare_results(group.runs)
    return groups
