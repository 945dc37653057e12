"""pytest plugin for running peft's tests against peftkit: classify each test, leave out the ones that
do not apply without running them, and write one JSON line per test to ``$PEFT_SUITE_RESULTS``.

Each line: ``{"nodeid", "file", "method", "outcome": "passed"|"failed"|"na", "reason", "seconds"}``;
tests that do not apply are recorded at collection and deselected, the others when they finish.
Loaded by ``peft_suite.run`` with ``-p peft_suite.plugin``.
"""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path
from typing import Any

import pytest

from .classify import method_of, runtime_not_applicable, static_not_applicable
from .differences import deliberate_difference

_RECORD_KEY = pytest.StashKey[dict]()


def in_sample(nodeid: str) -> bool:
    """Whether a test is in the fixed 1-in-``$PEFT_SUITE_SAMPLE`` sample of the applicable tests
    (all of them when unset): chosen by a hash of the test id, so every run and every peftkit
    version measures the same tests."""
    every = int(os.environ.get("PEFT_SUITE_SAMPLE") or 1)
    return every <= 1 or zlib.crc32(nodeid.encode()) % every == 0


def _params(item: pytest.Item) -> dict[str, Any]:
    callspec = getattr(item, "callspec", None)
    return dict(callspec.params) if callspec is not None else {}


@pytest.hookimpl(trylast=True)  # after -k / -m have deselected what the run leaves out
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Classify every test; record the ones that do not apply and drop them from the run (most of
    peft's parametrized cases are other methods': running them only to skip them costs minutes)."""
    kept, dropped, unsampled = [], [], []
    for item in items:
        params = _params(item)
        reason = static_not_applicable(params, item.nodeid) or deliberate_difference(item.nodeid)
        if not reason and not in_sample(item.nodeid):
            unsampled.append(item)  # not in this run's fixed sample: neither run nor counted
            continue
        record = {"nodeid": item.nodeid, "file": item.nodeid.split("::", 1)[0].rsplit("/", 1)[-1],
                  "method": method_of(params, item.nodeid), "outcome": None, "reason": "", "seconds": 0.0}
        if reason:
            _write({**record, "outcome": "na", "reason": reason})
            dropped.append(item)
        else:
            item.stash[_RECORD_KEY] = record
            kept.append(item)
    if dropped or unsampled:
        config.hook.pytest_deselected(items=dropped + unsampled)
        items[:] = kept


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Any:
    outcome = yield
    report = outcome.get_result()
    record = item.stash.get(_RECORD_KEY, None)
    if record is None:
        return
    record["seconds"] += report.duration
    if report.failed and record["outcome"] != "na":
        reason = runtime_not_applicable(call.excinfo.value) if call.excinfo is not None else None
        record["outcome"], record["reason"] = ("na", reason) if reason else ("failed", _short(report))
    elif report.skipped and record["outcome"] is None:
        record["outcome"], record["reason"] = "na", f"skipped by peft's suite: {_skip_reason(report)}"
    elif report.when == "call" and report.passed and record["outcome"] is None:
        record["outcome"] = "passed"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: Any) -> Any:
    yield  # setup, call and teardown have all reported when this resumes
    record = item.stash.get(_RECORD_KEY, None)
    if record is not None:
        _write(record)


def _write(record: dict) -> None:
    path = os.environ.get("PEFT_SUITE_RESULTS")
    if not path:
        return
    if record["outcome"] is None:  # e.g. an xfail that did not run its call phase
        record["outcome"], record["reason"] = "na", "not run"
    with Path(path).open("a") as out:
        out.write(json.dumps(record) + "\n")


def _short(report: pytest.TestReport) -> str:
    """The failure's first explanation line (``E ...``) and where in peft's tests it happened."""
    text = report.longreprtext or ""
    explanation = next((line[1:].strip() for line in text.splitlines() if line.startswith("E ")), "")
    crash = getattr(report.longrepr, "reprcrash", None)
    where = f" @ {Path(crash.path).name}:{crash.lineno}" if crash is not None else ""
    return ((explanation or (crash.message if crash is not None else "failed")).splitlines()[0][:240] + where)


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")[:200]
    return str(longrepr)[:200]
