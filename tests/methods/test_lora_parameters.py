"""LoraConfig.target_parameters: LoRA on nn.Parameters, MoE expert stacks above all
(peftkit.methods.lora_parameters)."""

from __future__ import annotations

import peft
import pytest
import torch
import torch.nn as nn
import transformers
from interop_helpers import assert_moves_both_ways, randomize_adapters

import peftkit as pk
from peftkit.errors import AdapterError, ConfigError, TargetError
from peftkit.methods.lora_parameters import LoraParameter

EXPERTS = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]
IDS = torch.tensor([[3, 17, 42, 8, 11, 60, 2], [5, 9, 33, 1, 50, 12, 7]])
SMALL = dict(vocab_size=64, hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2)


def mixtral() -> nn.Module:
    """Experts stored (experts, out, in), as transformers 5 stores Mixtral's."""
    torch.manual_seed(0)
    return transformers.MixtralForCausalLM(transformers.MixtralConfig(**SMALL)).eval()


def gpt_oss() -> nn.Module:
    """Experts stored (experts, in, out): the module says ``is_transposed = True``."""
    torch.manual_seed(0)
    config = transformers.GptOssConfig(**SMALL, head_dim=4, layer_types=["full_attention"] * 2)
    return transformers.GptOssForCausalLM(config).eval()


def llama4() -> nn.Module:
    """Experts stored (experts, in, out) without ``is_transposed``: peft's rule reads them as (E, out, in)."""
    torch.manual_seed(0)
    config = transformers.Llama4TextConfig(**{**SMALL, "num_experts_per_tok": 1}, intermediate_size_mlp=32, head_dim=4,
                                           interleave_moe_layer_step=1)
    return transformers.Llama4ForCausalLM(config).eval()


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


def adapted(make_base=mixtral, **kwargs) -> pk.PeftModel:
    kwargs = {"target_modules": [], "target_parameters": EXPERTS, "init_lora_weights": False, "r": 2, **kwargs}
    return randomize_adapters(pk.get_peft_model(make_base(), pk.LoraConfig(**kwargs)))


def experts(model) -> nn.Module:
    return model.base_model.model.model.layers[0].mlp.experts


def test_transformers_keeps_experts_as_3d_parameters():
    expert_module = mixtral().model.layers[0].mlp.experts
    assert expert_module.gate_up_proj.shape == (4, 48, 16) and not getattr(expert_module, "is_transposed", False)
    assert gpt_oss().model.layers[0].mlp.experts.is_transposed


@pytest.mark.parametrize("make_base", [mixtral, gpt_oss], ids=["mixtral", "gpt_oss"])
def test_moves_both_ways_with_peft(make_base, tmp_path):
    saved = assert_moves_both_ways(make_base, logits, tmp_path, target_modules=[], target_parameters=EXPERTS,
                                   init_lora_weights=False, r=2)
    prefix = "base_model.model.model.layers.0.mlp.experts"
    # two parameters of one module nest: the first one's wrapper sits below the second's (peft's keys)
    assert {f"{prefix}.base_layer.lora_A.weight", f"{prefix}.lora_A.weight"} <= set(saved)
    assert saved[f"{prefix}.base_layer.lora_A.weight"].shape == (2 * 4, 16)  # (r * experts, in)


def test_unset_target_modules_adapt_parameters_only_as_peft_does_on_moe_models(tmp_path):
    saved = assert_moves_both_ways(mixtral, logits, tmp_path, target_parameters=EXPERTS, init_lora_weights=False, r=2)
    assert not any("self_attn" in key for key in saved)  # no per-model-type default modules on top


def test_rank_pattern_names_the_parameter_and_llama4_moves_both_ways(tmp_path):
    targets = ["feed_forward.experts.gate_up_proj", "feed_forward.experts.down_proj"]
    saved = assert_moves_both_ways(llama4, logits, tmp_path, target_modules=["q_proj"], target_parameters=targets,
                                   init_lora_weights=False, r=2, rank_pattern={"experts.gate_up_proj": 1})
    prefix = "base_model.model.model.layers.0.feed_forward.experts"
    assert saved[f"{prefix}.base_layer.lora_A.weight"].shape == (1 * 4, 48)  # gate_up_proj: rank 1, 4 experts
    assert saved[f"{prefix}.lora_A.weight"].shape == (2 * 4, 16)


def test_bfloat16_experts_give_peft_s_outputs_exactly(tmp_path):
    saved = assert_moves_both_ways(lambda: mixtral().to(torch.bfloat16), logits, tmp_path, atol=0.0, target_modules=[],
                                   target_parameters=EXPERTS, init_lora_weights=False, r=2)
    assert all(t.dtype == torch.float32 for t in saved.values())  # adapters stay float32 on a half base, as peft


