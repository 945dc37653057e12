"""Finding modules by path: get_submodules (peft's _get_submodules)."""

from __future__ import annotations

import torch.nn as nn

from peftkit.tree import get_submodules


def test_get_submodules_returns_parent_module_and_name():
    inner = nn.Linear(2, 2)
    root = nn.Sequential(nn.Sequential(inner))
    parent, module, name = get_submodules(root, "0.0")
    assert parent is root[0] and module is inner and name == "0"
    parent, module, name = get_submodules(root, "0")
    assert parent is root and module is root[0] and name == "0"
