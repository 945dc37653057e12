"""One autograd function for a DoRA-adapted linear layer:

    y0 = g * (x W^T + s * (d(x) A^T) B^T),     y = y0 + bias,     g = m / ||W + s B A||  (detached)

What it saves over composing the formula from torch ops (``peft``'s way):

- ``g`` is folded into the weights (``g * W``, ``g * B``: a pass over the weight, not over the
  activations) whenever the batch has at least as many tokens as the layer has inputs, so the
  training step does the LoRA step's matmuls and no elementwise pass over the outputs;
- the magnitude's gradient ``sum_tokens(grad * u) / norm`` equals ``sum_tokens(grad * y0) / m``,
  so the only activation kept beyond LoRA's is ``y0``, which *is* the output when there is no bias
  (most LLM projections): then nothing extra is kept where the next op saves its input anyway
  (the MLP's gate/up, attention's values). ``peft`` keeps two output-sized tensors and forms the
  full ``W + s B A`` every step;
- dropout as in :mod:`peftkit.kernels.lora_linear` (a seed, the mask drawn again in backward),
  on the low-rank input only (see :mod:`peftkit.methods.dora`).

A magnitude that is exactly 0 zeroes its unit's output, and here its gradient too (the plain path
still gives ``sum(grad * u) / norm``); a trained magnitude is never exactly 0 in practice.
The adapter tensors may be float32 on a half-precision base: products run in the input's dtype,
``g`` and the norms in float32, gradients come back in each tensor's own dtype.
"""

from __future__ import annotations

from typing import Optional

import torch

from .lora_linear import dropout_inputs, saved_mask


def _fold_into_weight(tokens: int, weight: torch.Tensor) -> bool:
    """Scale the weight (out x in) rather than the activations (tokens x out): the smaller pass."""
    return tokens >= weight.shape[1]


