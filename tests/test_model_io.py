"""save_pretrained's model card (README.md), the peft-style config identity of from_pretrained, and key_mapping."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import yaml
from tiny_models import tiny_llama

import peftkit as pk


def _card(folder) -> dict:
    text = (folder / "README.md").read_text()
    return yaml.safe_load(text.split("---")[1])


def test_save_pretrained_writes_a_peft_model_card(tmp_path):
    base = tiny_llama()
    base.config._name_or_path = "org/tiny-llama"
    model = pk.get_peft_model(base, pk.LoraConfig(target_modules=["q_proj"]))
    model.save_pretrained(tmp_path)
    card = _card(tmp_path)
    assert card["library_name"] == "peft"
    assert card["base_model"] == "org/tiny-llama"
    assert "lora" in card["tags"]


def test_a_model_without_config_gets_no_base_model_and_a_user_card_stays(tmp_path):
    model = pk.get_peft_model(nn.Sequential(nn.Linear(4, 4)), pk.IA3Config(target_modules=["0"], feedforward_modules=[]))
    model.save_pretrained(tmp_path / "a")
    assert "base_model" not in _card(tmp_path / "a")
    assert _card(tmp_path / "a")["tags"] == ["peftkit", "ia3"]
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "README.md").write_text("---\nmeta: hello\ntags:\n- mine\n---\nmy own card\n")
    model.save_pretrained(tmp_path / "b")
    card = _card(tmp_path / "b")  # as peft: the user's text and metadata kept, peft's metadata added
    assert card["meta"] == "hello" and card["library_name"] == "peft" and card["tags"] == ["mine", "peftkit", "ia3"]
    assert "my own card" in (tmp_path / "b" / "README.md").read_text()
    model.save_pretrained(tmp_path / "b")  # saving again changes nothing
    assert _card(tmp_path / "b") == card
    assert (tmp_path / "b" / "README.md").read_text().count("- peftkit ") == 1


def test_a_new_card_is_huggingface_hubs_template_as_peft_writes_it(tmp_path):
    import peft

    bases = [tiny_llama(), tiny_llama()]
    for base in bases:
        base.name_or_path = base.config._name_or_path = "org/tiny-llama"
    pk.get_peft_model(bases[0], pk.LoraConfig(target_modules=["q_proj"], task_type="CAUSAL_LM")).save_pretrained(tmp_path / "ours")
    peft.get_peft_model(bases[1], peft.LoraConfig(target_modules=["q_proj"], task_type="CAUSAL_LM")).save_pretrained(
        tmp_path / "theirs")
    ours, theirs = _card(tmp_path / "ours"), _card(tmp_path / "theirs")
    keys = ("library_name", "pipeline_tag", "base_model")
    assert {k: ours[k] for k in keys} == {k: theirs[k] for k in keys}
    assert set(theirs["tags"]) <= set(ours["tags"]) == {*theirs["tags"], "peftkit"}
    ours_text = (tmp_path / "ours" / "README.md").read_text()
    assert "# Model Card for Model ID" in ours_text and "### Framework versions" in ours_text


def test_peft_type_reads_as_its_value_and_active_peft_config():
    model = pk.get_peft_model(nn.Sequential(nn.Linear(4, 4)), pk.LoraConfig(target_modules=["0"]))
    config = model.active_peft_config
    assert config is model.peft_config["default"]
    assert config.peft_type.value == "LORA" and f"{config.peft_type}" == "LORA" and config.peft_type == "LORA"


def test_from_pretrained_keeps_the_config_object_it_is_given(tmp_path):
    pk.get_peft_model(nn.Sequential(nn.Linear(4, 4)), pk.LoraConfig(target_modules=["0"])).save_pretrained(tmp_path)
    config = pk.LoraConfig.from_pretrained(tmp_path)
    loaded = pk.PeftModel.from_pretrained(nn.Sequential(nn.Linear(4, 4)), tmp_path, config=config)
    assert loaded.peft_config["default"] is config and config.inference_mode


def test_from_json_file_returns_the_dict(tmp_path):
    pk.LoraConfig(r=4, target_modules=["0"]).save_pretrained(tmp_path)
    data = pk.PeftConfig.from_json_file(tmp_path / "adapter_config.json")
    assert data["peft_type"] == "LORA" and data["r"] == 4


def test_loading_with_autocast_adapter_dtype_false_keeps_the_layers_dtype(tmp_path):
    import torch

    base = lambda: nn.Sequential(nn.Linear(4, 4)).to(torch.bfloat16)  # noqa: E731
    pk.get_peft_model(base(), pk.LoraConfig(target_modules=["0"])).save_pretrained(tmp_path)
    kept = pk.PeftModel.from_pretrained(base(), tmp_path, autocast_adapter_dtype=False)
    kept.load_adapter(tmp_path, adapter_name="other", autocast_adapter_dtype=False)
    assert {p.dtype for n, p in kept.named_parameters() if "lora_" in n} == {torch.bfloat16}
    upcast = pk.PeftModel.from_pretrained(base(), tmp_path)
    assert {p.dtype for n, p in upcast.named_parameters() if "lora_" in n} == {torch.float32}


def test_loaded_adapters_train_as_asked_and_leave_the_others_alone(tmp_path):
    """peft's rule: load_adapter(is_trainable=True) gives a trainable adapter even when it is not
    active; loading or adding another adapter never changes the requires_grad of existing ones."""
    make = lambda: nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))  # noqa: E731
    pk.get_peft_model(make(), pk.LoraConfig(target_modules=["0", "1"])).save_pretrained(tmp_path)
    model = pk.PeftModel.from_pretrained(make(), tmp_path, is_trainable=True)
    model.base_model.model[0].lora_A["default"].weight.requires_grad_(False)  # a user's own choice
    model.load_adapter(tmp_path, adapter_name="other", is_trainable=True)
    model.load_adapter(tmp_path, adapter_name="frozen")
    model.add_adapter("added", pk.LoraConfig(target_modules=["0"]))
    grads = {n: p.requires_grad for n, p in model.named_parameters() if "lora_" in n}
    assert all(g for n, g in grads.items() if ".other." in n)
    assert not any(g for n, g in grads.items() if ".frozen." in n or ".added." in n)
    assert grads["base_model.model.0.lora_A.default.weight"] is False
    assert grads["base_model.model.1.lora_A.default.weight"] is True
    assert model.active_adapters == ["default"]


def test_save_pretrained_saves_what_an_overridden_state_dict_returns_as_peft_does(tmp_path):
    import peft
    import pytest
    from safetensors.torch import load_file

    config = dict(target_modules=["0", "1"], r=2)
    for library in (pk, peft):
        model = library.get_peft_model(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4)), library.LoraConfig(**config))
        state = model.state_dict()
        del state["base_model.model.1.lora_A.default.weight"]
        model.state_dict = lambda state=state: state  # peft's TestHotSwapping writes a partial adapter this way
        if library is pk:
            with pytest.warns(UserWarning, match=r"1\.lora_A\.weight.*left out of the saved adapter"):
                model.save_pretrained(tmp_path / library.__name__)
        else:
            model.save_pretrained(tmp_path / library.__name__)
    ours, theirs = (load_file(tmp_path / name / "adapter_model.safetensors") for name in ("peftkit", "peft"))
    assert sorted(ours) == sorted(theirs) and "base_model.model.1.lora_A.weight" not in ours


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.Linear(6, 6)


class _OldLayout(nn.Module):
    """A vision-language model as transformers laid it out before: language layers at model.layers."""

    def __init__(self):
        super().__init__()
        self.model = nn.ModuleDict({"layers": nn.ModuleList([_Block() for _ in range(2)])})


class _NewLayout(nn.Module):
    """The same model after transformers moved the language model under model.language_model; it
    maps old checkpoint keys with _checkpoint_conversion_mapping, as such models do."""

    _checkpoint_conversion_mapping = {"^model(?!\\.language_model)": "model.language_model"}

    def __init__(self):
        super().__init__()
        self.model = nn.ModuleDict({"language_model": nn.ModuleDict({"layers": nn.ModuleList([_Block() for _ in range(2)])})})


def test_adapter_saved_on_an_older_layout_loads_through_the_model_s_key_mapping(tmp_path):
    torch.manual_seed(0)
    old = pk.get_peft_model(_OldLayout(), pk.LoraConfig(target_modules=["attn"], init_lora_weights=False))
    old.save_pretrained(tmp_path)
    saved = old.base_model.model.model["layers"][1].attn.lora_B["default"].weight
    loaded = pk.PeftModel.from_pretrained(_NewLayout(), tmp_path)
    got = loaded.base_model.model.model["language_model"]["layers"][1].attn.lora_B["default"].weight
    assert torch.equal(got, saved)
    # an explicit key_mapping wins; {} turns the model's off (and the old keys then do not fit)
    with pytest.raises(pk.CheckpointError):
        pk.PeftModel.from_pretrained(_NewLayout(), tmp_path, key_mapping={})
    plain = _NewLayout()
    plain._checkpoint_conversion_mapping = {}
    again = pk.PeftModel.from_pretrained(plain, tmp_path, key_mapping={"^model": "model.language_model"})
    assert torch.equal(again.base_model.model.model["language_model"]["layers"][1].attn.lora_B["default"].weight, saved)