def test_layout_is_per_expert_low_rank():
    model = adapted()
    outer = experts(model)
    inner = outer.base_layer
    assert (outer.parameter_name, inner.parameter_name) == ("down_proj", "gate_up_proj")
    holder = inner.base_layer
    delta = inner.delta_weight("default")
    assert delta.shape == holder.gate_up_proj.shape
    a = inner.lora_A["default"].weight.reshape(4, 2, 16)
    b = inner.lora_B["default"].weight.reshape(48, 2, 4)
    torch.testing.assert_close(delta[1], inner.scaling["default"] * b[:, :, 1] @ a[1])
    assert all(torch.linalg.matrix_rank(d) <= 2 for d in delta)


def test_a_new_adapter_changes_nothing_and_a_trained_one_does():
    model = pk.get_peft_model(mixtral(), pk.LoraConfig(target_parameters=EXPERTS))
    torch.testing.assert_close(logits(model), logits(mixtral()))
    assert not torch.allclose(logits(adapted()), logits(mixtral()))


def test_only_a_and_b_train_and_the_parameter_stays_untouched():
    model = adapted()
    model.train()
    holder = experts(model).base_layer.base_layer
    original = holder.gate_up_proj.detach().clone()
    model(input_ids=IDS, labels=IDS).loss.backward()
    trained = {n for n, p in model.named_parameters() if p.grad is not None}
    assert trained and all("lora_A" in n or "lora_B" in n for n in trained)
    assert "gate_up_proj" not in holder.__dict__  # the adapted tensor is gone after forward
    assert isinstance(holder._parameters["gate_up_proj"], nn.Parameter)
    assert torch.equal(holder.gate_up_proj, original)


@pytest.mark.parametrize("make_base", [mixtral, gpt_oss], ids=["mixtral", "gpt_oss"])
def test_merge_unmerge_disable_and_unload(make_base):
    model = adapted(make_base)
    base, expected = logits(make_base()), logits(model)
    model.merge_adapter(safe_merge=True)
    torch.testing.assert_close(logits(model), expected, atol=1e-5, rtol=0)
    model.unmerge_adapter()
    with model.disable_adapter():
        torch.testing.assert_close(logits(model), base, atol=1e-5, rtol=0)
    torch.testing.assert_close(logits(model), expected, atol=1e-5, rtol=0)
    merged = model.merge_and_unload()
    assert not any(isinstance(m, pk.AdapterLayer) for m in merged.modules())
    torch.testing.assert_close(logits(merged), expected, atol=1e-5, rtol=0)


def test_second_adapter_joins_the_existing_wrappers_and_delete_restores_the_module():
    model = adapted()
    model.add_adapter("other", pk.LoraConfig(target_modules=[], target_parameters=EXPERTS, init_lora_weights=False, r=3))
    randomize_adapters(model, seed=1)
    outer = experts(model)
    assert outer.adapter_names == ["default", "other"] and not isinstance(outer.base_layer.base_layer, LoraParameter)
    first = logits(model)
    model.set_adapter("other")
    assert not torch.allclose(logits(model), first)
    model.set_adapter(["default", "other"])  # both updates summed
    model.delete_adapter("other")
    torch.testing.assert_close(logits(model), first)
    model.delete_adapter("default")
    assert type(experts(model)).__name__ == "MixtralExperts"
    torch.testing.assert_close(logits(model), logits(mixtral()))


def test_two_dimensional_parameter_equals_lora_on_the_linear():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    x = torch.randn(4, 6)
    on_param = randomize_adapters(pk.get_peft_model(net, pk.LoraConfig(target_parameters=["0.weight"], init_lora_weights=False)))
    on_module = pk.get_peft_model(nn.Sequential(*[m for m in net]), pk.LoraConfig(target_modules=["0"]))
    with torch.no_grad():
        for p_name in ("lora_A", "lora_B"):
            getattr(on_module.base_model.model[0], p_name)["default"].weight.copy_(
                getattr(on_param.base_model.model[0], p_name)["default"].weight)
        torch.testing.assert_close(on_param(x), on_module(x))


def test_mixed_batch_of_one_adapter_works_and_of_two_is_refused():
    model = adapted()
    model.add_adapter("other", pk.LoraConfig(target_modules=[], target_parameters=EXPERTS, init_lora_weights=False, r=2))
    with torch.no_grad():
        same = model(input_ids=IDS, adapter_names=["default", "default"]).logits
        torch.testing.assert_close(same, logits(model))
        with pytest.raises(AdapterError, match="cannot mix adapters"):
            model(input_ids=IDS, adapter_names=["default", "other"])


