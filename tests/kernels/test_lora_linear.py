"""The fused LoRA linear matches the plain path (outputs and every gradient), is used exactly
where it applies, and keeps less for backward."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import peftkit as pk
from peftkit.kernels.lora_linear import lora_linear
from peftkit.methods.lora_layers import LoraLinear


def tensors(dtype=torch.float32, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 5, 12, generator=g).to(dtype).requires_grad_()
    w = torch.randn(10, 12, generator=g).to(dtype)
    b = torch.randn(10, generator=g).to(dtype).requires_grad_() if bias else None
    a = (torch.randn(4, 12, generator=g) * 0.3).to(dtype).requires_grad_()
    bb = (torch.randn(10, 4, generator=g) * 0.3).to(dtype).requires_grad_()
    return x, w, b, a, bb


def reference(x, w, b, a, bb, s, keep=None, p=0.0):
    xd = x if keep is None else x * keep / (1 - p)
    return nn.functional.linear(x, w, b) + (xd @ a.t()) @ bb.t() * s


def grads(out, *inputs):
    out.backward(torch.ones_like(out) * 0.1 + torch.arange(out.shape[-1], dtype=out.dtype) * 0.01)
    result = [t.grad.clone() for t in inputs if t is not None]
    for t in inputs:
        if t is not None:
            t.grad = None
    return result


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("p", [0.0, 0.3])
def test_matches_reference_fp32(bias, p):
    x, w, b, a, bb = tensors(bias=bias)
    keep = torch.rand(x.shape, generator=torch.Generator().manual_seed(3)) >= p if p else None
    fused = lora_linear(x, w, b, a, bb, 2.0, p=p, training=True, keep=keep)
    expected = reference(x, w, b, a, bb, 2.0, keep, p)
    torch.testing.assert_close(fused, expected, atol=1e-5, rtol=1e-5)
    for got, want in zip(grads(fused, x, b, a, bb), grads(expected, x, b, a, bb)):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_matches_reference_bf16():
    x, w, b, a, bb = tensors(dtype=torch.bfloat16)
    fused = lora_linear(x, w, b, a, bb, 2.0)
    expected = reference(x, w, b, a, bb, 2.0)
    torch.testing.assert_close(fused, expected, atol=1e-2, rtol=1e-2)
    for got, want in zip(grads(fused, x, b, a, bb), grads(expected, x, b, a, bb)):
        torch.testing.assert_close(got, want, atol=1e-2, rtol=1e-2)


def test_eval_mode_ignores_dropout():
    x, w, b, a, bb = tensors()
    torch.testing.assert_close(lora_linear(x, w, b, a, bb, 2.0, p=0.5, training=False), reference(x, w, b, a, bb, 2.0))


def test_dropout_keeps_the_expected_fraction_and_scales():
    x = torch.ones(64, 256, requires_grad=True)
    w, a, bb = torch.zeros(8, 256), torch.ones(1, 256), torch.ones(8, 1)
    out = lora_linear(x, w, None, a, bb, 1.0, p=0.25, training=True)
    # each output is sum(keep) / 0.75 over 256 inputs: mean 256, spread small
    assert abs(out.mean().item() - 256) < 5


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.q, self.k, self.v = nn.Linear(16, 16), nn.Linear(16, 8), nn.Linear(16, 8)

    def forward(self, x):
        return self.q(x).sum(-1) + self.k(x).sum(-1) + self.v(x).sum(-1)


def peft_net(dropout=0.0, **kw):
    torch.manual_seed(0)
    return pk.get_peft_model(Net(), pk.LoraConfig(r=4, target_modules=["q", "k", "v"], lora_dropout=dropout,
                                                  init_lora_weights=False, **kw))


def run(model, fused: bool, x):
    LoraLinear.use_fused = fused
    try:
        out = model(x)
        out.sum().backward()
        g = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad(set_to_none=True)
        return out, g
    finally:
        LoraLinear.use_fused = True


def test_module_fast_and_plain_paths_agree():
    model = peft_net()
    model.train()
    x = torch.randn(2, 7, 16)
    out_f, g_f = run(model, True, x)
    out_p, g_p = run(model, False, x)
    torch.testing.assert_close(out_f, out_p, atol=1e-5, rtol=1e-5)
    assert g_f.keys() == g_p.keys() and len(g_f) == 6
    for n in g_f:
        torch.testing.assert_close(g_f[n], g_p[n], atol=1e-5, rtol=1e-5)


def node_names(out) -> set[str]:
    names, stack, seen = set(), [out.grad_fn], set()
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        names.add(type(fn).__name__)
        stack += [f for f, _ in fn.next_functions]
    return names


def test_fused_path_is_used_only_where_it_applies():
    model = peft_net()
    x = torch.randn(2, 3, 16)
    assert "LoraLinearFunctionBackward" in node_names(model(x))
    model.add_adapter("other", pk.LoraConfig(r=2, target_modules=["q", "k", "v"]))
    model.set_adapter(["default", "other"])  # two active adapters: plain path
    assert "LoraLinearFunctionBackward" not in node_names(model(x))
    model.set_adapter("default")
    assert "LoraLinearFunctionBackward" not in node_names(model(x, adapter_names=["default", "other"]))
    half = pk.get_peft_model(Net().to(torch.bfloat16), pk.LoraConfig(r=4, target_modules=["q"]))
    half(torch.randn(2, 3, 16, dtype=torch.bfloat16, requires_grad=True))  # fp32 adapters on bf16: plain path, still runs


def saved_bytes(fn) -> int:
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


def test_fused_path_keeps_less_for_backward_with_dropout():
    model = peft_net(dropout=0.1)
    model.train()
    x = torch.randn(8, 64, 16, requires_grad=True)

    def forward(fused):
        LoraLinear.use_fused = fused
        try:
            return saved_bytes(lambda: model(x))
        finally:
            LoraLinear.use_fused = True

    fused, plain = forward(True), forward(False)
    # plain: per layer a dropout copy of x (4 B/elem) and its mask (1 B); fused: x once + masks
    assert fused < 0.5 * plain, (fused, plain)


def test_inference_skips_the_autograd_node_with_the_same_result():
    x, w, b, a, bb = tensors()
    with_graph = lora_linear(x, w, b, a, bb, 2.0)
    assert with_graph.grad_fn is not None
    with torch.no_grad():
        without = lora_linear(x, w, b, a, bb, 2.0)
    assert without.grad_fn is None
    assert torch.equal(with_graph.detach(), without)