def _row_scaled(t: torch.Tensor, g: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``g[:, None] * t`` computed in float32, rounded once to ``dtype``, in ``t``'s memory layout
    (so a transposed Conv1D weight multiplies exactly like the unscaled one)."""
    return torch.mul(t, g[:, None], out=torch.empty_like(t, dtype=dtype))


def _forward_y0(x2, weight, a, lora_b, g, scaling: float, keep, p: float):
    """``(y0, h)``: the scaled output without bias and the rank-r activations ``d(x) A^T``."""
    h = x2 @ a.t() if keep is None else ((x2 * keep.reshape(x2.shape)) @ a.t()).mul_(1.0 / (1.0 - p))
    if _fold_into_weight(x2.shape[0], weight):
        y0 = x2 @ _row_scaled(weight, g, x2.dtype).t()
        return y0.addmm_(h, _row_scaled(lora_b, g, x2.dtype).t(), alpha=scaling), h
    y0 = (x2 @ weight.t()).addmm_(h, lora_b.to(x2.dtype).t(), alpha=scaling)
    return torch.mul(y0, g, out=y0), h


class DoraLinearFunction(torch.autograd.Function):
    """Forward and backward of base linear + DoRA in one node of the autograd graph."""

    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, magnitude, norm, scaling: float,
                keep: Optional[torch.Tensor], p: float, seed: Optional[int]):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        g = magnitude.detach().float().reshape(-1) / norm
        y0, h = _forward_y0(x2, weight, lora_a.to(x.dtype), lora_b, g, scaling, keep, p)
        out = y0 if bias is None else y0 + bias.to(y0.dtype)
        ctx.save_for_backward(x, weight, lora_a, lora_b, magnitude, h, keep if seed is None else None, y0, g)
        ctx.scaling, ctx.p, ctx.has_bias, ctx.seed = scaling, p, bias is not None, seed
        return out.reshape(*shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, lora_a, lora_b, magnitude, h, keep, y0, g = ctx.saved_tensors
        s, p = ctx.scaling, ctx.p
        keep = saved_mask(ctx, x, keep)
        grad = grad_out.reshape(-1, grad_out.shape[-1])
        x2 = x.reshape(-1, x.shape[-1])
        a = lora_a.to(x.dtype)
        gb = grad @ _row_scaled(lora_b, g, x.dtype)  # (tokens, r): d loss / d h
        grad_x = grad_w = grad_bias = grad_a = grad_b = grad_m = None
        if ctx.needs_input_grad[0]:
            if _fold_into_weight(x2.shape[0], weight):
                grad_x = grad @ _row_scaled(weight, g, x.dtype)
            else:
                grad_x = torch.mul(grad, g, out=torch.empty_like(grad)) @ weight
            if keep is None:
                grad_x.addmm_(gb, a, alpha=s)
            else:
                grad_x.addcmul_(gb @ a, keep.reshape(x2.shape), value=s / (1.0 - p))
            grad_x = grad_x.reshape(x.shape)
        if ctx.needs_input_grad[3]:
            xd = x2 if keep is None else x2 * keep.reshape(x2.shape)
            grad_a = (gb.t() @ xd).mul_(s if keep is None else s / (1.0 - p)).to(lora_a.dtype)
        if ctx.needs_input_grad[4]:
            grad_b = (grad.t() @ h).float().mul_(g[:, None] * s).to(lora_b.dtype)
        if ctx.needs_input_grad[5]:
            m = magnitude.detach().float().reshape(-1)
            grad_m = (column_dots(grad, y0) / torch.where(m == 0, 1.0, m)).to(magnitude.dtype).reshape(magnitude.shape)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad.sum(0)
        if ctx.needs_input_grad[1]:
            grad_w = (grad.t() @ x2).float().mul_(g[:, None]).to(weight.dtype)
        return grad_x, grad_w, grad_bias, grad_a, grad_b, grad_m, None, None, None, None, None


def dora_linear(x, weight, bias, lora_a, lora_b, magnitude, norm, scaling: float, p: float = 0.0,
                training: bool = False, keep: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``g * (F.linear(x, weight) + scaling * lora_b(lora_a(dropout(x)))) + bias`` with
    ``g = magnitude / norm``, as one autograd node (``weight`` is ``(out, in)``, possibly a view).

    Example:
        >>> y = dora_linear(x, lin.weight, lin.bias, A.weight, B.weight, m, norm, 2.0)  # doctest: +SKIP
    """
    grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, weight, bias, lora_a, lora_b, magnitude))
    keep, seed = dropout_inputs(x, p, training, keep, grad)
    if not grad:
        with torch.no_grad():  # the forward alone: nothing is kept
            x2 = x.reshape(-1, x.shape[-1])
            g = magnitude.float().reshape(-1) / norm
            y0, _ = _forward_y0(x2, weight, lora_a.to(x.dtype), lora_b, g, scaling, keep, p)
            out = y0 if bias is None else y0.add_(bias.to(y0.dtype))
            return out.reshape(*x.shape[:-1], out.shape[-1])
    return DoraLinearFunction.apply(x, weight, bias, lora_a, lora_b, magnitude, norm, scaling, keep, p, seed)


def column_dots(a: torch.Tensor, b: torch.Tensor, chunk_elements: int = 1 << 22) -> torch.Tensor:
    """``(a * b).sum(0)`` in float32 with exact products. In bf16, rounding each product before
    the sum costs a relative ~2e-3 of the result when its terms cancel (they do: a magnitude's
    gradient sums signed terms over every token); products are formed in a float32 buffer of at
    most ``chunk_elements`` instead, so no full-size float32 copy is made."""
    if a.dtype == torch.float32:
        return (a * b).sum(0)
    rows = max(1, chunk_elements // max(1, a.shape[1]))
    buf = torch.empty(min(rows, a.shape[0]), a.shape[1], dtype=torch.float32, device=a.device)
    total = torch.zeros(a.shape[1], dtype=torch.float32, device=a.device)
    for start in range(0, a.shape[0], rows):
        part = buf[: min(rows, a.shape[0] - start)].zero_()
        total += part.addcmul_(a[start : start + rows], b[start : start + rows]).sum(0)
    return total


def dora_fast_path_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Input and base weight share a floating dtype, no autocast, a feature dimension."""
    return (x.dtype == weight.dtype and x.is_floating_point() and x.dim() >= 2
            and not torch.is_autocast_enabled(x.device.type))
