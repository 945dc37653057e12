"""What LoHa and LoKr share (peftkit.methods.lycoris): module dropout, rank dropout and the Tucker
rebuild of effective-conv kernels, checked for both methods against peft's semantics."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from peft.tuners.lokr.layer import make_weight_cp

import peftkit as pk
from peftkit.methods.loha import LoHaLayer
from peftkit.methods.lokr import LoKrLayer
from peftkit.methods.lycoris import rebuild_cp

pytestmark = pytest.mark.usefixtures("torch_single_thread")

METHODS = {"loha": (LoHaLayer, pk.LoHaConfig), "lokr": (LoKrLayer, pk.LoKrConfig)}


def layer_on(method: str, base: nn.Module, **kw) -> nn.Module:
    layer_cls, config_cls = METHODS[method]
    torch.manual_seed(0)
    return layer_cls(base, "a", config_cls(**{"r": 2, "alpha": 2, "init_weights": False, **kw}), "layer")


@pytest.mark.parametrize("method", METHODS)
def test_module_dropout_skips_the_whole_adapter_in_training_only(method):
    layer = layer_on(method, nn.Linear(8, 12), module_dropout=0.5)
    layer.set_adapter(["a"])
    x = torch.randn(4, 8)
    with torch.no_grad():
        base, full = layer.base_layer(x), layer.eval()(x)
        assert not torch.allclose(base, full)
        layer.train()
        seen = [layer(x) for _ in range(40)]
    assert all(torch.equal(y, base) or torch.allclose(y, full, atol=1e-6) for y in seen)
    skipped = sum(torch.equal(y, base) for y in seen)
    assert 5 < skipped < 35, skipped  # about half, as with probability 0.5


@pytest.mark.parametrize("method, rescaled", [("loha", True), ("lokr", False)])
@pytest.mark.parametrize("base", [nn.Linear(8, 12), nn.Conv2d(3, 12, 3)], ids=["linear", "conv2d"])
def test_rank_dropout_zeroes_output_rows_of_the_delta(method, rescaled, base):
    layer = layer_on(method, base, rank_dropout=0.5)
    layer.set_adapter(["a"])
    x = torch.randn(4, 8) if isinstance(base, nn.Linear) else torch.randn(2, 3, 6, 6)
    channel = -1 if isinstance(base, nn.Linear) else 1
    with torch.no_grad():
        full = layer.eval().delta("a", x).movedim(channel, 0).reshape(12, -1)
        torch.manual_seed(3)
        dropped = layer.train().delta("a", x).movedim(channel, 0).reshape(12, -1)
    kept = dropped.abs().sum(1) > 0
    assert 0 < kept.sum() < 12
    # LoHa divides the kept rows by the fraction kept (peft always does); LoKr only with rank_dropout_scale
    factor = 12 / kept.sum() if rescaled else 1.0
    torch.testing.assert_close(dropped[kept], full[kept] * factor, atol=1e-6, rtol=1e-5)


def test_lokr_rank_dropout_scale_rescales():
    layer = layer_on("lokr", nn.Linear(8, 12), rank_dropout=0.5, rank_dropout_scale=True)
    x = torch.randn(4, 8)
    with torch.no_grad():
        full = layer.eval().delta("a", x)
        torch.manual_seed(3)
        dropped = layer.train().delta("a", x)
    kept = dropped.abs().sum(0) > 0
    torch.testing.assert_close(dropped[:, kept], full[:, kept] * 12 / kept.sum(), atol=1e-6, rtol=1e-5)


def test_rank_dropout_that_drops_every_row_gives_zeros_not_nan():
    layer = layer_on("loha", nn.Linear(8, 3), rank_dropout=0.999).train()
    out = torch.stack([layer.delta("a", torch.randn(2, 8)) for _ in range(5)])
    assert torch.isfinite(out).all() and (out == 0).any()


def test_tucker_rebuild_is_peft_s():
    core, out_factor, in_factor = torch.randn(3, 3, 5, 2), torch.randn(3, 7), torch.randn(3, 4)
    torch.testing.assert_close(rebuild_cp(core, out_factor, in_factor), make_weight_cp(core, out_factor, in_factor))
