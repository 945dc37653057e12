"""Write the run-config reference from the schema: docs/run-config.md and docs/run-config.schema.json.

    python scripts/gen_run_config_docs.py          # rewrite both files
    python scripts/gen_run_config_docs.py --check  # exit 1 if either is out of date (what the test checks)

Run it after changing a run-config key, its default or its description
(src/peftkit/train/config_descriptions.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

from peftkit.train.config_reference import json_schema_text, markdown

DOCS = Path(__file__).resolve().parents[1] / "docs"
FILES = {"run-config.md": markdown, "run-config.schema.json": json_schema_text}


def stale() -> list[str]:
    """The committed files whose text differs from what the schema gives now."""
    out = []
    for name, make in FILES.items():
        path = DOCS / name
        if not path.exists() or path.read_text(encoding="utf-8") != make():
            out.append(str(path))
    return out


def main(argv: list[str]) -> int:
    if "--check" in argv:
        old = stale()
        for path in old:
            print(f"{path} is out of date: run python scripts/gen_run_config_docs.py", file=sys.stderr)
        return 1 if old else 0
    for name, make in FILES.items():
        (DOCS / name).write_text(make(), encoding="utf-8")
        print(f"wrote {DOCS / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
