"""The fused DoRA linear matches DoRA written out with plain torch ops (outputs and every
gradient, magnitude included), in float32, bfloat16 and with fp32 adapters on a bf16 base; it keeps
less for backward and is used exactly where it applies."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import peftkit as pk
from peftkit.kernels.dora import dora_linear
from peftkit.methods.dora import row_norms_reference
from peftkit.methods.lora_layers import LoraLayer, LoraLinear


pytestmark = pytest.mark.usefixtures("torch_single_thread")  # tiny ops: no thread pool


def tensors(dtype=torch.float32, adapter_dtype=None, bias=True, seed=0, lead=(3, 5)):
    adapter_dtype = adapter_dtype or dtype
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*lead, 12, generator=g).to(dtype).requires_grad_()
    w = (torch.randn(10, 12, generator=g) / 12**0.5).to(dtype)
    b = torch.randn(10, generator=g).to(dtype).requires_grad_() if bias else None
    a = (torch.randn(4, 12, generator=g) * 0.3).to(adapter_dtype).requires_grad_()
    bb = (torch.randn(10, 4, generator=g) * 0.3).to(adapter_dtype).requires_grad_()
    m = (1 + 0.3 * torch.randn(10, generator=g)).to(adapter_dtype).requires_grad_()
    return x, w, b, a, bb, m


def reference(x, w, b, a, bb, m, s, keep=None, p=0.0):
    """DoRA as in the paper, dropout on the low-rank input only, composed from torch ops in fp32."""
    norm = row_norms_reference(w, a, bb, s)
    xd = x.float() if keep is None else x.float() * keep / (1 - p)
    u = x.float() @ w.float().t() + (xd @ a.float().t()) @ bb.float().t() * s
    out = (m.float() / norm) * u
    return (out if b is None else out + b.float()).to(x.dtype)


def grads(out, *inputs):
    out.float().backward(torch.ones(out.shape) * 0.1 + torch.arange(out.shape[-1]) * 0.01)
    result = [t.grad.clone() for t in inputs if t is not None]
    for t in inputs:
        if t is not None:
            t.grad = None
    return result


def fused(x, w, b, a, bb, m, s, **kw):
    return dora_linear(x, w, b, a, bb, m, row_norms_reference(w, a, bb, s), s, **kw)


# 15 tokens >= 12 inputs: g is folded into the weights; 4 tokens: it scales the activations
@pytest.mark.parametrize("lead", [(3, 5), (2, 2)], ids=["fold_weight", "scale_activations"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("p", [0.0, 0.3])
def test_matches_reference_fp32(bias, p, lead):
    x, w, b, a, bb, m = tensors(bias=bias, lead=lead)
    keep = torch.rand(x.shape, generator=torch.Generator().manual_seed(3)) >= p if p else None
    got = fused(x, w, b, a, bb, m, 2.0, p=p, training=True, keep=keep)
    want = reference(x, w, b, a, bb, m, 2.0, keep, p)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    for g1, g2 in zip(grads(got, x, b, a, bb, m), grads(want, x, b, a, bb, m)):
        torch.testing.assert_close(g1, g2, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("lead", [(3, 5), (2, 2)], ids=["fold_weight", "scale_activations"])
@pytest.mark.parametrize("adapter_dtype", [torch.bfloat16, torch.float32])
def test_matches_reference_bf16_base(adapter_dtype, lead):
    x, w, b, a, bb, m = tensors(dtype=torch.bfloat16, adapter_dtype=adapter_dtype, lead=lead)
    got = fused(x, w, b, a, bb, m, 2.0, training=True)
    want = reference(x, w, b, a, bb, m, 2.0)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, want, atol=2e-2, rtol=1e-2)
    for g1, g2 in zip(grads(got, x, b, a, bb, m), grads(want, x, b, a, bb, m)):
        assert g1.dtype == g2.dtype  # every gradient in its tensor's own dtype
        torch.testing.assert_close(g1.float(), g2.float(), atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("lead", [(3, 5), (2, 2)], ids=["fold_weight", "scale_activations"])
def test_inference_forward_equals_training_forward(lead):
    x, w, b, a, bb, m = tensors(lead=lead)
    with torch.no_grad():
        inference = fused(x, w, b, a, bb, m, 2.0)
    assert not inference.requires_grad
    torch.testing.assert_close(inference, fused(x, w, b, a, bb, m, 2.0), atol=0, rtol=0)


def test_saves_no_activation_beyond_the_output_without_bias():
    """Without a bias the only output-sized tensor kept is the output itself."""
    x, w, _, a, bb, m = tensors(bias=False)
    kept = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(t) or t, lambda t: t):
        out = fused(x, w, None, a, bb, m, 2.0, training=True)
    big = [t for t in kept if t.shape[-1] == out.shape[-1] and t.numel() >= out.numel()]
    assert all(t.untyped_storage().data_ptr() == out.untyped_storage().data_ptr() for t in big)


def test_zero_magnitude_gives_zero_output_and_finite_gradients():
    x, w, b, a, bb, m = tensors()
    with torch.no_grad():
        m[0] = 0.0
    out = fused(x, w, b, a, bb, m, 2.0, training=True)
    torch.testing.assert_close(out[..., 0], b[0].expand(out.shape[:-1]).detach(), atol=0, rtol=0)
    assert all(torch.isfinite(t).all() for t in grads(out, x, b, a, bb, m))


def test_eval_mode_ignores_dropout():
    x, w, b, a, bb, m = tensors()
    once, twice = (fused(x, w, b, a, bb, m, 2.0, p=0.5, training=False) for _ in range(2))
    torch.testing.assert_close(once, twice, atol=0, rtol=0)
    torch.testing.assert_close(once, reference(x, w, b, a, bb, m, 2.0), atol=1e-5, rtol=1e-5)


def saved_bytes(fn) -> int:
    seen: dict[int, int] = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def test_keeps_less_for_backward_than_the_plain_layer():
    torch.manual_seed(0)
    layer = pk.get_peft_model(nn.Sequential(nn.Linear(64, 64)), pk.LoraConfig(target_modules=["0"], use_dora=True))
    x = torch.randn(32, 64, requires_grad=True)
    fused_bytes = saved_bytes(lambda: layer(x))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(LoraLinear, "use_fused", False)
        plain_bytes = saved_bytes(lambda: layer(x))
    assert fused_bytes < plain_bytes


def fused_calls(model, x, monkeypatch) -> int:
    import peftkit.methods.lora_layers as lora_layers

    calls = []
    real = lora_layers.dora_linear
    monkeypatch.setattr(lora_layers, "dora_linear", lambda *a, **k: calls.append(1) or real(*a, **k))
    model(x)
    return len(calls)


def test_fused_path_is_taken_for_linear_and_conv1d_only_where_it_applies(monkeypatch):
    from transformers.pytorch_utils import Conv1D

    for base in (nn.Linear(8, 8), Conv1D(8, 8)):
        torch.manual_seed(0)
        model = pk.get_peft_model(nn.Sequential(base), pk.LoraConfig(target_modules=["0"], use_dora=True))
        x = torch.randn(2, 8)
        assert fused_calls(model, x, monkeypatch) == 1
        with model.disable_adapter():
            assert fused_calls(model, x, monkeypatch) == 0
        with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast decides dtypes: the plain path
            assert fused_calls(model, x, monkeypatch) == 0
        model.train()
        model.base_model.model[0].lora_dropout["default"] = nn.Dropout(0.1)
        assert fused_calls(model, x, monkeypatch) == 1
        with monkeypatch.context() as patch:
            patch.setattr(LoraLayer, "dora_base_sees_dropout", True)  # peft's dropout: the plain path
            assert fused_calls(model, x, monkeypatch) == 0
