"""Which accelerator this process can use (``peft``'s ``infer_device``), and which module classes
must stay whole on one device when a model is split across devices."""

from __future__ import annotations

import torch
import torch.nn as nn


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


def no_split_modules(model: nn.Module) -> set[str]:
    """The class names of modules that must not be split across devices (``device_map="auto"``):
    the ``_no_split_modules`` of ``model`` and of every transformers model inside it (a vision
    tower, a language model...), without looking inside a module that is itself listed. ``peft``'s
    ``_get_no_split_modules``; an empty set for a model that declares none.

    Example:
        >>> no_split_modules(nn.Linear(2, 2))
        set()
    """
    names: set[str] = set()
    if getattr(model, "_no_split_modules", None) is None:
        return names
    pending = [model]
    while pending:
        module = pending.pop()
        if type(module).__name__ in names:
            continue
        declared = getattr(module, "_no_split_modules", None)
        if declared:
            names |= set(declared)
        pending.extend(module.children())
    return names
