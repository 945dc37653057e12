"""What ``peftkit train`` and ``peftkit eval`` print when they finish: scores with the counts they
stand for (``exact_match 0.95 (19/20)``) and the rows the model got wrong, each with the expected
and the predicted answer, so that a person sees *what* is wrong without opening a JSON file.

>>> print(scores_line({"eval_exact_match": 0.95, "eval_loss": 0.2}, 20))
exact_match 0.95 (19/20), loss 0.2
"""

from __future__ import annotations

from typing import Any, Optional

from ..tracking.table import fmt_score


def scores_line(metrics: dict[str, Any], examples: Optional[int]) -> str:
    """``name value`` pairs, task metrics first, shares with their counts."""
    names = [k for k in metrics if isinstance(metrics[k], (int, float))]
    names.sort(key=lambda k: "loss" in k)  # the loss last: the task's own metric is what people read first
    return ", ".join(f"{k.removeprefix('eval_')} {fmt_score(k, metrics[k], examples)}" for k in names)


def is_hit(row: dict[str, Any], key: str = "prediction") -> bool:
    """The rule ``exact_match`` scores by: equal after trimming whitespace."""
    return str(row.get(key, "")).strip() == str(row.get("reference", "")).strip()


def failing_rows_text(rows: list[dict[str, Any]], limit: int = 5, width: int = 160) -> str:
    """Up to ``limit`` rows the model got wrong (``prompt``, ``reference``, ``prediction``), with
    where the full list is; empty when none failed.

    >>> print(failing_rows_text([{"prompt": "p", "reference": "4", "prediction": "5"}]))
    1 of 1 wrong:
      #1  expected: 4
          got:      5
    """
    wrong = [(i, r) for i, r in enumerate(rows, 1) if not is_hit(r)]
    if not wrong:
        return ""
    lines = [f"{len(wrong)} of {len(rows)} wrong" + (f" (the first {limit}):" if len(wrong) > limit else ":")]
    for number, row in wrong[:limit]:
        lines.append(f"  #{number:<3} expected: {_clip(row.get('reference'), width)}")
        lines.append(f"  {'':4} got:      {_clip(row.get('prediction'), width)}")
    return "\n".join(lines)


def _clip(text: Any, width: int) -> str:
    """One line of at most ``width`` characters (newlines shown as ``\\n``, the rest cut with ...)."""
    one = str(text if text is not None else "").strip().replace("\n", "\\n")
    return one if len(one) <= width else one[: width - 3] + "..."
