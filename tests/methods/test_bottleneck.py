"""Bottleneck adapters (Houlsby, Pfeiffer, parallel): placement on several architectures, the
adapter contract, the checkpoint format, training from YAML, and clear errors."""

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
from tiny_models import make_model

import peftkit as pk
from peftkit.methods.bottleneck import find_blocks
from peftkit.methods.bottleneck_layers import ACTIVATIONS, BottleneckLayer

pytestmark = pytest.mark.usefixtures("torch_single_thread")

FAMILIES = ("llama", "gpt2", "bert")
TYPES = ("houlsby", "pfeiffer", "parallel")


def adapted(family: str, name: str = "default", model=None, seed: int = 0, **kw) -> pk.PeftModel:
    """Random (trained-like) adapters: ``init_weights=False`` gives a non-zero up-projection."""
    torch.manual_seed(100 + seed)
    cfg = pk.BottleneckConfig(**{"init_weights": False, "bottleneck_size": 4, **kw})
    if model is None:
        return pk.get_peft_model(make_model(family), cfg, adapter_name=name)
    model.add_adapter(name, cfg)
    return model


def test_default_blocks_per_architecture():
    assert find_blocks(make_model("llama"), pk.BottleneckConfig()) == [
        "model.layers.0.self_attn", "model.layers.0.mlp", "model.layers.1.self_attn", "model.layers.1.mlp"]
    assert find_blocks(make_model("gpt2"), pk.BottleneckConfig(adapter_type="pfeiffer")) == [
        "transformer.h.0.mlp", "transformer.h.1.mlp"]
    assert find_blocks(make_model("bert"), pk.BottleneckConfig()) == [
        "bert.encoder.layer.0.attention.output.dense", "bert.encoder.layer.0.output.dense",
        "bert.encoder.layer.1.attention.output.dense", "bert.encoder.layer.1.output.dense"]
    assert find_blocks(make_model("t5"), pk.BottleneckConfig(adapter_type="parallel", layers_to_transform=[1])) == [
        "encoder.block.1.layer.1.DenseReluDense", "decoder.block.1.layer.2.DenseReluDense"]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("adapter_type", TYPES)
def test_identity_at_init_then_random_changes_output_and_disable_is_base(family, adapter_type):
    expected = logits(make_model(family), family)
    fresh = pk.get_peft_model(make_model(family), pk.BottleneckConfig(adapter_type=adapter_type))
    torch.testing.assert_close(logits(fresh, family), expected, atol=0, rtol=0)
    model = adapted(family, adapter_type=adapter_type)
    assert not torch.allclose(logits(model, family), expected, atol=1e-4)
    with model.disable_adapter():
        torch.testing.assert_close(logits(model, family), expected, atol=0, rtol=0)


def test_checkpoint_keys_and_shapes(tmp_path):
    model = adapted("llama", reduction_factor=8, bottleneck_size=None, adapter_type="pfeiffer")
    model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "adapter_model.safetensors")
    prefix = "base_model.model.model.layers.0.mlp."
    assert {k: tuple(v.shape) for k, v in weights.items() if k.startswith(prefix)} == {
        prefix + "bottleneck_down.weight": (4, 32), prefix + "bottleneck_down.bias": (4,),
        prefix + "bottleneck_up.weight": (32, 4), prefix + "bottleneck_up.bias": (32,)}
    assert len(weights) == 8
    saved = pk.PeftConfig.from_pretrained(tmp_path)
    assert isinstance(saved, pk.BottleneckConfig) and saved.ffn_modules == ["mlp"] and saved.inference_mode


@pytest.mark.parametrize("family", ("llama", "gpt2"))
def test_save_load_round_trip_is_exact(family, tmp_path):
    assert_save_load_exact(adapted(family), lambda: make_model(family), family, tmp_path)


