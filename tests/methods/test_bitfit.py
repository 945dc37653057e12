"""BitFit as an adapter: default targets (every bias), new biases on bias-free models, the adapter
contract (merge adds to the bias; merging into a bias-free module creates one and unmerging
removes it), the checkpoint format, convolutions, training from YAML, and clear errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from contract_helpers import (
    ATOL,
    assert_delete_restores_base,
    assert_mixed_batch_equals_per_row,
    assert_only_adapter_params_train,
    assert_save_load_exact,
    logits,
    train_losses,
)
from safetensors.torch import load_file
from tiny_models import make_model, randomize_lora_weights
from toy_models import TOYS

import peftkit as pk
from peftkit.methods.bitfit import BitFitLayer

pytestmark = pytest.mark.usefixtures("torch_single_thread")

# family -> config kwargs: GPT-2 has biases everywhere (default targets); Llama has none
CASES = {"gpt2": {}, "llama": {"target_modules": "all-linear"}}


def adapted(family: str, name: str = "default", model=None, seed: int = 0, **kw) -> pk.PeftModel:
    """Random (trained-like) bias deltas."""
    cfg = pk.BitFitConfig(**{**CASES[family], **kw})
    if model is None:
        model = pk.get_peft_model(make_model(family), cfg, adapter_name=name)
    else:
        model.add_adapter(name, cfg)
    randomize_lora_weights(model, seed=seed, patterns=(f"bitfit_bias.{name}",))
    return model


def base_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k.replace(".base_layer", ""): v.clone() for k, v in model.state_dict().items() if "bitfit_" not in k}


def test_default_targets_are_the_modules_with_a_bias():
    model = pk.get_peft_model(make_model("gpt2"), pk.BitFitConfig())
    assert model.peft_config["default"].target_modules == ["ln_1", "c_attn", "c_proj", "ln_2", "c_fc", "ln_f"]
    wrapped = [k for k, m in model.get_base_model().named_modules() if isinstance(m, BitFitLayer)]
    assert len(wrapped) == 2 * 6 + 1
    bert = pk.get_peft_model(make_model("bert"), pk.BitFitConfig(task_type="SEQ_CLS"))
    assert "LayerNorm" in bert.peft_config["default"].target_modules  # classifier trains in full instead
    assert bert.peft_config["default"].modules_to_save == ["classifier", "score"]


@pytest.mark.parametrize("family", CASES)
def test_identity_at_init_then_changes_and_disable_is_base(family):
    expected = logits(make_model(family), family)
    fresh = pk.get_peft_model(make_model(family), pk.BitFitConfig(**CASES[family]))
    torch.testing.assert_close(logits(fresh, family), expected, atol=0, rtol=0)
    model = adapted(family)
    assert not torch.allclose(logits(model, family), expected, atol=1e-4)
    with model.disable_adapter():
        torch.testing.assert_close(logits(model, family), expected, atol=0, rtol=0)


@pytest.mark.parametrize("family", CASES)
def test_merged_equals_unmerged_and_unmerge_restores(family):
    model = adapted(family)
    unmerged = logits(model, family)
    before = base_state(model.get_base_model())
    model.merge_adapter()
    torch.testing.assert_close(logits(model, family), unmerged, atol=ATOL, rtol=0)
    model.unmerge_adapter()
    after = base_state(model.get_base_model())
    assert after.keys() == before.keys()  # Llama: the biases merging created are gone again
    for key in before:
        torch.testing.assert_close(after[key], before[key], atol=1e-6, rtol=0)
    plain = model.merge_and_unload()
    assert not any(isinstance(m, pk.AdapterLayer) for m in plain.modules())
    torch.testing.assert_close(logits(plain, family), unmerged, atol=ATOL, rtol=0)
    if family == "llama":  # the merged model carries the learned biases as real ones
        assert plain.model.layers[0].self_attn.q_proj.bias is not None


def test_checkpoint_keys_and_shapes(tmp_path):
    model = adapted("llama", target_modules=["q_proj", "down_proj"])
    model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "adapter_model.safetensors")
    assert {k: tuple(v.shape) for k, v in weights.items()} == {
        f"base_model.model.model.layers.{i}.{path}.bitfit_bias": (32,)
        for i in (0, 1) for path in ("self_attn.q_proj", "mlp.down_proj")}
    assert type(pk.PeftConfig.from_pretrained(tmp_path)) is pk.BitFitConfig


@pytest.mark.parametrize("family", CASES)
def test_save_load_round_trip_is_exact(family, tmp_path):
    assert_save_load_exact(adapted(family), lambda: make_model(family), family, tmp_path)


def test_only_bias_deltas_train():
    assert_only_adapter_params_train(adapted("gpt2"), "gpt2", "bitfit_bias")


@pytest.mark.parametrize("family", CASES)
def test_two_adapters_mixed_batch_switch_and_delete(family):
    model = adapted(family, name="a", seed=0)
    adapted(family, name="b", model=model, seed=1)
    assert_mixed_batch_equals_per_row(model, family, ["b", pk.BASE_ADAPTER, "a", "b"])
    # two active adapters add up; merging both equals running both
    model.set_adapter(["a", "b"])
    both = logits(model, family)
    model.merge_adapter()
    torch.testing.assert_close(logits(model, family), both, atol=ATOL, rtol=0)
    model.unmerge_adapter()
    assert_delete_restores_base(model, lambda: make_model(family), family, ["a", "b"], atol=ATOL)


def test_channel_first_modules():
    conv = next(t for t in TOYS if t.name == "conv2d")
    x = conv.inputs(batch=3)
    model = pk.get_peft_model(conv.model(), pk.BitFitConfig(), adapter_name="a")
    assert model.peft_config["a"].target_modules == ["conv", "point", "head"]
    model.add_adapter("b", pk.BitFitConfig(target_modules=["conv"]))
    randomize_lora_weights(model, patterns=("bitfit_bias",))
    layer = model.get_base_model().conv
    with torch.no_grad():
        expected = layer.base_layer(x) + layer.bitfit_bias["a"][None, :, None, None]
        torch.testing.assert_close(layer(x), expected, atol=ATOL, rtol=0)
        mixed = model(x, adapter_names=["a", "b", pk.BASE_ADAPTER])
        for i, name in enumerate(["a", "b"]):
            model.set_adapter(name)
            torch.testing.assert_close(mixed[i : i + 1], model(x[i : i + 1]), atol=ATOL, rtol=0)
        model.set_adapter("a")
        unmerged = model(x)
        model.merge_adapter()
        torch.testing.assert_close(model(x), unmerged, atol=ATOL, rtol=0)


def test_training_from_yaml_lowers_the_loss(tmp_path):
    losses = train_losses(tmp_path, {"method": "bitfit", "target_modules": "all-linear"}, max_steps=20, lr=2e-2)
    assert sum(losses[-3:]) / 3 < 0.7 * losses[0], losses


# ---------------------------------------------------------------------------------------------- errors
def test_bias_free_model_without_targets_says_what_to_do():
    with pytest.raises(pk.TargetError, match="no module with a bias in LlamaForCausalLM.*target_modules='all-linear'"):
        pk.get_peft_model(make_model("llama"), pk.BitFitConfig())


def test_unsupported_module_is_named_and_model_unchanged():
    base = make_model("llama")
    with pytest.raises(pk.TargetError, match=r"'model.embed_tokens' is a Embedding, which BITFIT cannot adapt.*nn.Linear"):
        pk.get_peft_model(base, pk.BitFitConfig(target_modules=["embed_tokens", "q_proj"]))
    assert not any(isinstance(m, pk.AdapterLayer) for m in base.modules())


def test_safe_merge_refuses_nan_and_changes_nothing():
    model = adapted("gpt2")
    before = base_state(model.get_base_model())
    with torch.no_grad():
        model.get_base_model().transformer.h[1].mlp.c_fc.bitfit_bias["default"][0] = float("nan")
    with pytest.raises(pk.AdapterError, match="NaN/inf.*nothing was merged"):
        model.merge_adapter(safe_merge=True)
    after = base_state(model.get_base_model())
    assert all(torch.equal(after[k], before[k]) for k in before)
