"""Merging adapters into the base weights, and removing adapter layers: the part of
:class:`~peftkit.model.PeftModel` that rewrites base weights or module trees."""

from __future__ import annotations

import warnings
from collections import Counter
from typing import Optional

import torch.nn as nn

from .errors import AdapterError, MergeError
from .layers import AdapterLayer, layer_stack
from .registry import base_layer_kinds
from .tree import set_module


class MergeMixin:
    """``merge_adapter``, ``unmerge_adapter``, ``merge_and_unload`` and ``unload`` for PeftModel.

    Example:
        >>> plain = peft_model.merge_and_unload(safe_merge=True)  # doctest: +SKIP
    """

    def merge_adapter(self, adapter_names: Optional[list[str]] = None, safe_merge: bool = False) -> None:
        """Add the (active, or named) adapters into the base weights; forward then costs nothing extra.
        With ``safe_merge`` every merged weight is checked for NaN/inf before any is changed."""
        names = self._active if adapter_names is None else self._check_names(adapter_names, field="adapter_names")
        layers = list(self._adapter_layers())
        # Without adapter_names each layer merges what it computes with: its own active adapters
        # (a layer.set_adapter([...]) call may have changed them), so merged equals unmerged output.
        chosen = {id(layer): (layer.computing_adapters if adapter_names is None else names) for layer in layers}
        if adapter_names is None:
            names = list(dict.fromkeys([*names, *(n for layer in layers for n in layer.computing_adapters)]))
        if self.peft_config and self._method().merge_error:  # e.g. prompt learning: nothing to merge into
            raise AdapterError(self._method().merge_error)
        if layers and not self._method().layer_cls.mergeable:
            raise AdapterError(f"{self._method().peft_type} adapters cannot be merged into the base weights")
        for layer in layers:  # a layer that cannot take an adapter refuses before anything is merged
            for name in names:
                reason = name in layer.adapter_names and name not in layer.merged_adapters and layer.merge_refusal(name)
                if reason:
                    raise MergeError(f"{reason}; nothing was merged")
        if safe_merge:
            for layer in layers:
                for name in chosen[id(layer)]:
                    if name in layer.adapter_names and name not in layer.merged_adapters:
                        if not layer.merge_is_finite(name):
                            raise AdapterError(
                                f"NaNs detected in the merged weights. The adapter {name!r} seems to be broken: merging "
                                f"it into {layer.key!r} gives NaN/inf weights; nothing was merged"
                            )
        for kind in base_layer_kinds():  # may refuse (quantized bases: too much rounding); nothing is merged yet
            kind.check_merge(self, layers, names)
        _check_stacked_merge(layers, names)
        self._untie_before_merge(layers, names)
        # Innermost first: where a mixed model stacked layers, an outer layer acts on the output of
        # the ones inside it, so their deltas must already be in the weight when it merges.
        for layer in reversed(layers):
            layer.merge(chosen[id(layer)])

    def _untie_before_merge(self, layers: list[AdapterLayer], names: list[str]) -> None:
        """A weight shared with another module (a tied input embedding and LM head) gets its own
        copy before merging, so merging changes only the adapted module, exactly as unmerged."""
        model = self.get_base_model()
        uses = Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))
        for layer in layers:
            base = layer.get_base_layer()
            w = getattr(base, "weight", None)  # None: a layer on another parameter (MoE experts)
            unmerged = any(n in layer.adapter_names and n not in layer.merged_adapters for n in names)
            # layers tied on purpose (ensure_weight_tying) share one adapter: merged once, they stay tied
            tied = any(layer.__dict__.get("tied_layers", {}).get(n) for n in names)
            if w is not None and uses[id(w)] > 1 and unmerged and not tied:
                base.weight = nn.Parameter(w.detach().clone(), requires_grad=w.requires_grad)
                warnings.warn(f"{layer.key!r} shares its weight with another module (tied embeddings); merging unties it")
                if getattr(getattr(model, "config", None), "tie_word_embeddings", False):
                    model.config.tie_word_embeddings = False  # saved merged models must not re-tie on load

    def add_weighted_adapter(self, adapters: list[str], weights: list[float], adapter_name: str,
                             combination_type: Optional[str] = None, svd_rank: Optional[int] = None,
                             svd_clamp: Optional[float] = None, svd_full_matrices: bool = True,
                             svd_driver: Optional[str] = None, density: Optional[float] = None,
                             majority_sign_method: str = "total"):
        """Add ``adapter_name``, the weighted combination of ``adapters`` (``peft``'s arguments);
        negative weights subtract. ``combination_type``: ``svd`` (the default for LoRA), ``cat``
        (exact), ``linear``, ``ties``, ``dare_linear``, ``dare_ties``, ``magnitude_prune``, or an
        ``*_svd`` variant of the last four; for (IA)³ the default is ``linear`` (exact). ``svd_rank``
        (default: the largest source rank), ``svd_clamp``, ``svd_full_matrices``, ``svd_driver``
        shape the svd types; ``density`` and ``majority_sign_method`` the pruning types. Returns a
        :class:`~peftkit.arithmetic.CombinationReport` (rank and relative error per module). The
        new adapter is inactive: ``set_adapter(adapter_name)`` to use it. Where peftkit and peft
        differ, and why: docs/adapter-arithmetic.md.

        Example:
            >>> model.add_weighted_adapter(["a", "b"], [1.0, -0.5], "a_minus_b", combination_type="cat")  # doctest: +SKIP
        """
        from .arithmetic.combine import add_weighted_adapter

        return add_weighted_adapter(self, adapters, weights, adapter_name, combination_type, svd_rank, svd_clamp,
                                    svd_full_matrices, svd_driver, density, majority_sign_method)

    def unmerge_adapter(self) -> None:
        """Take merged adapters out of the base weights again."""
        for layer in self._adapter_layers():
            layer.unmerge()

    def merge_and_unload(self, progressbar: bool = False, safe_merge: bool = False, adapter_names: Optional[list[str]] = None) -> nn.Module:
        """Merge the adapters and return the plain base model (adapter layers removed)."""
        self.merge_adapter(adapter_names, safe_merge=safe_merge)
        return self.unload()

    def unload(self) -> nn.Module:
        """Remove every adapter layer without merging and return the base model. Saved modules
        (``modules_to_save``) keep the active adapter's trained copy, as in ``peft``."""
        model = self.get_base_model()
        for key, module in reversed(list(self._adapter_modules())):  # nested layers: the inner one first
            if isinstance(module, AdapterLayer):
                released = module.release_base_layer()  # parts inside restored (attention's out_proj)
                while isinstance(released, AdapterLayer):  # the original module, under any stack
                    released = released.release_base_layer()
                set_module(model, key, released)
            else:
                keep = module.modules_to_save[module.active_adapter] if module.active_adapter else module.original_module
                set_module(model, key, keep)
        self.peft_config.clear()
        self._active = []
        return model


def _check_stacked_merge(layers: list[AdapterLayer], names: list[str]) -> None:
    """Refuse a merge that would change what a model stacking layers (a mixed model) computes. A
    layer that transforms its base's output rather than adding to it ((IA)³ rescales) merges into
    the weight under every layer stacked inside it; that is right only if those layers add nothing
    unmerged, so each of their active adapters must be merged already or be merged now."""
    for layer in layers:
        if layer.additive or not any(n in layer.adapter_names and n not in layer.merged_adapters for n in names):
            continue
        for inner in layer_stack(layer.base_layer):
            pending = [n for n in inner.computing_adapters if n not in inner.merged_adapters and n not in names]
            if pending:
                raise AdapterError(
                    f"merging {type(layer).__name__} adapters into {layer.key!r} would also rescale what the active "
                    f"adapter(s) {pending} stacked inside it add, and they stay unmerged; merge them too "
                    f"(adapter_names=[..., {pending[0]!r}]) or deactivate them first; nothing was merged"
                )