def test_parallel_reads_the_block_input_and_tuples_keep_their_tail():
    model = adapted("llama", adapter_type="houlsby")
    attn = model.get_base_model().model.layers[0].self_attn
    assert isinstance(attn, BottleneckLayer)
    calls = []
    attn.base_layer.register_forward_hook(lambda m, a, kw, out: calls.append(out), with_kwargs=True)
    with torch.no_grad():
        model(**{"input_ids": torch.tensor([[5, 6, 7]])})
    (base_out,) = calls
    assert isinstance(base_out, tuple)  # attention returns (hidden, weights): only hidden is adapted

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(6, 6)

        def forward(self, x, scale=1.0):
            return self.proj(x) * scale, "kept"

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = Block()

        def forward(self, x):
            return self.block(x=x, scale=2.0)

    torch.manual_seed(0)
    net = pk.get_peft_model(Net(), pk.BottleneckConfig(adapter_type="parallel", ffn_modules=["block"],
                                                       bottleneck_size=3, init_weights=False))
    layer = net.get_base_model().block
    x = torch.randn(2, 6)
    out, tail = net(x)
    assert tail == "kept"
    torch.testing.assert_close(out, layer.base_layer(x, 2.0)[0] + layer.delta("default", x), atol=ATOL, rtol=0)


def test_two_adapters_switch_and_chain():
    model = adapted("llama", name="a", seed=0)
    adapted("llama", name="b", model=model, seed=1, adapter_type="pfeiffer", non_linearity="gelu", scaling=0.5)
    out_a = logits(model, "llama")
    model.set_adapter("b")
    out_b = logits(model, "llama")
    assert not torch.allclose(out_a, out_b, atol=1e-4)
    # both active: sequential adapters chain on the block output, in order
    model.set_adapter(["a", "b"])
    mlp = model.get_base_model().model.layers[0].mlp
    x = torch.randn(1, 3, 32)
    with torch.no_grad():
        h = mlp.base_layer(x)
        h = h + mlp.delta("a", h)
        torch.testing.assert_close(mlp(x), h + mlp.delta("b", h), atol=ATOL, rtol=0)
    assert model.get_base_model().model.layers[0].self_attn.computing_adapters == ["a"]  # b is ffn-only


def test_only_adapter_parameters_train():
    assert_only_adapter_params_train(adapted("gpt2"), "gpt2", "bottleneck_")


@pytest.mark.parametrize("family", ("llama", "gpt2"))
def test_mixed_batch_equals_per_row(family):
    model = adapted(family, name="a", seed=0)
    adapted(family, name="b", model=model, seed=1, adapter_type="parallel")
    assert_mixed_batch_equals_per_row(model, family, ["a", "b", pk.BASE_ADAPTER, "b"])


def test_delete_adapters_restores_base():
    model = adapted("llama", name="a")
    adapted("llama", name="b", model=model, seed=1, adapter_type="pfeiffer")
    model.delete_adapter("a")
    assert not isinstance(model.get_base_model().model.layers[0].self_attn, BottleneckLayer)  # only "a" was there
    assert isinstance(model.get_base_model().model.layers[0].mlp, BottleneckLayer)
    assert_delete_restores_base(model, lambda: make_model("llama"), "llama", ["b"])


def test_merge_raises_and_leaves_the_model_working():
    model = adapted("llama")
    expected = logits(model, "llama")
    for merge in (model.merge_adapter, model.merge_and_unload):
        with pytest.raises(pk.AdapterError, match="BOTTLENECK adapters cannot be merged"):
            merge()
    torch.testing.assert_close(logits(model, "llama"), expected, atol=0, rtol=0)
    plain = model.unload()  # removing the adapters without merging is fine
    torch.testing.assert_close(logits(plain, "llama"), logits(make_model("llama"), "llama"), atol=0, rtol=0)


def test_size_activation_and_classification_head():
    cfg = pk.BottleneckConfig(adapter_type="pfeiffer", reduction_factor=4, non_linearity="tanh", task_type="SEQ_CLS")
    model = pk.get_peft_model(make_model("bert"), cfg)
    dense = model.get_base_model().bert.encoder.layer[0].output.dense
    assert dense.bottleneck_down["default"].weight.shape == (8, 32)  # 32 / 4
    assert model.peft_config["default"].modules_to_save == ["classifier", "score"]
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("classifier" in n for n in trainable)
    assert all("classifier" in n or "bottleneck_" in n for n in trainable)
    assert set(ACTIVATIONS) >= {"relu", "gelu", "silu", "tanh"}
    base = logits(make_model("gpt2"), "gpt2")
    for act in ACTIVATIONS:
        out = logits(adapted("gpt2", non_linearity=act), "gpt2")
        assert torch.isfinite(out).all() and not torch.allclose(out, base, atol=1e-4), act


