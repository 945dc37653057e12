"""Dropout in the fused layers: the right rate from every 16-bit lane, masks that repeat under
``torch.manual_seed``, and a mask drawn again from its seed in backward that gives exactly the
outputs and gradients of the same mask kept, while nothing is saved for it."""

from __future__ import annotations

import pytest
import torch

from peftkit.kernels.dora import dora_linear
from peftkit.kernels.dropout import keep_mask, new_seed
from peftkit.kernels.lora_linear import lora_linear

CPU = torch.device("cpu")


@pytest.mark.parametrize("p", [0.05, 0.3, 0.5])
def test_cpu_mask_rate_in_every_lane(p):
    keep = keep_mask(torch.Size([1000, 1001]), p, seed=0, dtype=torch.float32, device=CPU)
    assert keep.dtype == torch.float32 and keep.shape == (1000, 1001)
    assert set(keep.unique().tolist()) == {0.0, 1.0}
    lanes = keep.reshape(-1)[: 1000 * 1000].reshape(-1, 4)  # the four 16-bit lanes of each draw
    for lane in lanes.t():
        assert abs((1 - lane.mean().item()) - p) < 0.005
    # neighbouring lanes come from the same 64-bit word: they must still be independent
    correlation = torch.corrcoef(lanes.t())
    assert (correlation - torch.eye(4)).abs().max() < 0.01


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_mask_comes_in_the_input_dtype_and_repeats_for_a_seed(dtype):
    shape = torch.Size([7, 33])
    keep = keep_mask(shape, 0.1, seed=11, dtype=dtype, device=CPU)
    assert keep.dtype == dtype and keep.shape == shape
    assert torch.equal(keep, keep_mask(shape, 0.1, seed=11, dtype=dtype, device=CPU))
    assert not torch.equal(keep, keep_mask(shape, 0.1, seed=12, dtype=dtype, device=CPU))


def test_seeds_follow_torch_manual_seed():
    torch.manual_seed(1)
    first = new_seed()
    torch.manual_seed(1)
    assert new_seed() == first
    assert new_seed() != first


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


def saved_shapes(fn) -> list[torch.Size]:
    seen = []

    def pack(t):
        seen.append(t.shape)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return seen


@pytest.mark.parametrize("kernel", ["lora", "dora"])
def test_redrawn_mask_equals_the_same_mask_kept_and_nothing_is_saved_for_it(kernel):
    x, w, b, a, bb = lora_inputs()
    m = (w.norm(dim=1) * 1.1).requires_grad_()
    norm = w.norm(dim=1)

    def call(**kw):
        if kernel == "lora":
            return lora_linear(x, w, b, a, bb, 2.0, p=0.3, training=True, **kw)
        return dora_linear(x, w, b, a, bb, m, norm, 2.0, p=0.3, training=True, **kw)

    leaves = (x, b, a, bb) if kernel == "lora" else (x, b, a, bb, m)
    torch.manual_seed(5)
    keep = keep_mask(x.shape, 0.3, new_seed(), x.dtype, CPU).bool()  # the mask the next call draws
    torch.manual_seed(5)
    redrawn = run_with_grads(call, *leaves)
    kept = run_with_grads(lambda: call(keep=keep), *leaves)
    for got, want in zip(redrawn, kept):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    # a given mask is saved for backward; a drawn one is not (only x has x's shape among the saved)
    assert saved_shapes(lambda: call(keep=keep)).count(x.shape) == 2
    assert saved_shapes(call).count(x.shape) == 1


def test_activation_checkpointing_recomputes_the_same_mask():
    from torch.utils.checkpoint import checkpoint

    x, w, b, a, bb = lora_inputs()

    def layer(inp):
        return torch.tanh(lora_linear(inp, w, b, a, bb, 2.0, p=0.3, training=True))

    torch.manual_seed(9)
    plain = run_with_grads(lambda: layer(x), x, a, bb)
    torch.manual_seed(9)
    checkpointed = run_with_grads(lambda: checkpoint(layer, x, use_reentrant=False), x, a, bb)
    for got, want in zip(checkpointed, plain):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)


def test_masks_differ_between_calls_and_drop_about_p():
    x = torch.ones(64, 256, requires_grad=True)
    w = torch.zeros(8, 256)
    a = torch.ones(1, 256, requires_grad=True)
    bb = torch.ones(8, 1, requires_grad=True)
    first = lora_linear(x, w, None, a, bb, 1.0, p=0.25, training=True)
    second = lora_linear(x, w, None, a, bb, 1.0, p=0.25, training=True)
    assert not torch.equal(first, second)
    # each output is (kept count) / (1 - p): its mean over rows is the input width
    assert abs(first[:, 0].mean().item() / 256 - 1.0) < 0.02
