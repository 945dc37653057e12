"""PeftModel's API: adapter management, saving layouts, trainability, task heads, initialisations,
pass-through to the wrapped model."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn as nn
from tiny_models import tiny_bert_classifier as tiny_bert_cls
from tiny_models import tiny_llama
from toy_models import TOYS
from transformers import LlamaConfig, LlamaForCausalLM

import peftkit as pk

LINEAR = TOYS[0]


def lora(**kw) -> pk.LoraConfig:
    return pk.LoraConfig(**{"r": 4, "target_modules": LINEAR.targets, "init_lora_weights": False, **kw})


def test_add_set_delete_adapters():
    model = pk.get_peft_model(LINEAR.model(), lora())
    model.add_adapter("other", lora(r=2))
    assert model.active_adapter == "default" and model.active_adapters == ["default"]
    assert sorted(model.peft_config) == ["default", "other"]
    model.set_adapter("other")
    assert model.active_adapter == "other"
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".other." in n for n in trainable)
    model.delete_adapter("other")
    assert model.active_adapters == ["default"] and list(model.peft_config) == ["default"]
    layer = model.get_base_model().lin1
    assert layer.adapter_names == ["default"] and "other" not in layer.r
    model.delete_adapter("default")  # the last one: layers get their original module back
    assert isinstance(model.get_base_model().lin1, nn.Linear)
    torch.testing.assert_close(model(LINEAR.inputs()), LINEAR.model()(LINEAR.inputs()))


def test_print_and_count_trainable_parameters(capsys):
    model = pk.get_peft_model(LINEAR.model(), lora())
    trainable, total = model.get_nb_trainable_parameters()
    assert trainable == 4 * 8 + 16 * 4 + 4 * 16 + 4 * 4  # A and B of lin1 (8->16) and lin2 (16->4)
    assert total == trainable + sum(p.numel() for p in LINEAR.model().parameters())
    model.print_trainable_parameters()
    out = capsys.readouterr().out
    assert f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}" in out


def test_save_layout_and_selected_adapters(tmp_path):
    model = pk.get_peft_model(LINEAR.model(), lora())
    model.add_adapter("second", lora(r=2))
    model.save_pretrained(tmp_path)
    assert (tmp_path / "adapter_config.json").exists() and (tmp_path / "adapter_model.safetensors").exists()
    assert (tmp_path / "second" / "adapter_model.safetensors").exists()
    config = json.loads((tmp_path / "second" / "adapter_config.json").read_text())
    assert config["r"] == 2 and config["peft_type"] == "LORA" and config["inference_mode"] is True
    assert model.peft_config["second"].inference_mode is False  # saving does not change the live config
    only = tmp_path / "only"
    model.save_pretrained(only, selected_adapters=["second"])
    assert (only / "second").is_dir() and not (only / "adapter_model.safetensors").exists()


def test_load_adapter_and_switch(tmp_path):
    x = LINEAR.inputs()
    a = pk.get_peft_model(LINEAR.model(), lora())
    torch.manual_seed(5)
    b = pk.get_peft_model(LINEAR.model(), lora())
    a.save_pretrained(tmp_path / "a")
    b.save_pretrained(tmp_path / "b")
    model = pk.PeftModel.from_pretrained(LINEAR.model(), tmp_path / "a", adapter_name="a")
    model.load_adapter(tmp_path / "b", adapter_name="b")
    assert model.active_adapter == "a"  # loading does not switch
    assert torch.equal(model(x), a(x))
    model.set_adapter("b")
    assert torch.equal(model(x), b(x))


def test_is_trainable_controls_gradients(tmp_path):
    pk.get_peft_model(LINEAR.model(), lora()).save_pretrained(tmp_path)
    frozen = pk.PeftModel.from_pretrained(LINEAR.model(), tmp_path)
    assert frozen.peft_config["default"].inference_mode is True
    assert not any(p.requires_grad for p in frozen.parameters())
    trainable = pk.PeftModel.from_pretrained(LINEAR.model(), tmp_path, is_trainable=True)
    names = {n for n, p in trainable.named_parameters() if p.requires_grad}
    assert names and all("lora_" in n for n in names)


def test_parameter_names_match_peft_layout():
    model = pk.get_peft_model(LINEAR.model(), lora())
    names = {n for n, _ in model.named_parameters()}
    assert "base_model.model.lin1.lora_A.default.weight" in names
    assert "base_model.model.lin1.base_layer.weight" in names


def test_rslora_and_patterns_set_scaling():
    model = pk.get_peft_model(
        LINEAR.model(), lora(r=4, lora_alpha=8, use_rslora=True, rank_pattern={"lin2": 2}, alpha_pattern={"lin2": 6})
    )
    lin1, lin2 = model.get_base_model().lin1, model.get_base_model().lin2
    assert lin1.scaling["default"] == pytest.approx(8 / math.sqrt(4))
    assert lin2.r["default"] == 2 and lin2.scaling["default"] == pytest.approx(6 / math.sqrt(2))
    assert lin2.lora_A["default"].weight.shape == (2, 16)


@pytest.mark.parametrize("init", ["pissa", "pissa_niter_4", "olora"])
def test_weight_based_inits_keep_outputs_and_move_weight_into_adapter(init):
    x = LINEAR.inputs()
    base = LINEAR.model()
    expected = base(x)
    original = base.lin1.weight.detach().clone()
    model = pk.get_peft_model(base, pk.LoraConfig(r=4, target_modules=["lin1"], init_lora_weights=init))
    torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=0)
    layer = model.get_base_model().lin1
    assert not torch.allclose(layer.base_layer.weight, original)  # the base holds the residual
    assert layer.lora_B["default"].weight.abs().sum() > 0  # and the adapter the principal part


def test_pissa_adapter_marked_initialised_reloads_onto_the_residual_base_untouched(tmp_path):
    """peft's recipe for shipping the residual base: init_lora_weights=True in the saved config
    says "do not decompose again" (a config saying "pissa" re-runs it: tests/methods/test_pissa_loading.py)."""
    x = LINEAR.inputs()
    model = pk.get_peft_model(LINEAR.model(), pk.LoraConfig(r=4, target_modules=["lin1"], init_lora_weights="pissa"))
    model.peft_config["default"].init_lora_weights = True
    model.save_pretrained(tmp_path)
    residual_base = model.get_base_model().lin1.base_layer.weight.detach().clone()
    fresh = LINEAR.model()
    with torch.no_grad():
        fresh.lin1.weight.copy_(residual_base)
    loaded = pk.PeftModel.from_pretrained(fresh, tmp_path)
    assert torch.equal(loaded.get_base_model().lin1.base_layer.weight, residual_base)
    torch.testing.assert_close(loaded(x), model(x), atol=0, rtol=0)


@pytest.mark.parametrize("bias", ["all", "lora_only"])
def test_bias_training_and_saving(bias, tmp_path):
    model = pk.get_peft_model(LINEAR.model(), lora(target_modules=["lin1"], bias=bias))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "base_model.model.lin1.base_layer.bias" in trainable
    assert ("base_model.model.lin2.bias" in trainable) == (bias == "all")
    with torch.no_grad():
        model.get_base_model().lin1.base_layer.bias.add_(1.0)
    keys = set(pk.get_peft_model_state_dict(model))
    assert "base_model.model.lin1.base_layer.bias" in keys
    model.save_pretrained(tmp_path)
    loaded = pk.PeftModel.from_pretrained(LINEAR.model(), tmp_path)
    assert torch.equal(loaded(LINEAR.inputs()), model(LINEAR.inputs()))


def test_sequence_classification_head_trains_and_saves(tmp_path):
    model = pk.get_peft_model(tiny_bert_cls(), pk.LoraConfig(r=4, target_modules=["query", "value"], task_type="SEQ_CLS"))
    assert model.peft_config["default"].modules_to_save == ["classifier", "score"]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "base_model.model.classifier.modules_to_save.default.weight" in trainable
    assert "base_model.model.classifier.original_module.weight" not in trainable
    ids = torch.randint(1, 100, (2, 6))
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model.train()
    model(input_ids=ids, labels=torch.tensor([0, 2])).loss.backward()
    opt.step()
    model.eval()
    keys = set(pk.get_peft_model_state_dict(model))
    assert {"base_model.model.classifier.weight", "base_model.model.classifier.bias"} <= keys
    model.save_pretrained(tmp_path)
    loaded = pk.PeftModel.from_pretrained(tiny_bert_cls(), tmp_path)
    assert torch.equal(loaded(input_ids=ids).logits, model(input_ids=ids).logits)
    with loaded.disable_adapter():  # the original head comes back when adapters are off
        torch.testing.assert_close(loaded(input_ids=ids).logits, tiny_bert_cls()(input_ids=ids).logits)


def test_all_linear_resolves_to_names_in_saved_config(tmp_path):
    model = pk.get_peft_model(tiny_llama(), pk.LoraConfig(r=2, target_modules="all-linear"))
    targets = model.peft_config["default"].target_modules
    # stored as the short names that select the same 2 x 7 projections (as peft writes "all-linear")
    assert targets == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    assert len(model.targeted_module_names) == 2 * 7 and "lm_head" not in model.targeted_module_names
    model.save_pretrained(tmp_path)
    again = pk.PeftModel.from_pretrained(tiny_llama(), tmp_path)
    assert again.targeted_module_names == model.targeted_module_names


def test_forward_generate_and_attributes_pass_through():
    base = tiny_llama()
    model = pk.get_peft_model(base, pk.LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    model.add_adapter("b", pk.LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    assert model.config is base.config and model.base_model.model is base and model.model is base
    ids = torch.randint(1, 100, (3, 5))
    out = model.generate(input_ids=ids, max_new_tokens=4, do_sample=False, adapter_names=["default", "b", "__base__"])
    for i, name in enumerate(["default", "b", "__base__"]):
        if name == "__base__":
            with model.disable_adapter():
                row = model.generate(input_ids=ids[i : i + 1], max_new_tokens=4, do_sample=False)
        else:
            model.set_adapter(name)
            row = model.generate(input_ids=ids[i : i + 1], max_new_tokens=4, do_sample=False)
        assert torch.equal(out[i : i + 1], row)


def test_generate_with_beams_and_mixed_adapters():
    model = pk.get_peft_model(tiny_llama(), pk.LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False))
    ids = torch.randint(1, 100, (2, 5))
    out = model.generate(input_ids=ids, max_new_tokens=3, num_beams=2, do_sample=False, adapter_names=["default", "__base__"])
    single = model.generate(input_ids=ids[:1], max_new_tokens=3, num_beams=2, do_sample=False)
    assert torch.equal(out[:1], single)


def test_tied_embedding_merge_leaves_lm_head_alone():
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=100, tie_word_embeddings=True)
    base = LlamaForCausalLM(cfg).eval()
    assert base.lm_head.weight is base.model.embed_tokens.weight
    model = pk.get_peft_model(base, pk.LoraConfig(r=2, target_modules=["embed_tokens"], init_lora_weights=False))
    ids = torch.randint(0, 100, (2, 5))
    expected = model(input_ids=ids).logits
    with pytest.warns(UserWarning, match="tied"):
        merged = model.merge_and_unload()
    torch.testing.assert_close(merged(input_ids=ids).logits, expected, atol=1e-5, rtol=0)
    assert merged.config.tie_word_embeddings is False


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_base_keeps_float32_adapters(dtype):
    base = LINEAR.model().to(dtype)
    model = pk.get_peft_model(base, lora())
    layer = model.get_base_model().lin1
    assert layer.lora_A["default"].weight.dtype == torch.float32
    assert layer.base_layer.weight.dtype == dtype
    assert model(LINEAR.inputs().to(dtype)).dtype == dtype


def test_peft_task_classes_are_peft_models():
    model = pk.PeftModelForCausalLM(tiny_llama(), pk.LoraConfig(r=2, target_modules=["q_proj"]))
    assert isinstance(model, pk.PeftModel)


def test_peft_tuner_api_on_base_model_and_layer_switches():
    """peft's base_model.set_adapter / prefix / disable_adapter_layers reach the one PeftModel,
    also in a deep copy; has_active_enabled_adapter follows disabling."""
    import copy

    model = pk.get_peft_model(nn.Sequential(nn.Linear(4, 4)), pk.LoraConfig(target_modules=["0"], init_lora_weights=False))
    model.add_adapter("b", pk.LoraConfig(target_modules=["0"]))
    model.base_model.set_adapter("b")
    assert model.active_adapters == ["b"] and model.base_model.prefix == model.prefix == "lora_"
    twin = copy.deepcopy(model)
    twin.base_model.set_adapter("default")
    assert twin.active_adapters == ["default"] and model.active_adapters == ["b"]
    x = torch.randn(2, 4)
    twin.base_model.disable_adapter_layers()
    assert not twin.has_active_enabled_adapter
    torch.testing.assert_close(twin(x), twin.base_model.model[0].base_layer(x))
    twin.enable_adapter_layers()
    assert twin.has_active_enabled_adapter
    with twin.disable_adapter():
        assert not twin.has_active_enabled_adapter


def test_disable_adapter_is_reentrant_and_restores_what_was_before():
    model = pk.get_peft_model(nn.Sequential(nn.Linear(4, 4)), pk.LoraConfig(target_modules=["0"]))
    layer = model.base_model.model[0]
    with model.disable_adapter():
        with model.disable_adapter():
            pass
        assert layer.disable_adapters and not model.has_active_enabled_adapter  # the inner exit kept it off
    assert not layer.disable_adapters
    model.disable_adapter_layers()
    with model.disable_adapter():
        pass
    assert layer.disable_adapters  # switched off before the context: still off after it


def test_get_model_config_as_peft_base_tuner():
    """``peft_model.base_model`` answers ``get_model_config`` as peft's ``BaseTuner`` does, also
    called on the class with any model."""
    import dataclasses

    from peft.tuners.tuners_utils import BaseTuner

    from peftkit.model import DUMMY_MODEL_CONFIG, BaseModelHolder

    @dataclasses.dataclass
    class DataConfig:
        key: str = "value"

    class WithConfig(nn.Module):
        def __init__(self, config):
            super().__init__()
            self.config = config

    for model in (WithConfig({"key": "value"}), WithConfig(DataConfig()), nn.Linear(2, 2)):
        assert BaseModelHolder.get_model_config(model) == BaseTuner.get_model_config(model)
    llama = tiny_llama()
    assert BaseModelHolder.get_model_config(llama) == llama.config.to_dict()
    dummy = BaseModelHolder.get_model_config(nn.Linear(2, 2))
    dummy["model_type"] = "changed"  # a copy: the constant stays
    assert DUMMY_MODEL_CONFIG == {"model_type": "custom"}
    wrapped = pk.get_peft_model(LINEAR.model(), lora())
    assert isinstance(wrapped.base_model, BaseModelHolder)
    assert wrapped.base_model.get_model_config(llama)["model_type"] == "llama"
