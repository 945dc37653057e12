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


def get_submodules(root: nn.Module, key: str) -> tuple[nn.Module, nn.Module, str]:
    """``(parent, module, name)`` for the module at ``key``: what code replacing a module needs
    (peft's ``_get_submodules``).

    Example::

        >>> import torch.nn as nn
        >>> parent, module, name = get_submodules(nn.Sequential(nn.Sequential(nn.Linear(2, 2))), "0.0")
        >>> type(module).__name__, name
        ('Linear', '0')
    """
    parent_key, _, name = key.rpartition(".")
    return get_module(root, parent_key), get_module(root, key), name
