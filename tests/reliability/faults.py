"""What the reliability campaign needs besides pytest: snapshots of a model's and a folder's state
(every error must leave both as they were), hostile files, and the machine faults that this
machine allows (a full disk, a read-only folder), each skipped cleanly where it does not."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import resource
import signal
import struct
import subprocess
import uuid
from pathlib import Path
from typing import Iterator

import pytest
import torch
import torch.nn as nn


# --------------------------------------------------------------------------- state snapshots
def model_state(model: nn.Module) -> tuple:
    """Module objects, parameter values, requires_grad flags, adapters and the active ones."""
    params = {n: (p.detach().clone(), p.requires_grad) for n, p in model.named_parameters()}
    from peftkit import PeftModel

    adapters = sorted(model.peft_config) if isinstance(model, PeftModel) else []
    active = model.active_adapters if isinstance(model, PeftModel) else []
    return [(n, id(m)) for n, m in model.named_modules()], params, adapters, active


def assert_model_unchanged(model: nn.Module, before: tuple) -> None:
    modules, params, adapters, active = model_state(model)
    assert modules == before[0], "modules changed"
    assert adapters == before[2] and active == before[3], (adapters, active)
    assert params.keys() == before[1].keys()
    for name, (value, flag) in params.items():
        old, old_flag = before[1][name]
        assert flag == old_flag, f"requires_grad of {name} changed"
        assert torch.equal(torch.nan_to_num(value), torch.nan_to_num(old)), f"{name} changed"


def folder_state(root: Path) -> dict[str, str]:
    """Relative path -> sha256 (``<dir>`` for folders) of everything under ``root``."""
    if not root.exists():
        return {}
    found = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        found[rel] = "<dir>" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return found


# --------------------------------------------------------------------------- hostile files
def safetensors_bytes(header: dict, data: bytes = b"", length: int | None = None) -> bytes:
    """A safetensors file from a header dict and data; ``length`` lies about the header's length."""
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


class PickleBomb:
    """Unpickling this creates the marker file: proof that a file was unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


# --------------------------------------------------------------------------- machine faults
def _can_mount() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


@contextlib.contextmanager
def small_disk(path: Path, size_kb: int) -> Iterator[Path]:
    """A real file system of ``size_kb`` KiB mounted at ``path`` (a tmpfs; needs root and
    CAP_SYS_ADMIN, else the test is skipped): writing past its size fails with ENOSPC."""
    path.mkdir(parents=True, exist_ok=True)
    if not _can_mount() or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(path)],
                                          capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root with CAP_SYS_ADMIN)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[Path]:
    """Make the folder ``path`` (already filled) read-only for this process: a read-only bind mount
    as root (chmod does not stop root), chmod otherwise; skipped where neither works."""
    if _can_mount():
        if subprocess.run(["mount", "--bind", "-o", "ro", str(path), str(path)], capture_output=True).returncode == 0:
            if os.access(path, os.W_OK):  # older mount: the bind comes up writable until remounted
                subprocess.run(["mount", "-o", "remount,bind,ro", str(path)], capture_output=True)
            try:
                if os.access(path, os.W_OK):
                    pytest.skip("cannot make a read-only bind mount here")
                yield path
            finally:
                subprocess.run(["umount", "-l", str(path)], capture_output=True)
            return
        pytest.skip("cannot make a read-only bind mount here")
    mode = path.stat().st_mode
    os.chmod(path, 0o555)
    try:
        if os.access(path, os.W_OK):
            pytest.skip("chmod does not make folders read-only for this user")
        yield path
    finally:
        os.chmod(path, mode)


@contextlib.contextmanager
def file_size_limit(max_bytes: int) -> Iterator[None]:
    """Writes past ``max_bytes`` in any one file fail with EFBIG (RLIMIT_FSIZE, SIGXFSZ ignored):
    a disk that fills up at a chosen point, for this process only. Keep the block free of output."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def unique_name() -> str:
    return uuid.uuid4().hex[:8]
