"""Which entries of a model's ``state_dict()`` belong to its adapters, found from the module tree.

An adapter's tensors are everything an adapter layer holds except the module it wraps
(``base_layer``), plus what the tuner holder (``peft_model.base_model``) keeps for all layers
(VeRA's shared ``vera_A`` / ``vera_B``). Modules trained in full (:class:`ModulesToSaveWrapper`),
and any adapter layer inside one, are not included: they are saved by their own rule. Working
from the tree rather than from key names means a base-model module that happens to be called
``lora_something`` is never mistaken for an adapter tensor.

``peft`` has the same two helpers under private names (``_get_tuner_state_dict_key_prefixes``,
``_filter_state_dict_by_key_prefixes``); the alias maps them here.

Example:
    >>> prefixes = adapter_key_prefixes(peft_model)  # doctest: +SKIP
    >>> sorted(filter_by_key_prefixes(peft_model.state_dict(), prefixes))  # doctest: +SKIP
    ['base_model.model.lin0.lora_A.default.weight', 'base_model.model.lin0.lora_B.default.weight']
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import torch.nn as nn

# what an adapter layer or the tuner holder wraps: the user's module, not adapter state
_WRAPPED_ATTRS = ("base_layer", "model")
_FSDP_PREFIX = "_fsdp_wrapped_module."


def _keyed_by_adapter(child: Any) -> Optional[set[str]]:
    """The adapter names a per-adapter container holds, or None when ``child`` is not one."""
    from .methods.vera import BufferDict

    if isinstance(child, (nn.ModuleDict, nn.ParameterDict)):
        return set(child.keys())
    if isinstance(child, BufferDict):
        return set(child._buffers)
    return None


def _attr_prefixes(module: nn.Module, path: str, adapter_name: Optional[str]) -> set[str]:
    names = [*(n for n, _ in module.named_children()),
             *(n for n, _ in module.named_parameters(recurse=False)),
             *(n for n, _ in module.named_buffers(recurse=False))]
    out: set[str] = set()
    for name in names:
        if name in _WRAPPED_ATTRS:
            continue
        prefix = f"{path}.{name}" if path else name
        held = _keyed_by_adapter(getattr(module, name)) if adapter_name is not None else None
        if held is None:
            out.add(prefix)
        elif adapter_name in held:
            out.add(f"{prefix}.{adapter_name}")
    return out


def is_under_prefixes(key: str, prefixes: set[str] | frozenset[str]) -> bool:
    """Whether ``key`` equals one of ``prefixes`` or lies below one, on ``"."`` boundaries
    (``"a.b"`` covers ``"a.b"`` and ``"a.b.c"``, not ``"a.bc"``). Cost: the key's depth.

    Example:
        >>> is_under_prefixes("lin0.lora_A.default.weight", {"lin0.lora_A"}), is_under_prefixes("lin0.lora_AB", {"lin0.lora_A"})
        (True, False)
    """
    if not prefixes:
        return False
    head = key
    while True:
        if head in prefixes:
            return True
        head, dot, _ = head.rpartition(".")
        if not dot:
            return False


def adapter_key_prefixes(model: nn.Module, adapter_name: Optional[str] = None) -> set[str]:
    """The ``state_dict()`` key prefixes of ``model``'s adapter tensors (``peft``'s
    ``_get_tuner_state_dict_key_prefixes``): one per attribute of each adapter layer other than its
    ``base_layer`` (``lin0.lora_A``, ``lin0.lora_B``, ...), and of the tuner holder other than the
    model (``base_model.vera_A``). Works on a :class:`~peftkit.PeftModel` and on a model with
    injected layers alike. Layers inside a :class:`~peftkit.ModulesToSaveWrapper`, and the wrapper
    itself, are left out. With ``adapter_name``, containers keyed by adapter (``ModuleDict``,
    ``ParameterDict``, VeRA's ``BufferDict``) are narrowed to that adapter's entry
    (``lin0.lora_A.other``); a container without it contributes nothing.

    Example:
        >>> model = get_peft_model(MLP(), LoraConfig(target_modules=["lin0"]))  # doctest: +SKIP
        >>> sorted(adapter_key_prefixes(model, "default"))  # doctest: +SKIP
        ['base_model.model.lin0.lora_A.default', 'base_model.model.lin0.lora_B.default', ...]
    """
    from .layers import AdapterLayer
    from .model import BaseModelHolder
    from .modules_to_save import ModulesToSaveWrapper

    prefixes: set[str] = set()
    saved_whole: set[str] = set()  # named_modules() yields a wrapper before what it holds
    for path, module in model.named_modules():
        path = path.removeprefix(_FSDP_PREFIX)  # state_dict() keys of an FSDP-wrapped model lack it
        if isinstance(module, ModulesToSaveWrapper):
            saved_whole.add(path)
        elif isinstance(module, BaseModelHolder) or (
            isinstance(module, AdapterLayer) and not is_under_prefixes(path, saved_whole)
        ):
            prefixes |= _attr_prefixes(module, path, adapter_name)
    return prefixes


def filter_by_key_prefixes(state_dict: Mapping[str, Any], prefixes: set[str] | frozenset[str]) -> dict[str, Any]:
    """The entries of ``state_dict`` whose key equals or lies below one of ``prefixes`` (on
    ``"."`` boundaries), in the state dict's order (``peft``'s ``_filter_state_dict_by_key_prefixes``).

    Example:
        >>> filter_by_key_prefixes({"a.b": 1, "a.b.c": 2, "a.bc": 3, "x.a.b": 4}, {"a.b"})
        {'a.b': 1, 'a.b.c': 2}
    """
    return {key: value for key, value in state_dict.items() if is_under_prefixes(key, prefixes)}
