"""Run peft's test files against peftkit, one file at a time, and print the method x file table.

Example::

    python -m peft_suite.run                                  # the six files (make peft-suite)
    python -m peft_suite.run --ci                             # the quick fixed subset (make peft-suite-ci)
    python -m peft_suite.run --file test_config.py -k LoHa    # one file, a -k selection, for iteration

Results go to .peft-suite-cache/results/<file>.jsonl (one line per test, see plugin.py), the table
to .peft-suite-cache/report.md; with ``--file`` only that file's results are replaced.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from .fetch import CACHE, ROOT, fetch
from .report import load_results, render_markdown, render_text

FILES = ["test_config.py", "test_custom_models.py", "test_initialization.py", "test_tuners_utils.py",
         "test_other.py", "test_mixed.py"]
# The quick subset CI runs: fixed selections that exercise every implemented method's core paths
# (forward, merge, disable, save/load) in a few minutes on 2 cores.
CI_SUBSET = [
    ("test_config.py", None),
    ("test_custom_models.py", "test_forward_output_finite or test_merge_layers or test_disable_adapters "
                              "or test_save_load_roundtrip or test_only_params_are_updated"),
]
RESULTS = CACHE / "results"
REPORT = CACHE / "report.md"


def run_file(suite: Path, name: str, keyword: str | None, results: Path) -> tuple[int, float, str]:
    """Run one of peft's test files under the alias; returns (pytest exit code, seconds, last output line)."""
    results.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "peft_suite" / "alias"), str(ROOT)]),
           "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "PEFT_SUITE_RESULTS": str(results), "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "peft_suite.plugin",
               "-c", str(suite / "pytest.ini"), "--rootdir", str(suite), "-q", "--no-header", "-rN",
               "-W", "ignore", str(suite / "tests" / name)]
    if keyword:
        command += ["-k", keyword]
    start = time.monotonic()
    done = subprocess.run(command, env=env, cwd=suite, capture_output=True, text=True)
    seconds = time.monotonic() - start
    tail = (done.stdout.strip().splitlines() or [""])[-1]
    if done.returncode not in (0, 1, 5):  # 2: collection error (the module did not import)
        tail = "did not run: " + _first_error(done.stdout + done.stderr)
    return done.returncode, seconds, tail


def _first_error(output: str) -> str:
    lines = [line for line in output.splitlines() if line.startswith("E ")]
    return (lines[-1][2:].strip() if lines else output.strip().splitlines()[-1] if output.strip() else "?")[:300]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--file", action="append", help="one of peft's test files (repeatable); default: all six")
    parser.add_argument("-k", dest="keyword", help="pytest -k selection within the file(s)")
    parser.add_argument("--ci", action="store_true", help="the fixed quick subset that CI runs")
    args = parser.parse_args(argv)
    suite = fetch()
    RESULTS.mkdir(parents=True, exist_ok=True)
    plan = CI_SUBSET if args.ci else [(name, args.keyword) for name in (args.file or FILES)]
    if args.ci:
        for stale in RESULTS.glob("*.jsonl"):
            stale.unlink()
    timings = {}
    for name, keyword in plan:
        code, seconds, tail = run_file(suite, name, keyword, RESULTS / f"{name}.jsonl")
        timings[name] = seconds
        print(f"{name}: {seconds:.0f} s  {tail}", flush=True)
    (RESULTS / "timings.json").write_text(json.dumps({**_old_timings(), **timings}, indent=1))
    results = load_results(RESULTS)
    print(render_text(results))
    REPORT.write_text(render_markdown(results))
    print(f"\ntable written to {REPORT.relative_to(ROOT)}")
    return 0


def _old_timings() -> dict:
    path = RESULTS / "timings.json"
    return json.loads(path.read_text()) if path.is_file() else {}


if __name__ == "__main__":
    raise SystemExit(main())
