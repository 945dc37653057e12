"""Which accelerator this process can use, by ``peft``'s name ``infer_device``."""

from __future__ import annotations

import torch


def infer_device() -> str:
    """The device type tensors should go to: ``"cuda"``, ``"mps"``, ``"xpu"``, ``"npu"`` when one
    is usable, else ``"cpu"`` (peft's order).

    Example::

        >>> import torch
        >>> infer_device() == ("cuda" if torch.cuda.is_available() else infer_device())
        True
    """
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    for name in ("xpu", "npu"):
        backend = getattr(torch, name, None)
        if backend is not None and backend.is_available():
            return name
    return "cpu"
