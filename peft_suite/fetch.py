"""Fetch the tests of the ``peft`` release pinned in requirements/lock.txt from its sdist on PyPI.

Nothing of peft is committed: the sdist is downloaded with ``pip download`` and its ``tests/``
unpacked into ``.peft-suite-cache/peft-<version>/`` (ignored by git), once per version.

Example::

    python -m peft_suite.fetch          # prints the folder holding peft's tests/
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".peft-suite-cache"
LOCK = ROOT / "requirements" / "lock.txt"

# peft's tests import their helpers relatively (``from .testing_common import ...``) but the sdist
# ships no ``tests/__init__.py``; and its pyproject adds coverage options we do not want. These two
# small files, written by us into the cache, make the folder runnable on its own.
_INIT = '"""peft\'s tests, unpacked by peft_suite.fetch (not part of peftkit)."""\n'
_PYTEST_INI = """[pytest]
markers =
    single_gpu_tests: tests that run on a single GPU
    multi_gpu_tests: tests that run on multiple GPUs
    regression: whether to run regression suite test
    bitsandbytes: select bitsandbytes integration tests
"""


def locked_peft_version(lock: Path = LOCK) -> str:
    """The ``peft`` version pinned in the lock file.

    Example::

        >>> locked_peft_version()   # doctest: +SKIP
        '0.21.2'
    """
    for line in lock.read_text().splitlines():
        match = re.fullmatch(r"peft==([^\s;#]+)", line.strip())
        if match:
            return match.group(1)
    raise SystemExit(f"{lock}: no 'peft==<version>' line; the peft suite runs the locked peft version's tests")


def suite_dir(version: str | None = None) -> Path:
    """The folder holding peft's ``tests/`` for ``version`` (the locked one by default).

    Example::

        >>> suite_dir("0.21.2").name
        'peft-0.21.2'
    """
    return CACHE / f"peft-{version or locked_peft_version()}"


def fetch(version: str | None = None) -> Path:
    """Download and unpack peft's tests for ``version`` unless already there; return the folder.

    Example::

        >>> (fetch() / "tests" / "test_config.py").is_file()   # doctest: +SKIP
        True
    """
    version = version or locked_peft_version()
    target = suite_dir(version)
    if (target / "tests" / "test_config.py").is_file():
        return target
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", f"peft=={version}", "--no-binary", ":all:",
             "--no-deps", "--disable-pip-version-check", "-q", "-d", tmp],
            check=True,
        )
        (sdist,) = Path(tmp).glob("peft-*.tar.gz")
        _unpack_tests(sdist, target, prefix=f"peft-{version}/tests/")
    (target / "tests" / "__init__.py").write_text(_INIT)
    (target / "pytest.ini").write_text(_PYTEST_INI)
    return target


def _unpack_tests(sdist: Path, target: Path, prefix: str) -> None:
    """Extract only ``tests/`` of the sdist, refusing members that would land outside ``target``."""
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)  # left by an interrupted earlier fetch
    with tarfile.open(sdist) as archive:
        members = [m for m in archive.getmembers() if m.name.startswith(prefix) and (m.isfile() or m.isdir())]
        if not members:
            raise SystemExit(f"{sdist.name}: no {prefix} folder; cannot run peft's suite from it")
        for member in members:
            member.name = "tests/" + member.name[len(prefix):]
        archive.extractall(staging, members=members, filter="data")
    staging.rename(target)


if __name__ == "__main__":
    print(fetch())
