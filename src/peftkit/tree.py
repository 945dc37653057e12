"""Small helpers to find and replace modules by their dotted path."""

from __future__ import annotations

import torch.nn as nn


def get_module(root: nn.Module, key: str) -> nn.Module:
    """The module at ``key`` (e.g. ``"model.layers.0.mlp"``); ``""`` is the root itself."""
    return root.get_submodule(key) if key else root


def set_module(root: nn.Module, key: str, new: nn.Module) -> nn.Module:
    """Put ``new`` at ``key`` in place of the current module; returns the module it replaced."""
    parent_key, _, name = key.rpartition(".")
    parent = get_module(root, parent_key)
    old = getattr(parent, name)
    setattr(parent, name, new)
    return old
