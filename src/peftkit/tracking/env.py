"""What a person needs to reproduce a run besides its config: package versions, Python, OS, device,
the git state of the directory the run was started in, and fingerprints of the data files.

Everything here is best effort: a missing ``git``, a directory that is not a repository or a data
set named by a Hub id gives ``None`` for that part, never an error.

>>> env = capture()                                       # doctest: +SKIP
>>> env["git"]                                            # doctest: +SKIP
{'commit': '0239767...', 'branch': 'main', 'dirty': False, 'root': '/work/project'}
"""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Optional

PACKAGES = ("peftkit", "torch", "transformers", "accelerate", "datasets", "safetensors", "tokenizers", "peft",
            "numpy", "tensorboard", "tensorboardX", "mlflow", "mlflow-skinny", "wandb")


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """``{name: version}`` of the installed ones among ``names``."""
    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


def device_info() -> dict[str, Any]:
    """``device`` (one readable line), ``gpus`` (names) and the CUDA version torch was built with."""
    import torch

    if torch.cuda.is_available():
        gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        line = f"cuda: {gpus[0]}" + (f" (x{len(gpus)})" if len(gpus) > 1 else "")
        return {"device": line, "gpus": gpus, "cuda": torch.version.cuda}
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return {"device": "mps", "gpus": [platform.processor() or "apple"], "cuda": None}
    return {"device": f"cpu ({os.cpu_count()} cores)", "gpus": [], "cuda": None}


def _git(args: list[str], cwd: str) -> Optional[str]:
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):  # no git, or it hangs
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_state(cwd: Optional[str] = None) -> Optional[dict[str, Any]]:
    """The commit, branch and dirty state of the repository holding ``cwd`` (default: the current
    directory), or None outside a repository. ``dirty`` counts changes to tracked files only: run
    folders and other untracked outputs inside the repository do not make it dirty."""
    cwd = cwd or os.getcwd()
    root = _git(["rev-parse", "--show-toplevel"], cwd)
    if not root:
        return None
    commit = _git(["rev-parse", "HEAD"], cwd)  # None in a repository without commits
    status = _git(["status", "--porcelain", "--untracked-files=no"], cwd)
    branch = _git(["rev-parse", "--abbrev-ref", "HEAD"], cwd)
    return {"commit": commit, "branch": branch if branch != "HEAD" else None,
            "dirty": bool(status) if status is not None else None, "root": root}


def file_digest(path: str, chunk: int = 1 << 20) -> Optional[str]:
    """sha256 of a file (hex), or None when ``path`` is not a local file (a Hub dataset id)."""
    if not os.path.isfile(path):
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def data_fingerprints(paths: dict[str, Optional[str]]) -> dict[str, Any]:
    """``{"train": {"path": ..., "sha256": ...}, ...}`` for the data files of a run (None entries skipped):
    ``reproduce`` compares them to tell a changed data file from a changed result."""
    return {role: {"path": path, "sha256": file_digest(os.path.expanduser(path))}
            for role, path in paths.items() if path}


def capture(cwd: Optional[str] = None) -> dict[str, Any]:
    """The environment block of ``run.json``."""
    return {
        "python": sys.version.split()[0],
        "os": platform.platform(),
        **device_info(),
        "packages": package_versions(),
        "git": git_state(cwd),
        "cwd": cwd or os.getcwd(),
        "argv": list(sys.argv),
    }
