"""``PeftMixedModel``: adapters of different methods on one model (``peft``'s mixed model).

A :class:`~peftkit.model.PeftModel` holds adapters of one method. A mixed model holds LoRA, LoHa,
LoKr, AdaLoRA and (IA)³ adapters side by side, and any of them may be active together. It reuses
each method's own layer: where a second method targets a module that is already adapted, its layer
wraps the layer that is there (``lin0`` becomes ``LoHaLayer(base_layer=LoraLinear(base_layer=
Linear))``), exactly as ``peft`` nests them. A layer adds its adapters to whatever its base returns,
so the methods compose in the order their layers were stacked: for the additive methods that is a
plain sum, and (IA)³ rescales everything stacked inside it. An adapter of a method whose layer is
the outermost one at a module joins that layer; otherwise it gets a new outer layer (peft's rule).

Which methods may mix is the registry's ``MethodSpec.mixable``; the core knows no method by name.
Saving writes each adapter in ``peft``'s own format and folder layout (``"default"`` in the folder,
every other adapter in a sub-folder of its name), which ``peft``'s mixed model cannot do.
"""

from __future__ import annotations

import warnings
from typing import Any, Optional, Union

import torch.nn as nn

from .config import PeftConfig
from .errors import AdapterError
from .layers import BASE_ADAPTER, AdapterLayer
from .model import PeftModel
from .names import adapter_name_list
from .registry import MethodSpec, base_layer_kinds, method_for_config, registered_methods
from .tree import get_module, set_module

# peft's MixedModel methods that code reaches through ``peft_model.base_model``
_BASE_MODEL_METHODS = ("set_adapter", "merge_adapter", "unmerge_adapter", "delete_adapter", "merge_and_unload", "unload")


def mixable_methods() -> list[str]:
    """The ``peft_type`` of every method whose adapters a mixed model accepts.

    Example:
        >>> "LORA" in mixable_methods() and "PREFIX_TUNING" not in mixable_methods()
        True
    """
    return sorted(name for name, spec in registered_methods().items() if spec.mixable)


def check_mixable(config: Any) -> MethodSpec:
    """The method of ``config``, or an :class:`AdapterError` (a ``ValueError``, worded as ``peft``'s)
    when its adapters cannot be mixed with others.

    Example:
        >>> from peftkit import LoHaConfig
        >>> check_mixable(LoHaConfig(target_modules=["q_proj"])).peft_type
        'LOHA'
    """
    if not isinstance(config, PeftConfig):
        raise TypeError(f"peft_config must be a peftkit config such as LoraConfig, got {type(config).__name__}")
    spec = method_for_config(config)
    _require_mixable(spec)
    return spec


def _require_mixable(spec: MethodSpec) -> None:
    if not spec.mixable:
        raise AdapterError(
            f"The provided `peft_type` '{spec.peft_type}' is not compatible with the `PeftMixedModel`. Compatible "
            f"types are: {mixable_methods()}. Methods that change the model's inputs (prompt, prefix tuning) or keep "
            "state outside the adapted layers cannot share a model with other methods; use a PeftModel "
            "(get_peft_model without mixed=True) for this adapter"
        )


