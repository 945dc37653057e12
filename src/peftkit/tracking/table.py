"""Plain-text formatting for the ``peftkit runs`` commands: aligned tables and short value spellings.

>>> print(format_table(["run", "r"], [["a", "8"], ["bb", "16"]]))
run  r
---  --
a    8
bb   16
"""

from __future__ import annotations

import json
from typing import Any, Optional, Sequence


def fmt_value(value: Any) -> str:
    """A config or metric value as a person writes it: ``0.0002``, ``true``, ``null``, ``[q_proj, v_proj]``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return format(value, ".6g")
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(fmt_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True) if value else "{}"
    return str(value)


def fmt_metric(value: Optional[float]) -> str:
    return "-" if value is None else format(value, ".4g")


# Metrics that are a share of the evaluation examples: shown with the count they stand for.
COUNTED_METRICS = ("exact_match", "accuracy")


def fmt_score(metric: str, value: Optional[float], examples: Optional[int] = None) -> str:
    """A metric for people: ``0.95 (19/20)`` for a share of ``examples`` (exact match, accuracy),
    else ``fmt_metric``'s spelling.

    >>> fmt_score("exact_match", 0.95, 20), fmt_score("loss", 0.1234567)
    ('0.95 (19/20)', '0.1235')
    """
    text = fmt_metric(value)
    name = metric.removeprefix("eval_").removeprefix("eval.")
    if value is not None and examples and name in COUNTED_METRICS:
        text += f" ({round(value * examples)}/{examples})"
    return text


def fmt_duration(seconds: Optional[float]) -> str:
    """``42s``, ``3m10s``, ``1h02m``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def fmt_change(a: Optional[float], b: Optional[float]) -> str:
    """``b - a`` and the relative change, e.g. ``-0.0123 (-4.1%)``."""
    if a is None or b is None:
        return ""
    delta = b - a
    relative = f" ({100 * delta / abs(a):+.1f}%)" if a else ""
    return f"{delta:+.4g}{relative}"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> str:
    """Columns padded to their widest cell (``right``: indexes of right-aligned columns, e.g. numbers)."""
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        padded = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return "  ".join(padded).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])
