"""Merging into quantized weights in place: the rounding it costs is measured before anything is
merged, too much of it is refused (nothing changes), a forced or tolerated merge says what it cost,
and ``unmerge`` gives back the original quantized bits exactly (``peft`` re-quantizes on unmerge
and does not).

The "realistic adapter" is peft's and the issue's yardstick: a 512 x 512 layer whose adapter
changes the weight by 1% of its norm. Measured here: NF4 1.37x the adapter's change, FP4 1.39x,
bitsandbytes int8 and torchao int8 0.39x.
"""

from __future__ import annotations

import copy

import pytest
import torch
from quantized_models import INPUT_IDS, quantized_llama, require, stored_bits

import peftkit as pk
from peftkit.quantized import DEFAULT_MAX_ERROR, kind_of, merge_report, merge_tolerance
from peftkit.quantized.loading import QuantizationConfig, quantize_model

pytestmark = pytest.mark.usefixtures("torch_single_thread")
X = torch.randn(4, 512, generator=torch.Generator().manual_seed(1))


def realistic(backend: dict, seed: int = 0) -> pk.PeftModel:
    """A 512 x 512 quantized layer with a LoRA whose change is 1% of the weight's norm."""
    require(backend["backend"])
    torch.manual_seed(seed)
    base = quantize_model(torch.nn.Sequential(torch.nn.Linear(512, 512, bias=False)), QuantizationConfig(**backend))
    model = pk.get_peft_model(base, pk.LoraConfig(r=16, lora_alpha=16, target_modules=["0"]))
    layer = model.base_model.model[0]
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_()
        change = layer.delta_weight("default").norm()
        layer.lora_B["default"].weight.mul_(0.01 * layer.base_weight().float().norm() / change)
    return model


def outputs(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(X)


def test_a_4bit_merge_is_refused_and_changes_nothing():
    model = realistic(dict(backend="bnb", bits=4))
    bits, before = stored_bits(model), outputs(model)
    with pytest.raises(pk.AdapterError, match=r"1\.3\d+x the adapter's own change.*limit is 0\.5.*Nothing was merged"):
        model.merge_adapter()
    assert model.base_model.model[0].merged_adapters == []
    assert all(torch.equal(bits[k], v) for k, v in stored_bits(model).items())
    assert torch.equal(outputs(model), before)


@pytest.mark.parametrize("backend, low, high", [
    (dict(backend="bnb", bits=4), 1.3, 1.45),
    (dict(backend="bnb", bits=4, quant_type="fp4", double_quant=False), 1.3, 1.45),
    (dict(backend="bnb", bits=8), 0.35, 0.45),
    (dict(backend="torchao", bits=8), 0.35, 0.45),
])
def test_forced_merge_reports_its_error_and_unmerge_restores_the_bits_exactly(backend, low, high):
    model = realistic(backend)
    bits, before, base = stored_bits(model), outputs(model), outputs_without_adapter(model)
    with merge_tolerance(force=True), pytest.warns(UserWarning, match="merged .* in place"):
        model.merge_adapter()
    report = merge_report(model)
    assert low < report.error < high and report.layers == 1
    merged = outputs(model)
    # what the merge did to the outputs is what the report measured on the weights
    exact_change = (before - base).norm()
    assert (merged - before).norm() / exact_change == pytest.approx(report.error, rel=0.25)
    model.unmerge_adapter()
    assert all(torch.equal(bits[k], v) for k, v in stored_bits(model).items())
    assert torch.equal(outputs(model), before)


def outputs_without_adapter(model: pk.PeftModel) -> torch.Tensor:
    layer = model.base_model.model[0]
    with torch.no_grad():
        return X @ kind_of(layer.base_layer).dequantize(layer.base_layer).float().t()


def test_int8_merges_within_the_default_tolerance():
    model = realistic(dict(backend="bnb", bits=8))
    with pytest.warns(UserWarning, match=r"0\.3\d+x the adapter's own change"):
        merged = model.merge_and_unload()
    assert kind_of(merged[0]) is not None and merge_report(model) is None  # unloaded: no adapter layers left
    assert DEFAULT_MAX_ERROR == 0.5


def test_a_custom_tolerance():
    model = realistic(dict(backend="bnb", bits=4))
    with merge_tolerance(max_error=2.0), pytest.warns(UserWarning):
        model.merge_adapter()
    assert model.base_model.model[0].merged_adapters == ["default"]
    with pytest.raises(ValueError, match="max_error"):
        with merge_tolerance(max_error=float("nan")):
            pass


def test_peft_does_not_restore_the_base_on_unmerge():
    """The comparison the docs state: peft's unmerge re-quantizes ``merged - delta`` and lands far
    from the original weight; peftkit's gives the original bits back (test above)."""
    import peft

    model = realistic(dict(backend="bnb", bits=4))
    base = model.unload()
    original = kind_of(base[0]).dequantize(base[0]).float()
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(r=16, lora_alpha=16, target_modules=["0"]))
    layer = theirs.base_model.model[0]
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_()
        change = layer.get_delta_weight("default")
        layer.lora_B["default"].weight.mul_(0.01 * original.norm() / change.norm())
        change = layer.get_delta_weight("default").float()
    theirs.merge_adapter()
    theirs.unmerge_adapter()
    restored = kind_of(layer.base_layer).dequantize(layer.base_layer).float()
    assert (restored - original).norm() / change.norm() > 1.0  # peft: 1.86x measured in the issue


@pytest.mark.parametrize("method", ["ia3", "dora", "loha"])
def test_other_methods_merge_into_quantized_weights(method):
    configs = {
        "ia3": pk.IA3Config(target_modules=["v_proj", "down_proj"], feedforward_modules=["down_proj"],
                            init_ia3_weights=False),
        "dora": pk.LoraConfig(r=4, target_modules=["v_proj", "down_proj"], use_dora=True, init_lora_weights=False),
        "loha": pk.LoHaConfig(r=4, target_modules=["v_proj", "down_proj"], init_weights=False),
    }
    quantized, _ = quantized_llama("bnb-int8")
    model = pk.get_peft_model(quantized, configs[method])
    model.eval()
    bits = stored_bits(model)
    with torch.no_grad():
        before = model(INPUT_IDS).logits
        with merge_tolerance(force=True), pytest.warns(UserWarning):
            model.merge_adapter()
        merged = model(INPUT_IDS).logits
        assert (merged - before).norm() < 0.05 * before.norm()
        model.unmerge_adapter()
        assert torch.equal(model(INPUT_IDS).logits, before)
    assert all(torch.equal(bits[k], v) for k, v in stored_bits(model).items())


def test_a_refusal_leaves_every_layer_unmerged():
    """The check runs over every layer before any is merged: a refused merge touches none."""
    quantized, _ = quantized_llama("bnb-nf4")
    model = pk.get_peft_model(quantized, pk.LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    bits = stored_bits(model)
    with merge_tolerance(max_error=0.0), pytest.raises(pk.AdapterError, match="14 bnb-4bit layer"):
        model.merge_and_unload()
    layers = [m for m in model.modules() if isinstance(m, pk.AdapterLayer)]
    assert len(layers) == 14 and not any(layer.merged_adapters for layer in layers)
    assert all(torch.equal(bits[k], v) for k, v in stored_bits(model).items())
