"""One autograd function for a LoRA-adapted linear layer: ``y = x W^T + b + s * (d(x) A^T) B^T``.

What it saves over the composed modules (``peft``'s and peftkit's plain path):

- no dropout copy of the input: the mask is kept as one byte per element on CPU, as a seed to
  draw it again on GPU (:mod:`peftkit.kernels.dropout`), and the dropped input is rebuilt in
  backward when it is needed;
- the input is saved once however many layers read it (q/k/v and gate/up share theirs), because
  the function saves the tensor it was given rather than a fresh dropout output;
- the scale is folded into in-place ``addmm`` calls, so neither pass materialises ``B A x`` or a
  scaled copy of it.

It is used for one active adapter on ``nn.Linear`` when input, weight and adapter share a dtype
and autocast is off; everything else takes the plain path (see ``LoraLinear.forward``).
"""

from __future__ import annotations

from typing import Optional

import torch

from .dropout import draw_mask, mask_from_seed


def _forward(x, weight, bias, lora_a, lora_b, scaling: float, keep: Optional[torch.Tensor], p: float):
    """The output and the rank-``r`` activations ``h`` (kept for backward)."""
    shape = x.shape
    x2 = x.reshape(-1, shape[-1])
    out = x2 @ weight.t() if bias is None else torch.addmm(bias, x2, weight.t())
    # the dropout scale 1/(1-p) is applied to the small (tokens, r) product, not to x
    h = x2 @ lora_a.t() if keep is None else (x2 * keep.reshape(x2.shape)) @ lora_a.t() * (1.0 / (1.0 - p))
    out.addmm_(h, lora_b.t(), alpha=scaling)
    return out.reshape(*shape[:-1], out.shape[-1]), h


class LoraLinearFunction(torch.autograd.Function):
    """Forward and backward of base linear + LoRA in one node of the autograd graph."""

    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scaling: float, keep: Optional[torch.Tensor], p: float,
                seed: Optional[int] = None):
        out, h = _forward(x, weight, bias, lora_a, lora_b, scaling, keep, p)
        ctx.save_for_backward(x, weight, lora_a, lora_b, h, None if seed is not None else keep)
        ctx.scaling, ctx.p, ctx.has_bias, ctx.seed = scaling, p, bias is not None, seed
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, lora_a, lora_b, h, keep = ctx.saved_tensors
        s, p = ctx.scaling, ctx.p
        if ctx.seed is not None:
            keep = mask_from_seed(x.shape, p, x.device, ctx.seed)
        g = grad_out.reshape(-1, grad_out.shape[-1])
        x2 = x.reshape(-1, x.shape[-1])
        gb = g @ lora_b  # (tokens, r)
        grad_x = grad_a = grad_b = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = g @ weight
            if keep is None:
                grad_x.addmm_(gb, lora_a, alpha=s)
            else:
                grad_x.addcmul_(gb @ lora_a, keep.reshape(x2.shape), value=s / (1.0 - p))
            grad_x = grad_x.reshape(x.shape)
        if ctx.needs_input_grad[3]:
            xd = x2 if keep is None else x2 * keep.reshape(x2.shape)
            grad_a = (gb.t() @ xd).mul_(s if keep is None else s / (1.0 - p))
        if ctx.needs_input_grad[4]:
            grad_b = (g.t() @ h).mul_(s)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = g.sum(0)
        grad_w = g.t() @ x2 if ctx.needs_input_grad[1] else None
        return grad_x, grad_w, grad_bias, grad_a, grad_b, None, None, None, None


def lora_linear(x, weight, bias, lora_a, lora_b, scaling: float, p: float = 0.0, training: bool = False,
                keep: Optional[torch.Tensor] = None, redraw: Optional[bool] = None) -> torch.Tensor:
    """``F.linear(x, weight, bias) + scaling * lora_b(lora_a(dropout(x)))`` as one autograd node.

    ``keep`` fixes the dropout mask (tests compare paths with it); otherwise one is drawn, kept for
    backward on CPU and redrawn from a seed on GPU (``redraw`` overrides that choice, see
    :func:`peftkit.kernels.dropout.draw_mask`).

    Example:
        >>> y = lora_linear(x, layer.weight, layer.bias, A.weight, B.weight, 2.0, p=0.05, training=True)  # doctest: +SKIP
    """
    seed = None
    if not training:
        keep, p = None, 0.0
    if not torch.is_grad_enabled() or not any(t is not None and t.requires_grad for t in (x, weight, bias, lora_a, lora_b)):
        # inference: the same maths without an autograd node (its fixed cost shows in decoding)
        if keep is None and p > 0:
            keep = draw_mask(x, p, redraw=False)[0]
        return _forward(x, weight, bias, lora_a, lora_b, scaling, keep, p)[0]
    if keep is None:
        keep, seed = draw_mask(x, p, redraw)
    return LoraLinearFunction.apply(x, weight, bias, lora_a, lora_b, scaling, keep, p, seed)


def fast_path_applies(x: torch.Tensor, weight: torch.Tensor, lora_a: torch.Tensor) -> bool:
    """Same dtype everywhere, no autocast, a floating input with a feature dimension."""
    return (
        x.dtype == weight.dtype == lora_a.dtype
        and x.dim() >= 2
        and x.is_floating_point()
        and not torch.is_autocast_enabled(x.device.type)
    )
