"""The method x file table of a peft-suite run: applicable, passed, failed, % passed.

Example::

    python -m peft_suite.report            # print the table of the last run (.peft-suite-cache/results)
    python -m peft_suite.report --failures  # ... and the most common failure messages
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

from .classify import METHOD_ORDER, NOT_IN_PEFTKIT

OTHER = "other peft methods (not in peftkit)"


def load_results(folder: Path) -> list[dict]:
    """Every test record of the last run, from the ``*.jsonl`` files in ``folder``."""
    records = []
    for path in sorted(folder.glob("*.jsonl")):
        records += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return records


def _row_name(method: str) -> str:
    return OTHER if NOT_IN_PEFTKIT in method else method


def counts(records: list[dict]) -> dict[tuple[str, str], collections.Counter]:
    """``{(method, file): Counter(passed=, failed=, na=)}``, plus ``(method, "all")`` totals and
    ``("all implemented", file)`` for every method peftkit implements together.

    Example::

        >>> counts([{"method": "LoRA", "file": "a.py", "outcome": "passed"}])[("LoRA", "all")]["passed"]
        1
    """
    table: dict[tuple[str, str], collections.Counter] = collections.defaultdict(collections.Counter)
    for record in records:
        method = _row_name(record["method"])
        for key in ((method, record["file"]), (method, "all")):
            table[key][record["outcome"]] += 1
        if method != OTHER:
            for key in (("all implemented", record["file"]), ("all implemented", "all")):
                table[key][record["outcome"]] += 1
    return table


def _cell(counter: collections.Counter) -> tuple[int, int, int, int, str]:
    applicable = counter["passed"] + counter["failed"]
    share = f"{100 * counter['passed'] / applicable:.0f}%" if applicable else "-"
    return applicable, counter["passed"], counter["failed"], counter["na"], share


def _methods(table: dict) -> list[str]:
    present = {method for method, _ in table}
    return [m for m in [*METHOD_ORDER, "all implemented", OTHER] if m in present]


def _files(records: list[dict]) -> list[str]:
    return sorted({r["file"] for r in records})


def render_text(records: list[dict], failures: int = 0) -> str:
    """A plain-text table: per method the totals, then per file ``passed/applicable``."""
    table, files = counts(records), _files(records)
    head = f"{'method':<36}{'applic.':>8}{'passed':>8}{'failed':>8}{'n/a':>7}{'%':>6}  " + "  ".join(
        f"{f.removeprefix('test_').removesuffix('.py'):>14}" for f in files)
    lines = [head, "-" * len(head)]
    for method in _methods(table):
        applicable, passed, failed, na, share = _cell(table[(method, "all")])
        per_file = "  ".join(f"{_fraction(table.get((method, f))):>14}" for f in files)
        lines.append(f"{method:<36}{applicable:>8}{passed:>8}{failed:>8}{na:>7}{share:>6}  {per_file}")
    if failures:
        lines += ["", f"most common failures (of {sum(r['outcome'] == 'failed' for r in records)}):"]
        reasons = collections.Counter(r["reason"][:160] for r in records if r["outcome"] == "failed")
        lines += [f"{n:>6}  {reason}" for reason, n in reasons.most_common(failures)]
    return "\n".join(lines)


def _fraction(counter: collections.Counter | None) -> str:
    if not counter:
        return ""
    applicable, passed, *_ = _cell(counter)
    return f"{passed}/{applicable}" if applicable else "n/a"


def render_markdown(records: list[dict]) -> str:
    """The table for docs/peft-compatibility.md: one row per method, per file ``passed / applicable``
    (failed = applicable - passed), and the totals."""
    table, files = counts(records), _files(records)
    header = "| method | " + " | ".join(f"`{f}`" for f in files) + " | applicable | passed | failed | not applicable | passed % |"
    lines = [header, "|" + "---|" * (len(files) + 6)]
    for method in _methods(table):
        applicable, passed, failed, na, share = _cell(table[(method, "all")])
        cells = " | ".join(_fraction(table.get((method, f))) or "" for f in files)
        bold = "**" if method == "all implemented" else ""
        lines.append(f"| {bold}{method}{bold} | {cells} | {applicable} | {passed} | {failed} | {na} | {bold}{share}{bold} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from .run import RESULTS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--failures", type=int, nargs="?", const=25, default=0, help="list the N most common failures")
    parser.add_argument("--markdown", action="store_true", help="print the markdown table instead")
    args = parser.parse_args(argv)
    records = load_results(RESULTS)
    print(render_markdown(records) if args.markdown else render_text(records, args.failures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
