"""Dropout masks for the fused layers: the right rate from every 16-bit lane, repeatable under
``torch.manual_seed``, and a seed-redrawn mask (the GPU default) gives the same outputs and
gradients as a kept mask while saving nothing for it."""

from __future__ import annotations

import pytest
import torch

from peftkit.kernels.dora import dora_linear
from peftkit.kernels.dropout import draw_mask, keep_mask, mask_from_seed
from peftkit.kernels.lora_linear import lora_linear

CPU = torch.device("cpu")


@pytest.mark.parametrize("p", [0.05, 0.3, 0.5])
def test_cpu_mask_rate_in_every_lane(p):
    torch.manual_seed(0)
    keep = keep_mask(torch.Size([1000, 1001]), p, CPU)
    assert keep.dtype == torch.bool and keep.shape == (1000, 1001)
    lanes = keep.reshape(-1)[: 1000 * 1000].reshape(-1, 4).float()  # the four 16-bit lanes of each draw
    for lane in lanes.t():
        assert abs((1 - lane.mean().item()) - p) < 0.005
    # neighbouring lanes come from the same 64-bit draw: they must still be independent
    correlation = torch.corrcoef(lanes.t())
    assert (correlation - torch.eye(4)).abs().max() < 0.01


def test_no_mask_without_dropout():
    assert draw_mask(torch.empty(3, 3), 0.0) == (None, None)


def test_masks_repeat_under_manual_seed_and_differ_otherwise():
    x = torch.empty(64, 64)
    torch.manual_seed(1)
    first = draw_mask(x, 0.2)[0]
    torch.manual_seed(1)
    again = draw_mask(x, 0.2)[0]
    assert torch.equal(first, again)
    assert not torch.equal(again, draw_mask(x, 0.2)[0])


def test_seeded_mask_is_redrawn_exactly():
    keep, seed = draw_mask(torch.empty(7, 33), 0.1, redraw=True)
    assert seed is not None
    assert torch.equal(mask_from_seed(torch.Size([7, 33]), 0.1, CPU, seed), keep)
    assert draw_mask(torch.empty(7, 33), 0.1, redraw=False)[1] is None  # CPU default: kept, no seed


def lora_inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 6, 16, generator=g, requires_grad=True)
    w = torch.randn(12, 16, generator=g)
    b = torch.randn(12, generator=g, requires_grad=True)
    a = (torch.randn(4, 16, generator=g) * 0.3).requires_grad_()
    bb = (torch.randn(12, 4, generator=g) * 0.3).requires_grad_()
    return x, w, b, a, bb


def run_with_grads(fn, *leaves):
    out = fn()
    out.backward(torch.linspace(-1, 1, out.numel()).reshape(out.shape))
    result = [out.detach()] + [t.grad.clone() for t in leaves]
    for t in leaves:
        t.grad = None
    return result


def saved_dtypes(fn) -> list[torch.dtype]:
    seen = []

    def pack(t):
        seen.append(t.dtype)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return seen


@pytest.mark.parametrize("kernel", ["lora", "dora"])
def test_redrawn_mask_matches_a_kept_mask_and_is_not_saved(kernel):
    x, w, b, a, bb = lora_inputs()
    m = (w.norm(dim=1) * 1.1).requires_grad_()
    norm = w.norm(dim=1)

    def call(**kw):
        if kernel == "lora":
            return lora_linear(x, w, b, a, bb, 2.0, p=0.3, training=True, **kw)
        return dora_linear(x, w, b, a, bb, m, norm, 2.0, p=0.3, training=True, **kw)

    leaves = (x, b, a, bb) if kernel == "lora" else (x, b, a, bb, m)
    torch.manual_seed(5)
    keep, seed = draw_mask(x, 0.3, redraw=True)
    torch.manual_seed(5)
    redrawn = run_with_grads(lambda: call(redraw=True), *leaves)
    kept = run_with_grads(lambda: call(keep=keep), *leaves)
    for got, want in zip(redrawn, kept):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    # the kept-mask call saves the mask for backward; the redrawing call saves no mask at all
    assert torch.bool in saved_dtypes(lambda: call(keep=keep))
    assert torch.bool not in saved_dtypes(lambda: call(redraw=True))


def test_activation_checkpointing_recomputes_the_same_redrawn_mask():
    from torch.utils.checkpoint import checkpoint

    x, w, b, a, bb = lora_inputs()

    def layer(inp):
        return torch.tanh(lora_linear(inp, w, b, a, bb, 2.0, p=0.3, training=True, redraw=True))

    torch.manual_seed(9)
    plain = run_with_grads(lambda: layer(x), x, a, bb)
    torch.manual_seed(9)
    checkpointed = run_with_grads(lambda: checkpoint(layer, x, use_reentrant=False), x, a, bb)
    for got, want in zip(checkpointed, plain):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