def test_works_on_a_plain_torch_model_with_linear_blocks():
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8))
    model = pk.get_peft_model(net, pk.BottleneckConfig(adapter_type="pfeiffer", ffn_modules=["2"], bottleneck_size=2))
    layer = model.get_base_model()[2]
    assert (layer.in_features, layer.out_features) == (8, 8)
    assert model(torch.randn(3, 4)).shape == (3, 8)


def test_training_from_yaml_lowers_the_loss(tmp_path):
    losses = train_losses(tmp_path, {"method": "bottleneck", "adapter_type": "houlsby", "reduction_factor": 4},
                          max_steps=20, lr=2e-2)
    assert sum(losses[-3:]) / 3 < 0.6 * losses[0], losses


# ---------------------------------------------------------------------------------------------- errors
def test_bad_configs_name_the_field():
    with pytest.raises(pk.ConfigError, match="reduction_factor.*either bottleneck_size or reduction_factor"):
        pk.BottleneckConfig(bottleneck_size=8, reduction_factor=4)
    with pytest.raises(pk.ConfigError, match="attn_modules.*only used by adapter_type='houlsby'"):
        pk.BottleneckConfig(adapter_type="pfeiffer", attn_modules=["attn"])
    with pytest.raises(pk.ConfigError, match="bottleneck_size.*positive integer"):
        pk.BottleneckConfig(bottleneck_size=0)
    with pytest.raises(pk.ConfigError, match="non_linearity"):
        pk.BottleneckConfig(non_linearity="swishy")
    with pytest.raises(pk.ConfigError, match="reduction_factor.*> 0"):
        pk.BottleneckConfig(reduction_factor=-2)
    with pytest.raises(pk.ConfigError, match="layers_to_transform: layer indices must be >= 0"):
        pk.BottleneckConfig(layers_to_transform=[-1])


def test_unmatched_blocks_list_candidate_names():
    base = make_model("llama")
    before = logits(base, "llama")
    with pytest.raises(pk.TargetError, match=r"ffn_modules=\['feed_forward'\] matched no module.*self_attn, self_attn.q_proj"):
        pk.get_peft_model(base, pk.BottleneckConfig(ffn_modules=["feed_forward"]))
    assert not any(isinstance(m, pk.AdapterLayer) for m in base.modules())
    torch.testing.assert_close(logits(base, "llama"), before, atol=0, rtol=0)
    with pytest.raises(pk.TargetError, match="must not overlap"):
        pk.get_peft_model(make_model("llama"), pk.BottleneckConfig(attn_modules=["self_attn"], ffn_modules=["o_proj"]))
    with pytest.raises(pk.TargetError, match="no default for model type None.*ffn_modules=\\['mlp'\\]"):
        pk.get_peft_model(nn.Sequential(nn.Linear(2, 2)), pk.BottleneckConfig(adapter_type="pfeiffer"))


def test_unknown_width_and_wrong_output_are_clear():
    net = nn.ModuleDict({"block": nn.Sequential(nn.ReLU())})
    with pytest.raises(pk.TargetError, match="cannot tell the width of block 'block'"):
        pk.get_peft_model(net, pk.BottleneckConfig(adapter_type="pfeiffer", ffn_modules=["block"]))
    # the model config's hidden size does not fit a block that outputs something else
    model = pk.get_peft_model(make_model("llama"), pk.BottleneckConfig(adapter_type="pfeiffer", ffn_modules=["act_fn"]))
    with pytest.raises(pk.AdapterError, match="expects the block's output to have 32 features, got 64"):
        logits(model, "llama")
