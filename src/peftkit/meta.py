"""Adapter tensors on the meta device (``low_cpu_mem_usage=True``): moved there when an adapter is
injected (its values are to come from a state dict), given real storage when one is loaded.

Example::

    >>> import torch.nn as nn
    >>> layer = nn.Linear(2, 2)
    >>> move_to_meta(layer, [layer.weight])
    >>> layer.weight.device.type, layer.bias.device.type
    ('meta', 'cpu')
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn as nn


def move_to_meta(root: nn.Module, params: Iterable[nn.Parameter]) -> None:
    """Replace each of ``params`` (parameters somewhere in ``root``) by a meta parameter of the same
    shape, dtype and ``requires_grad``: its storage is released until a state dict fills it."""
    chosen = {id(p) for p in params}
    for module in root.modules():
        for name, param in list(module._parameters.items()):
            if param is not None and id(param) in chosen and not param.is_meta:
                module._parameters[name] = nn.Parameter(torch.empty_like(param, device="meta"),
                                                        requires_grad=param.requires_grad)


def assign_into_meta(root: nn.Module, targets: dict[int, torch.Tensor]) -> None:
    """Give each meta parameter of ``root`` named in ``targets`` (``id(parameter)`` -> value) a real
    tensor: the value in the parameter's dtype, on the value's device (copying into a meta tensor
    would silently keep nothing). The parameter object is replaced in its module, keeping
    ``requires_grad``."""
    for module in root.modules():
        for name, param in list(module._parameters.items()):
            if param is not None and id(param) in targets:
                value = targets[id(param)].to(dtype=param.dtype)
                module._parameters[name] = nn.Parameter(value.clone(), requires_grad=param.requires_grad)