class PeftMixedModel(PeftModel):
    """A model whose adapters may be of different methods, several active at once. Build it with
    ``get_peft_model(model, config, mixed=True)`` or :meth:`PeftMixedModel.from_pretrained`.

    Example:
        >>> import peftkit as pk
        >>> model = pk.get_peft_model(base, pk.LoraConfig(target_modules=["q_proj"]), "lora", mixed=True)  # doctest: +SKIP
        >>> model.add_adapter("loha", pk.LoHaConfig(target_modules=["q_proj", "v_proj"]))  # doctest: +SKIP
        >>> model.set_adapter(["lora", "loha"])  # both apply                              # doctest: +SKIP
    """

    def __init__(self, model: nn.Module, peft_config: Optional[PeftConfig], adapter_name: str = "default", **_: Any):
        if peft_config is not None:
            check_mixable(peft_config)
        super().__init__(model, peft_config, adapter_name)
        for name in _BASE_MODEL_METHODS:  # peft's spelling: peft_model.base_model.merge_adapter(...)
            self.base_model.__dict__[name] = getattr(self, name)

    # add_weighted_adapter may add a result of another method than the sources' (svd of LoHa adapters
    # gives a LoRA adapter): a mixed model holds it (peft's mixed model refuses add_weighted_adapter)
    _nests_methods = True

    @classmethod
    def _class_for_task(cls, task_type: Any) -> type["PeftMixedModel"]:
        return cls  # one class whatever the task, as in peft

    # ------------------------------------------------------------------ adding adapters
    def _check_method_fits(self, spec: MethodSpec) -> None:
        _require_mixable(spec)

    def _factory_refusal(self, spec: MethodSpec, key: str, module: nn.Module,
                         config: Optional[PeftConfig] = None) -> Optional[str]:
        base = module.get_base_layer() if isinstance(module, AdapterLayer) else module
        if any(kind.claims(base) for kind in base_layer_kinds()):
            return (f"module {key!r} is a quantized {type(base).__name__}; a mixed model adapts plain layers only "
                    "(peft refuses quantized layers in mixed models too). Use a PeftModel, or exclude the module")
        if spec.factory_for(base, config) is None:
            supported = ", ".join(f.label for f in spec.layer_factories if not f.quantized)
            return (f"module {key!r} is a {type(base).__name__}, which {spec.peft_type} cannot adapt (supported: "
                    f"{supported}). Narrow target_modules or add it to exclude_modules.")
        return None

    def _wrap(self, spec: MethodSpec, key: str, adapter_name: str, config: PeftConfig) -> None:
        """Join the method's layer if it is the outermost one at ``key``, else stack a new layer on
        top. The new layer is built around the original module (so it sees the real layer type and
        weight), then given the current stack as its base."""
        model = self.get_base_model()
        outer = get_module(model, key)
        if isinstance(outer, spec.layer_cls):
            outer.add_adapter(adapter_name, config, key)
            layer = outer
        else:
            base = outer.get_base_layer() if isinstance(outer, AdapterLayer) else outer
            layer = spec.factory_for(base, config).build(base, adapter_name, config, key)
            if outer is not base:
                layer.base_layer = outer
            set_module(model, key, layer)
        if isinstance(layer.base_layer, AdapterLayer):
            reason = layer.stacking_refusal(adapter_name)
            if reason:
                raise AdapterError(reason)

    # ------------------------------------------------------------------ selecting and removing adapters
    def _check_names(self, names: Any, allow_base: bool = False, field: str = "adapter_name", allow_list: bool = True) -> list[str]:
        names = adapter_name_list(names, field, allow_list)
        known = set(self.peft_config) | ({BASE_ADAPTER} if allow_base else set())
        missing = sorted({n for n in names if n not in known})
        if missing:  # peft's wording, which code written for peft matches
            raise AdapterError(f"Adapter(s) {missing} not found, available adapters: {sorted(self.peft_config)}")
        return names

    def set_adapter(self, adapter_name: Union[str, list[str]], inference_mode: bool = False) -> None:
        """Make the named adapters active, of any methods. They apply in the order their layers are
        stacked (the order they were added), not in the order given here, as in ``peft``. Merged
        adapters are unmerged first (with a warning). ``inference_mode=True`` keeps them frozen."""
        names = self._check_names(adapter_name)
        if any(layer.merged_adapters for layer in self._adapter_layers()):
            warnings.warn("Adapter cannot be set when the model is merged. Unmerging the model first.")
            self.unmerge_adapter()
        by_method: dict[str, list[str]] = {}
        for name in names:
            by_method.setdefault(self.peft_config[name].peft_type, []).append(name)
        for mine in by_method.values():  # a method's own limit holds among its adapters
            limit = method_for_config(self.peft_config[mine[0]]).max_active_adapters
            if limit is not None and len(mine) > limit:
                raise AdapterError(f"{self.peft_config[mine[0]].peft_type} allows {limit} active adapter(s) at a time, got {mine}")
        self._active = names
        self._apply_trainability()
        if inference_mode:
            for _, module in self._adapter_modules():
                module.set_adapter(self._active, trainable=False)

    def delete_adapter(self, adapter_name: Union[str, list[str]]) -> None:
        """Remove one adapter or a list of them; nothing is removed if any of them is merged. When no
        active adapter is left, each adapted module falls back to its first remaining adapter, and
        those become the active ones (``peft``'s rule)."""
        names = list(dict.fromkeys(self._check_names(adapter_name)))
        merged = sorted({n for layer in self._adapter_layers() for n in layer.merged_adapters} & set(names))
        if merged:
            raise AdapterError(f"Cannot delete adapter(s) {merged} while they are merged. Please unmerge them first.")
        active = [n for n in self._active if n not in names]
        for name in names:
            super().delete_adapter(name)
        if not active and self.peft_config:
            fallback = {layer.adapter_names[0] for layer in self._adapter_layers() if layer.adapter_names}
            active = [n for n in self.peft_config if n in fallback]
        self._active = active
        self._apply_trainability()
