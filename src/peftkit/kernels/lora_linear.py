"""One autograd function for a LoRA-adapted linear layer: ``y = x W^T + b + s * (d(x) A^T) B^T``.

What it saves over the composed modules (``peft``'s and peftkit's plain path):

- no dropout copy of the input and no mask: the layer keeps the seed of its dropout mask and
  draws it again in backward (:mod:`peftkit.kernels.dropout`), where the dropped input is rebuilt;
- the input is saved once however many layers read it (q/k/v and gate/up share theirs), because
  the function saves the tensor it was given rather than a fresh dropout output;
- the scale is folded into in-place ``addmm`` calls, so neither pass materialises ``B A x`` or a
  scaled copy of it.

It is used for one active adapter on ``nn.Linear`` when input, weight and adapter share a dtype
and autocast is off; everything else takes the plain path (see ``LoraLinear.forward``).

On a quantized base the weight is a *source* (``dense()`` dequantizes it into a fresh tensor, see
:class:`peftkit.quantized.layers.DequantizedWeight`): it is dequantized in forward and again in
backward, never kept, so the node saves no more than on a dense base.
"""

from __future__ import annotations

from typing import Optional

import torch

from .dropout import keep_mask, new_seed


def _forward(x, weight, bias, lora_a, lora_b, scaling: float, keep: Optional[torch.Tensor], p: float):
    """The output and the rank-``r`` activations ``h`` (kept for backward); ``keep`` is the dropout
    mask (1s and 0s in ``x``'s dtype) or None."""
    shape = x.shape
    x2 = x.reshape(-1, shape[-1])
    out = x2 @ weight.t() if bias is None else torch.addmm(bias, x2, weight.t())
    # the dropout scale 1/(1-p) is applied to the small (tokens, r) product, not to x
    h = x2 @ lora_a.t() if keep is None else ((x2 * keep.reshape(x2.shape)) @ lora_a.t()).mul_(1.0 / (1.0 - p))
    out.addmm_(h, lora_b.t(), alpha=scaling)
    return out.reshape(*shape[:-1], out.shape[-1]), h


def saved_mask(ctx, x: torch.Tensor, keep: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """Backward's dropout mask: the one forward used, drawn again from its seed or as saved."""
    if ctx.seed is None:
        return keep
    return keep_mask(x.shape, ctx.p, ctx.seed, x.dtype, x.device)


def _dense(weight):
    """A weight tensor as is; a weight source (quantized base) dequantized into a fresh tensor."""
    return weight if isinstance(weight, torch.Tensor) else weight.dense()


class LoraLinearFunction(torch.autograd.Function):
    """Forward and backward of base linear + LoRA in one node of the autograd graph."""

    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scaling: float, keep: Optional[torch.Tensor],
                p: float, seed: Optional[int]):
        source = None if isinstance(weight, torch.Tensor) else weight
        out, h = _forward(x, _dense(weight), bias, lora_a, lora_b, scaling, keep, p)
        # a mask drawn from a seed is drawn again in backward rather than kept; a weight source
        # is dequantized again rather than kept
        ctx.save_for_backward(x, weight if source is None else None, lora_a, lora_b, h, keep if seed is None else None)
        ctx.scaling, ctx.p, ctx.has_bias, ctx.seed, ctx.source = scaling, p, bias is not None, seed, source
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, lora_a, lora_b, h, keep = ctx.saved_tensors
        s = ctx.scaling
        keep = saved_mask(ctx, x, keep)
        sd = s if keep is None else s / (1.0 - ctx.p)  # the dropout scale rides on the scalars
        g = grad_out.reshape(-1, grad_out.shape[-1])
        x2 = x.reshape(-1, x.shape[-1])
        gb = g @ lora_b  # (tokens, r)
        grad_x = grad_a = grad_b = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = g @ (weight if ctx.source is None else ctx.source.dense())
            if keep is None:
                grad_x.addmm_(gb, lora_a, alpha=s)
            else:
                grad_x.addcmul_(gb @ lora_a, keep.reshape(x2.shape), value=sd)
            grad_x = grad_x.reshape(x.shape)
        if ctx.needs_input_grad[3]:
            grad_a = (gb.t() @ (x2 if keep is None else x2 * keep.reshape(x2.shape))).mul_(sd)
        if ctx.needs_input_grad[4]:
            grad_b = (g.t() @ h).mul_(s)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = g.sum(0)
        grad_w = g.t() @ x2 if ctx.needs_input_grad[1] else None
        return grad_x, grad_w, grad_bias, grad_a, grad_b, None, None, None, None


def dropout_inputs(x: torch.Tensor, p: float, training: bool, keep: Optional[torch.Tensor],
                   grad: bool) -> tuple[Optional[torch.Tensor], Optional[int]]:
    """``(keep, seed)`` for a fused layer's call: nothing out of training or at ``p == 0``; a given
    boolean mask in ``x``'s dtype (then kept for backward); else a fresh draw whose seed lets
    backward draw it again."""
    if not training or p == 0.0:
        return None, None
    if keep is not None:
        return keep.to(x.dtype), None
    seed = new_seed()
    return keep_mask(x.shape, p, seed, x.dtype, x.device), (seed if grad else None)


def lora_linear(x, weight, bias, lora_a, lora_b, scaling: float, p: float = 0.0, training: bool = False,
                keep: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``F.linear(x, weight, bias) + scaling * lora_b(lora_a(dropout(x)))`` as one autograd node.

    ``keep`` fixes the dropout mask (tests compare paths with it, and it is then kept for
    backward); otherwise the mask is drawn from a fresh seed and drawn again in backward.

    Example:
        >>> y = lora_linear(x, layer.weight, layer.bias, A.weight, B.weight, 2.0, p=0.05, training=True)  # doctest: +SKIP
    """
    grad = torch.is_grad_enabled() and any(getattr(t, "requires_grad", False) for t in (x, weight, bias, lora_a, lora_b))
    keep, seed = dropout_inputs(x, p, training, keep, grad)
    if not grad:
        # inference: the same maths without an autograd node (its fixed cost shows in decoding)
        return _forward(x, _dense(weight), bias, lora_a, lora_b, scaling, keep, p)[0]
    return LoraLinearFunction.apply(x, weight, bias, lora_a, lora_b, scaling, keep, p, seed)


def fast_path_applies(x: torch.Tensor, weight: torch.Tensor, lora_a: torch.Tensor) -> bool:
    """Same dtype everywhere, no autocast, a floating input with a feature dimension."""
    return (
        x.dtype == weight.dtype == lora_a.dtype
        and x.dim() >= 2
        and x.is_floating_point()
        and not torch.is_autocast_enabled(x.device.type)
    )
