"""``LoraConfig.lora_bias``: a trainable bias on ``lora_B``, as in ``peft``.

The adapter's output becomes ``scaling * (B A x + b)``: ``lora_B`` is an ``nn.Linear`` / conv with a
bias, saved as ``lora_B.bias`` beside ``lora_B.weight`` (``peft``'s key layout). It starts at zero
with ``init_lora_weights=True`` (random with ``False``; other inits are refused, as in peft), so a new
adapter is a no-op.

Merging adds ``scaling * b`` to the base layer's bias. Like ``peft``, peftkit never creates a bias
the base layer does not have: adding such an adapter warns, and merging it is refused (a merged
model whose layers gained biases would no longer match its own config when saved by
``transformers``). The rules ``peft`` sets on the config (only ``init_lora_weights`` True/False, no
DoRA) are checked in :meth:`peftkit.methods.lora.LoraConfig.check`; layer types without a bias slot
(embeddings, LoRA on parameters) refuse it by name.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Optional

import torch

from ..errors import AdapterError, MergeError, PeftWarning, TargetError

if TYPE_CHECKING:
    from .lora import LoraConfig
    from .lora_layers import LoraLayer


def check_lora_bias(layer: "LoraLayer", config: "LoraConfig", key: str) -> None:
    """Refuse ``lora_bias`` on layer types that cannot hold it; warn where merging will be refused.

    Example:
        >>> check_lora_bias(layer, LoraConfig(lora_bias=True), "model.embed_tokens")  # doctest: +SKIP
        TargetError: lora_bias=True: LoraEmbedding ('model.embed_tokens') has no bias for lora_B ...
    """
    if not getattr(config, "lora_bias", False):
        return
    if not layer.supports_lora_bias:
        kind = type(layer).__name__.removeprefix("Lora")
        raise TargetError(  # peft's sentence (its tests match it), then the fix
            f"lora_bias=True is not supported for {kind} ({key!r}): its lora_B cannot have a bias (neither in "
            "peft); exclude the module with exclude_modules or set lora_bias=False"
        )
    if getattr(layer.base_layer, "bias", None) is None:
        warnings.warn(  # peft's sentence (its tests match it), then what it means
            f"`lora_bias=True` was passed but the targeted layer of type {type(layer.base_layer).__name__} has no "
            f"bias ({key!r}): the adapter trains, but it cannot be merged into the base weights",
            PeftWarning,
            stacklevel=4,
        )


@torch.no_grad()
def merged_lora_bias(layer: "LoraLayer", names: list[str], sign: float, check_finite: bool) -> Optional[torch.Tensor]:
    """The base bias after adding (``sign=1``) or removing (``-1``) the ``lora_B`` biases of ``names``,
    in the base bias's dtype; None when none of them has a bias. Refuses (nothing changed) when the
    base layer has no bias, or, with ``check_finite``, when the result is not finite.

    Example:
        >>> merged_lora_bias(layer, ["default"], sign=1.0, check_finite=True)  # doctest: +SKIP
        tensor([...])
    """
    biased = [n for n in names if layer.lora_bias.get(n)]
    if not biased:
        return None
    base_bias = getattr(layer.base_layer, "bias", None)
    if base_bias is None:
        raise MergeError(  # peft's sentence (its tests match it), then which adapter and layer
            "Impossible to merge LoRA with `lora_bias=True` because the base layer has no bias: adapter "
            f"{biased[0]!r} on {layer.key!r} ({type(layer.base_layer).__name__}); keep the adapter unmerged"
        )
    total = base_bias.detach().float().clone()
    for name in biased:
        total += sign * layer.scaling[name] * layer.lora_B[name].bias.detach().float()
    if check_finite and not torch.isfinite(total).all():
        raise AdapterError(f"NaNs detected in the merged weights. The adapter {biased[0]!r} seems to be broken: "
                           "merging it gives NaN/inf biases; the base layer was left as it was")
    return total.to(base_bias.dtype)