@pytest.mark.parametrize("kwargs, field", [
    ({"lora_dropout": 0.1}, "lora_dropout"), ({"use_dora": True}, "use_dora"), ({"lora_bias": True}, "lora_bias"),
])
def test_config_refuses_what_cannot_apply_to_a_weight(kwargs, field):
    with pytest.raises(ConfigError) as info:
        pk.LoraConfig(target_parameters=EXPERTS, **kwargs)
    assert field in [p for p, _ in info.value.problems]


def test_bad_targets_are_named():
    with pytest.raises(TargetError, match="no `target_parameters` found.*'experts.no_such_thing'.* no parameter of"):
        pk.get_peft_model(mixtral(), pk.LoraConfig(target_parameters=["experts.no_such_thing"]))
    with pytest.raises(TargetError, match="already adapts"):
        pk.get_peft_model(mixtral(), pk.LoraConfig(target_modules=["q_proj"], target_parameters=["q_proj.weight"]))
    with pytest.raises(TargetError, match="2-D .* 3-D"):
        pk.get_peft_model(mixtral(), pk.LoraConfig(target_parameters=["input_layernorm.weight"]))


def test_adalora_refuses_target_parameters():
    with pytest.raises(ConfigError, match="target_parameters"):
        pk.AdaLoraConfig(target_parameters=EXPERTS, total_step=10)


def test_config_written_by_peft_is_read(tmp_path):
    peft.LoraConfig(target_modules=[], target_parameters=EXPERTS, r=4).save_pretrained(tmp_path)
    config = pk.PeftConfig.from_pretrained(tmp_path)
    assert config.target_parameters == EXPERTS and not config.target_modules


def test_a_module_called_with_keywords_only_works():
    model = adapted()
    hidden = torch.randn(5, 16)
    top_k_index, top_k_weights = torch.tensor([[0, 1]] * 5), torch.full((5, 2), 0.5)
    layer = experts(model)
    with torch.no_grad():
        adapted_out = layer(hidden_states=hidden, top_k_index=top_k_index, top_k_weights=top_k_weights)
        with model.disable_adapter():
            base_out = layer(hidden_states=hidden, top_k_index=top_k_index, top_k_weights=top_k_weights)
    assert not torch.allclose(adapted_out, base_out)


def test_layer_answers_peft_s_attribute_names():
    inner = experts(adapted()).base_layer
    assert (inner.parameter_name, inner.num_experts, inner.in_features, inner.out_features) == ("gate_up_proj", 4, 16, 48)
    assert "parameter_name='gate_up_proj'" in repr(inner) and "in_features=16" in repr(inner)


def test_one_side_matching_nothing_warns_and_adapts_the_other():
    """target_modules and target_parameters together: one of them may match nothing (peft's
    RuntimeWarning names it); the other is still adapted. Only both empty is an error."""
    with pytest.warns(RuntimeWarning, match=r"target_modules=\{'no_such_module'\} were set but no module was matched"):
        model = pk.get_peft_model(mixtral(), pk.LoraConfig(target_modules=["no_such_module"], target_parameters=EXPERTS))
    assert any(isinstance(m, LoraParameter) for m in model.modules())
    with pytest.warns(RuntimeWarning, match=r"target_parameters=\['experts.nothing'\] were set but no parameter"):
        model = pk.get_peft_model(mixtral(), pk.LoraConfig(target_modules=["q_proj"], target_parameters=["experts.nothing"]))
    assert not any(isinstance(m, LoraParameter) for m in model.modules())
    assert model.targeted_module_names and all(k.endswith("q_proj") for k in model.targeted_module_names)
    base = mixtral()
    with pytest.raises(TargetError, match="matched no module.*matched no parameter either"):
        pk.get_peft_model(base, pk.LoraConfig(target_modules=["nothing"], target_parameters=["experts.nothing"]))
    assert not any(isinstance(m, pk.AdapterLayer) for m in base.modules())


def test_merging_again_warns_as_peft():
    model = pk.get_peft_model(mixtral(), pk.LoraConfig(target_modules=[], target_parameters=EXPERTS))
    model.merge_adapter()
    with pytest.warns(UserWarning, match="All adapters are already merged, nothing to do"):
        model.merge_adapter()


def test_targeted_parameter_names_list_each_adapted_parameter_as_peft():
    model = pk.get_peft_model(mixtral(), pk.LoraConfig(target_modules=[], target_parameters=EXPERTS))
    theirs = peft.get_peft_model(mixtral(), peft.LoraConfig(target_modules=[], target_parameters=EXPERTS))
    assert model.targeted_parameter_names == theirs.targeted_parameter_names
    assert model.base_model.targeted_parameter_names == model.targeted_parameter_names
    assert model.targeted_parameter_names[0] == "model.layers.0.mlp.experts.gate_up_proj"
