"""Run peft's test files against peftkit, one file at a time, and print the method x file table.

Example::

    python -m peft_suite.run                                  # the six files (make peft-suite)
    python -m peft_suite.run --ci                             # the quick fixed subset (make peft-suite-ci)
    python -m peft_suite.run --file test_config.py -k LoHa    # one file, a -k selection, for iteration
    python -m peft_suite.run --peftkit-at 4437295             # peftkit as committed then (before/after)

Results go to .peft-suite-cache/results/<file>.jsonl (one line per test, see plugin.py), the table
to .peft-suite-cache/report.md; with ``--file`` only that file's results are replaced. With
``--peftkit-at COMMIT`` the run imports peftkit's ``src/`` as of that commit (``git archive`` into
the cache) and writes results-<commit>/ and report-<commit>.md instead.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from .classify import NOT_IN_PEFTKIT
from .fetch import CACHE, ROOT, fetch
from .report import load_results, render_markdown, render_text

FILES = ["test_config.py", "test_custom_models.py", "test_initialization.py", "test_tuners_utils.py",
         "test_other.py", "test_mixed.py"]
# The quick subset CI runs (a few minutes on 2 cores): test_config whole, and a fixed 1-in-40
# sample of test_custom_models, which holds every implemented method's core checks (forward in
# fp16/bf16, merge, safe merge, disable, save/load) for all its model shapes.
CI_SUBSET = [("test_config.py", None, 1), ("test_custom_models.py", None, 40)]
# Files quick enough to run whole even when --sample is given.
ALWAYS_WHOLE = {"test_config.py"}
RESULTS = CACHE / "results"
REPORT = CACHE / "report.md"


def run_file(suite: Path, name: str, keyword: str | None, results: Path, peftkit_src: Path | None = None,
             sample: int = 1) -> tuple[int, float, str]:
    """Run one of peft's test files under the alias; returns (pytest exit code, seconds, last output line)."""
    results.unlink(missing_ok=True)
    paths = [ROOT / "peft_suite" / "alias", *([peftkit_src] if peftkit_src else []), ROOT]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, paths)),
           "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "PEFT_SUITE_RESULTS": str(results), "TOKENIZERS_PARALLELISM": "false", "PEFT_SUITE_SAMPLE": str(sample)}
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


def peftkit_source_at(commit: str) -> Path:
    """peftkit's ``src/`` as of ``commit``, unpacked once into the cache (its imports win over the
    editable install because PYTHONPATH comes first)."""
    sha = subprocess.run(["git", "rev-parse", "--short", commit], cwd=ROOT, check=True, capture_output=True,
                         text=True).stdout.strip()
    target = CACHE / f"peftkit-{sha}"
    if not (target / "src" / "peftkit").is_dir():
        target.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", sha, "src"], cwd=ROOT, check=True, capture_output=True).stdout
        subprocess.run(["tar", "x", "-C", str(target)], input=archive, check=True)
    return target / "src"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--file", action="append", help="one of peft's test files (repeatable); default: all six")
    parser.add_argument("-k", dest="keyword", help="pytest -k selection within the file(s)")
    parser.add_argument("--ci", action="store_true", help="the fixed quick subset that CI runs")
    parser.add_argument("--peftkit-at", metavar="COMMIT", help="run against peftkit's src/ as of COMMIT")
    parser.add_argument("--sample", type=int, default=1, metavar="K",
                        help="run a fixed 1-in-K sample of the applicable tests (by a hash of the test id)")
    parser.add_argument("--min-passed", type=float, metavar="PERCENT",
                        help="exit with 1 when fewer than PERCENT%% of the applicable tests of peftkit's methods pass")
    args = parser.parse_args(argv)
    suite = fetch()
    peftkit_src = peftkit_source_at(args.peftkit_at) if args.peftkit_at else None
    results_dir, report = RESULTS, REPORT
    if peftkit_src is not None:
        sha = peftkit_src.parent.name.removeprefix("peftkit-")
        results_dir, report = CACHE / f"results-{sha}", CACHE / f"report-{sha}.md"
    results_dir.mkdir(parents=True, exist_ok=True)
    plan = CI_SUBSET if args.ci else [(name, args.keyword, 1 if name in ALWAYS_WHOLE else args.sample)
                                      for name in (args.file or FILES)]
    if args.ci:
        for stale in results_dir.glob("*.jsonl"):
            stale.unlink()
    timings = {}
    for name, keyword, sample in plan:
        code, seconds, tail = run_file(suite, name, keyword, results_dir / f"{name}.jsonl", peftkit_src, sample)
        timings[name] = round(seconds, 1)
        print(f"{name}: {seconds:.0f} s  {tail}", flush=True)
    timings_file = results_dir / "timings.json"
    old = json.loads(timings_file.read_text()) if timings_file.is_file() else {}
    timings_file.write_text(json.dumps({**old, **timings}, indent=1))
    results = load_results(results_dir)
    print(render_text(results))
    report.write_text(render_markdown(results))
    print(f"\ntable written to {report.relative_to(ROOT)}")
    return _check_floor(results, args.min_passed)


def _check_floor(results: list[dict], floor: float | None) -> int:
    """1 when the share of passing applicable tests (all of peftkit's methods) is below ``floor``."""
    if floor is None:
        return 0
    applicable = [r for r in results if r["outcome"] in ("passed", "failed") and NOT_IN_PEFTKIT not in r["method"]]
    share = 100 * sum(r["outcome"] == "passed" for r in applicable) / max(len(applicable), 1)
    print(f"passed {share:.1f}% of {len(applicable)} applicable tests (floor {floor}%)")
    return 0 if share >= floor else 1


if __name__ == "__main__":
    raise SystemExit(main())
