"""Bad input gets a clear error that names what is wrong, and leaves the model as it was."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn
from toy_models import TOYS

import peftkit as pk

LINEAR = TOYS[0]


def snapshot(model: nn.Module):
    """Module objects, parameter values and requires_grad flags: everything an error must not change."""
    return (
        [(n, id(m)) for n, m in model.named_modules()],
        {n: (p.detach().clone(), p.requires_grad) for n, p in model.named_parameters()},
    )


def assert_unchanged(model: nn.Module, snap) -> None:
    modules, params = snapshot(model)
    assert modules == snap[0]
    assert params.keys() == snap[1].keys()
    for n, (value, flag) in params.items():
        assert torch.allclose(value, snap[1][n][0], atol=0, rtol=0, equal_nan=True) and flag == snap[1][n][1], n


def test_target_matching_nothing_lists_module_names():
    model = LINEAR.model()
    snap = snapshot(model)
    with pytest.raises(pk.TargetError) as e:
        pk.get_peft_model(model, pk.LoraConfig(target_modules=["q_proj"]))
    assert "q_proj" in str(e.value) and "lin1" in str(e.value) and "lin2" in str(e.value)
    assert_unchanged(model, snap)


def test_unsupported_layer_type_names_module_and_type():
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    snap = snapshot(model)
    with pytest.raises(pk.TargetError, match=r"'1' is a LayerNorm"):
        pk.get_peft_model(model, pk.LoraConfig(target_modules=["0", "1"]))
    assert_unchanged(model, snap)  # the Linear matched first must not stay wrapped


@pytest.mark.parametrize("bad", [0, -3])
def test_non_positive_rank(bad):
    with pytest.raises(pk.ConfigError, match=r"r: must be a positive integer"):
        pk.LoraConfig(r=bad, target_modules=["lin1"])


def test_unknown_config_key_suggests_the_right_one():
    with pytest.raises(pk.ConfigError, match=r"lora_alpah: unknown field.*did you mean 'lora_alpha'"):
        pk.LoraConfig(lora_alpah=16)


def test_duplicate_adapter_name():
    model = pk.get_peft_model(LINEAR.model(), pk.LoraConfig(target_modules=LINEAR.targets))
    snap = snapshot(model)
    with pytest.raises(pk.AdapterError, match="Adapter with name 'default' already exists"):  # peft's sentence
        model.add_adapter("default", pk.LoraConfig(target_modules=LINEAR.targets))
    assert_unchanged(model, snap)


def test_unknown_adapter_in_mixed_batch():
    model = pk.get_peft_model(LINEAR.model(), pk.LoraConfig(target_modules=LINEAR.targets))
    with pytest.raises(pk.AdapterError, match=r"non-existing adapter\(s\): nope\. .*unknown adapter\(s\) \['nope'\].*\['default'\]"):
        model(LINEAR.inputs(2), adapter_names=["default", "nope"])
    # nothing stays routed per row after the error
    assert all(m.row_adapters is None for m in model.modules() if isinstance(m, pk.AdapterLayer))


def test_mixed_batch_with_wrong_length():
    model = pk.get_peft_model(LINEAR.model(), pk.LoraConfig(target_modules=LINEAR.targets))
    with pytest.raises(pk.AdapterError, match="but got 3 and 4 respectively"):
        model(LINEAR.inputs(4), adapter_names=["default"] * 3)


def test_mixed_batch_needs_unmerged_adapters():
    model = pk.get_peft_model(LINEAR.model(), pk.LoraConfig(target_modules=LINEAR.targets))
    model.merge_adapter()
    with pytest.raises(pk.AdapterError, match="unmerge"):
        model(LINEAR.inputs(2), adapter_names=["default", "__base__"])


class Wider(nn.Module):
    """Same module names as LinearNet, other shapes: 'another base model'."""

    def __init__(self):
        super().__init__()
        self.lin1 = nn.Linear(8, 32)
        self.lin2 = nn.Linear(32, 4)

    def forward(self, x):
        return self.lin2(self.lin1(x))


def test_wrong_base_model_names_first_mismatch_and_both_shapes(tmp_path):
    pk.get_peft_model(LINEAR.model(), pk.LoraConfig(r=4, target_modules=LINEAR.targets)).save_pretrained(tmp_path)
    other = Wider()
    snap = snapshot(other)
    with pytest.raises(pk.CheckpointError) as e:
        pk.PeftModel.from_pretrained(other, tmp_path)
    msg = str(e.value)
    assert "'lin1'" in msg and "(32, 4)" in msg and "(16, 4)" in msg
    assert_unchanged(other, snap)


def test_adapter_for_other_module_names_leaves_model_unchanged(tmp_path):
    pk.get_peft_model(LINEAR.model(), pk.LoraConfig(r=4, target_modules=LINEAR.targets)).save_pretrained(tmp_path)
    other = nn.Sequential(nn.Linear(8, 4))
    snap = snapshot(other)
    with pytest.raises(pk.TargetError, match="matched no module"):
        pk.PeftModel.from_pretrained(other, tmp_path)
    assert_unchanged(other, snap)


def test_load_adapter_failure_leaves_existing_adapters(tmp_path):
    pk.get_peft_model(Wider(), pk.LoraConfig(r=4, target_modules=["lin1", "lin2"])).save_pretrained(tmp_path)
    model = pk.get_peft_model(LINEAR.model(), pk.LoraConfig(r=4, target_modules=LINEAR.targets, init_lora_weights=False))
    snap = snapshot(model)
    with pytest.raises(pk.CheckpointError):
        model.load_adapter(tmp_path, adapter_name="other")
    assert_unchanged(model, snap)
    assert list(model.peft_config) == ["default"]


def test_incomplete_checkpoint(tmp_path):
    from safetensors.torch import load_file, save_file

    pk.get_peft_model(LINEAR.model(), pk.LoraConfig(r=4, target_modules=LINEAR.targets)).save_pretrained(tmp_path)
    weights = load_file(tmp_path / "adapter_model.safetensors")
    weights.pop(next(iter(weights)))
    save_file(weights, tmp_path / "adapter_model.safetensors")
    model = LINEAR.model()
    snap = snapshot(model)
    with pytest.raises(pk.CheckpointError, match="lacks 1 adapter tensor"):
        pk.PeftModel.from_pretrained(model, tmp_path)
    assert_unchanged(model, snap)


def test_pickle_checkpoints_are_refused(tmp_path):
    pk.LoraConfig(target_modules=LINEAR.targets).save_pretrained(tmp_path)
    (tmp_path / "adapter_model.bin").write_bytes(b"not loaded")
    with pytest.raises(pk.CheckpointError, match="pickle"):
        pk.PeftModel.from_pretrained(LINEAR.model(), tmp_path)
    model = pk.get_peft_model(LINEAR.model(), pk.LoraConfig(target_modules=LINEAR.targets))
    with pytest.raises(pk.CheckpointError, match="safetensors only"):
        model.save_pretrained(tmp_path / "x", safe_serialization=False)


def test_corrupt_files_name_the_file(tmp_path):
    pk.get_peft_model(LINEAR.model(), pk.LoraConfig(target_modules=LINEAR.targets)).save_pretrained(tmp_path)
    (tmp_path / "adapter_model.safetensors").write_bytes(b"garbage")
    with pytest.raises(pk.CheckpointError, match="adapter_model.safetensors"):
        pk.PeftModel.from_pretrained(LINEAR.model(), tmp_path)
    (tmp_path / "adapter_config.json").write_text("{ not json")
    with pytest.raises(pk.ConfigError, match="adapter_config.json"):
        pk.PeftModel.from_pretrained(LINEAR.model(), tmp_path)


def test_missing_adapter_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        pk.PeftModel.from_pretrained(LINEAR.model(), tmp_path / "nowhere")


def test_unsupported_peft_feature_in_saved_config(tmp_path):
    pk.get_peft_model(LINEAR.model(), pk.LoraConfig(target_modules=LINEAR.targets)).save_pretrained(tmp_path)
    data = json.loads((tmp_path / "adapter_config.json").read_text())
    data["use_qalora"] = True
    (tmp_path / "adapter_config.json").write_text(json.dumps(data))
    with pytest.raises(pk.ConfigError, match="use_qalora"):
        pk.PeftModel.from_pretrained(LINEAR.model(), tmp_path)


def test_safe_merge_refuses_nan_and_changes_nothing():
    model = pk.get_peft_model(LINEAR.model(), pk.LoraConfig(target_modules=LINEAR.targets, init_lora_weights=False))
    with torch.no_grad():
        model.get_base_model().lin2.lora_B["default"].weight[0, 0] = float("nan")
    snap = snapshot(model)
    with pytest.raises(pk.AdapterError, match="NaN/inf.*nothing was merged"):
        model.merge_and_unload(safe_merge=True)
    assert_unchanged(model, snap)
    assert all(not m.merged_adapters for m in model.modules() if isinstance(m, pk.AdapterLayer))


def test_unknown_adapter_names_in_api_calls():
    model = pk.get_peft_model(LINEAR.model(), pk.LoraConfig(target_modules=LINEAR.targets))
    for call in (lambda: model.set_adapter("x"), lambda: model.delete_adapter("x"), lambda: model.save_pretrained("/tmp/x", selected_adapters=["x"])):
        with pytest.raises(pk.AdapterError, match=r"unknown adapter\(s\) \['x'\]"):
            call()


@pytest.mark.parametrize("name", ["", "a.b", "__base__"])
def test_invalid_adapter_names(name):
    model = LINEAR.model()
    with pytest.raises(pk.AdapterError, match="adapter name"):
        pk.get_peft_model(model, pk.LoraConfig(target_modules=LINEAR.targets), adapter_name=name)
    assert not any(isinstance(m, pk.AdapterLayer) for m in model.modules())


def test_pissa_on_embedding_is_a_clear_error():
    toy = TOYS[1]
    model = toy.model()
    snap = snapshot(model)
    with pytest.raises(pk.TargetError, match=r"init_lora_weights='pissa' is only available for nn.Linear.*'emb'"):
        pk.get_peft_model(model, pk.LoraConfig(target_modules=["emb"], init_lora_weights="pissa"))
    assert_unchanged(model, snap)
