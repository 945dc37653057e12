"""Libraries that look for ``peft``'s adapter layers find peftkit's.

diffusers (``fuse_lora``, ``unfuse_lora``, ``set_adapters``, ``disable_lora``, per-call LoRA
scales), TRL (its check that no adapter sits on the LM head) and transformers' adapter methods walk
a model's modules and act on those that are ``isinstance(module, peft.tuners.tuners_utils.BaseTunerLayer)``.
``BaseTunerLayer`` is an abstract base class, so peftkit declares its :class:`~peftkit.layers.AdapterLayer`
a virtual subclass of it (``BaseTunerLayer.register``): those checks then see peftkit's layers, which
answer the part of peft's layer API these libraries call (``merge(adapter_names=, safe_merge=)``,
``unmerge``, ``merged_adapters``, ``enable_adapters``, ``set_adapter``, ``delete_adapter``,
``active_adapters``, ``get_base_layer``, and for LoRA ``set_scale`` / ``scale_layer`` / ``unscale_layer``).

Without ``peft`` installed there is nothing to register, and those libraries' peft code paths
refuse to run on their own ("PEFT backend is required"), loudly.

Example:
    >>> from peftkit.integrations.peft import register_adapter_layers
    >>> register_adapter_layers()      # True when peft is installed  # doctest: +SKIP
"""

from __future__ import annotations

import importlib.util

from ..layers import AdapterLayer


def peft_installed() -> bool:
    """Whether the ``peft`` package can be imported."""
    try:
        return importlib.util.find_spec("peft") is not None
    except (ImportError, ValueError):  # a module set to None in sys.modules (blocked) raises ValueError
        return False


def register_adapter_layers() -> bool:
    """Make ``isinstance(layer, peft.tuners.tuners_utils.BaseTunerLayer)`` true for peftkit's adapter
    layers; returns whether peft is installed (and so whether anything was registered). Idempotent."""
    if not peft_installed():
        return False
    from peft.tuners.tuners_utils import BaseTunerLayer

    if not issubclass(AdapterLayer, BaseTunerLayer):
        BaseTunerLayer.register(AdapterLayer)
    return True
