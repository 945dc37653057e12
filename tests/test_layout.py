"""The test tree's own rule: tests/ has no __init__.py files, so pytest imports every test module by
its basename, and two files with one basename in different folders fail collection of the whole
run. Name a test of peft_suite/classify.py test_suite_classify.py, not a second test_classify.py."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def test_test_module_basenames_are_unique():
    seen: dict[str, list[str]] = defaultdict(list)
    for path in TESTS.rglob("test_*.py"):
        seen[path.name].append(str(path.relative_to(TESTS)))
    assert {name: paths for name, paths in seen.items() if len(paths) > 1} == {}
