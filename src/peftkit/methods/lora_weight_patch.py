"""What LoRA layers share when the base module reads its weights itself instead of calling a
sub-module whose output could be added to: LoRA on parameters (MoE experts) and on
``nn.MultiheadAttention`` (its ``in_proj_weight`` is a bare parameter, and it reads ``out_proj.weight``
without calling ``out_proj``).

Such a layer runs the base module with ``W + delta`` in place of ``W``: :func:`shadowed` puts the
adapted tensor in the module's instance ``__dict__`` for the duration of one forward, where it
shadows the registered parameter (``nn.Module`` keeps parameters in ``_parameters`` and finds them
through ``__getattr__``, which is only asked when the instance has no such attribute). The
parameter itself is never touched, so optimizers, ``state_dict`` and hooks see the frozen base, and
gradients flow through the adapted tensor to A and B. Merging writes into the parameter instead.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn as nn

from ..errors import AdapterError, MixedBatchError
from ..layers import BASE_ADAPTER, warn_if_merged_already
from ..row_batches import merged_batch_error


@contextmanager
def shadowed(module: nn.Module, attr: str, value: torch.Tensor) -> Iterator[None]:
    """Inside, ``module.<attr>`` reads ``value``; the registered parameter is unchanged.

    Example:
        >>> lin = nn.Linear(2, 2)
        >>> with shadowed(lin, "weight", torch.zeros(2, 2)):
        ...     float(lin(torch.ones(1, 2)).sub(lin.bias).abs().sum())
        0.0
    """
    module.__dict__[attr] = value
    try:
        yield
    finally:
        module.__dict__.pop(attr, None)


def one_adapter_for_batch(layer, what: str) -> list[str]:
    """The adapter a mixed batch (``adapter_names=``) uses on a layer whose weight every row shares:
    fine when all rows name one adapter (or the base model), an :class:`AdapterError` otherwise.
    (The rows themselves are not counted here: an experts module sees tokens, not batch rows.)"""
    if layer.merged_adapters:
        raise merged_batch_error()
    used = set(layer.row_adapters)
    if len(used) > 1:
        raise MixedBatchError(  # peft's sentence (a TypeError there too), then why and what to do
            f"{layer.peft_name} does not support mixed adapter batches: {what} changes a weight that every row of "
            f"the batch shares, so one batch cannot mix adapters {sorted(used)}; run one adapter per batch"
        )
    name = used.pop()
    return [] if name == BASE_ADAPTER or name not in layer.adapter_names else [name]


class WeightMergeMixin:
    """Merging into ``self.base_weight()`` (any parameter, not only ``base_layer.weight``) with
    ``self.lowrank_weight(name)`` as the delta, and the choice of adapters one forward applies;
    for layers on a LoRA ``LoraLayer`` that adapt weights the base module reads itself."""

    def adapters_to_apply(self, what: str) -> list[str]:
        """The adapters whose updates this forward adds to the weights ([]: run the base as it is:
        disabled, which also unmerges, or merged, or none active); ``what`` names the layer in errors."""
        if self.disabled:
            if self.merged_adapters:
                self.unmerge()
            return []
        if self.row_adapters is not None:
            return one_adapter_for_batch(self, what)
        if self.merged_adapters:
            return []
        return [n for n in self.computing_adapters if n in self.adapter_names]

    def merge(self, adapter_names: list[str] | None = None, safe_merge: bool = False) -> None:
        names = self.computing_adapters if adapter_names is None else list(adapter_names)
        warn_if_merged_already(self, names)
        weight = self.base_weight()
        for name in [n for n in names if n in self.adapter_names and n not in self.merged_adapters]:
            delta = self.lowrank_weight(name).to(weight.dtype)
            if safe_merge and not torch.isfinite(weight.data + delta).all():
                raise AdapterError(f"NaNs detected in the merged weights. The adapter {name!r} seems to be broken: "
                                   "merging it gives NaN/inf weights; the base layer was left as it was")
            weight.data += delta
            self.merged_adapters.append(name)

    def unmerge(self) -> None:
        weight = self.base_weight()
        while self.merged_adapters:
            weight.data -= self.lowrank_weight(self.merged_adapters.pop()).to(weight.dtype)

    def merge_is_finite(self, adapter_name: str) -> bool:
        weight = self.base_weight()
        return bool(torch.isfinite(weight.data + self.lowrank_weight(adapter_name).to(weight.dtype)).all())
