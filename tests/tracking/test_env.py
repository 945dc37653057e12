"""Environment capture for run.json: packages, Python, OS, device, the git state of the directory a
run starts in (clean, dirty, not a repository) and data fingerprints."""

from __future__ import annotations

import hashlib
import shutil
import subprocess

import pytest

from peftkit.tracking import env


def git(cwd, *args):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_git_commit_and_dirty_state(tmp_path):
    assert env.git_state(str(tmp_path)) is None  # not a repository
    git(tmp_path, "init", "-q", "-b", "main")
    git(tmp_path, "config", "user.email", "t@example.org")
    git(tmp_path, "config", "user.name", "t")
    (tmp_path / "run.yaml").write_text("a: 1\n")
    git(tmp_path, "add", "run.yaml")
    git(tmp_path, "commit", "-qm", "first")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    state = env.git_state(str(tmp_path))
    assert state == {"commit": head, "branch": "main", "dirty": False, "root": str(tmp_path.resolve())}
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "new.txt").write_text("untracked outputs do not make it dirty")
    assert env.git_state(str(tmp_path))["dirty"] is False
    (tmp_path / "run.yaml").write_text("a: 2\n")
    assert env.git_state(str(tmp_path))["dirty"] is True
    assert env.git_state(str(tmp_path / "runs"))["commit"] == head  # any folder inside the repository


def test_git_missing_is_not_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no git on the PATH
    assert env.git_state(str(tmp_path)) is None


def test_capture_has_what_a_reproduction_needs(tmp_path):
    captured = env.capture(str(tmp_path))
    assert {"python", "os", "device", "gpus", "cuda", "packages", "git", "cwd", "argv"} <= set(captured)
    assert {"torch", "transformers", "accelerate", "peftkit"} <= set(captured["packages"])
    assert captured["device"].startswith(("cpu", "cuda", "mps")) and captured["cwd"] == str(tmp_path)


def test_data_fingerprints(tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text('{"text": "hello"}\n')
    prints = env.data_fingerprints({"train": str(data), "eval": None, "hub": "user/dataset"})
    assert prints == {"train": {"path": str(data), "sha256": hashlib.sha256(data.read_bytes()).hexdigest()},
                      "hub": {"path": "user/dataset", "sha256": None}}
