"""Adapter names: one rule set (peftkit.names) at every entry point, and every path computed from a
name checked to stay in its folder. Each bad name is refused with an AdapterError that names the
value and the rule, and leaves the model (modules, weights, flags, adapters) and the disk as they were."""

from __future__ import annotations

import pytest
import torch
from faults import assert_model_unchanged, folder_state, model_state
from toy_models import TOYS

import peftkit as pk
from peftkit.names import MAX_NAME_LENGTH, check_inside

LINEAR = TOYS[0]


def lora(**kwargs) -> pk.LoraConfig:
    return pk.LoraConfig(target_modules=LINEAR.targets, **kwargs)


def two_adapters() -> pk.PeftModel:
    model = pk.get_peft_model(LINEAR.model(), lora(init_lora_weights=False))
    model.add_adapter("b", lora(r=2, init_lora_weights=False))
    return model


BAD_NAMES = {
    "absolute path": ("/tmp/peftkit-evil", "'/'"),
    "parent folder": ("../escape", "'/'"),
    "dot dot": ("..", "'.'"),
    "dot": (".", "'.'"),
    "nested": ("a/b", "'/'"),
    "backslash": ("a\\b", "'\\\\\\\\'"),
    "drive colon": ("C:evil", "':'"),
    "dotted": ("a.b", "'.'"),
    "NUL byte": ("a\x00b", "control"),
    "newline": ("line\nbreak", "control"),
    "tab": ("tab\tname", "control"),
    "zero-width space": ("zero\u200bwidth", "control"),
    "too long": ("x" * (MAX_NAME_LENGTH + 1), f"{MAX_NAME_LENGTH + 1} characters long"),
    "empty": ("", "empty"),
    "padded": (" padded ", "space"),
    "base marker": ("__base__", "reserved"),
    "module method": ("forward", "nn.Module attribute"),
    "module flag": ("training", "nn.Module attribute"),
}
REPRESENTATIVE = ["absolute path", "parent folder", "NUL byte"]


@pytest.mark.parametrize("label", list(BAD_NAMES))
def test_add_adapter_refuses_bad_names(label):
    name, rule = BAD_NAMES[label]
    model = pk.get_peft_model(LINEAR.model(), lora())
    before = model_state(model)
    with pytest.raises(pk.AdapterError, match=rule) as err:
        model.add_adapter(name, lora())
    assert "adapter name" in str(err.value)
    assert_model_unchanged(model, before)


@pytest.mark.parametrize("value", [5, None, b"bytes", ["default"], 2.5])
def test_add_adapter_refuses_names_that_are_not_strings(value):
    model = pk.get_peft_model(LINEAR.model(), lora())
    before = model_state(model)
    with pytest.raises(pk.AdapterError, match=f"must be a string, got {type(value).__name__}"):
        model.add_adapter(value, lora())
    assert_model_unchanged(model, before)


@pytest.mark.parametrize("label", REPRESENTATIVE)
def test_get_peft_model_refuses_bad_names(label):
    base = LINEAR.model()
    before = model_state(base)
    with pytest.raises(pk.AdapterError, match="invalid"):
        pk.get_peft_model(base, lora(), adapter_name=BAD_NAMES[label][0])
    assert_model_unchanged(base, before)


@pytest.fixture
def saved(tmp_path):
    pk.get_peft_model(LINEAR.model(), lora(init_lora_weights=False)).save_pretrained(tmp_path / "saved")
    return tmp_path / "saved"


@pytest.mark.parametrize("label", REPRESENTATIVE)
def test_from_pretrained_refuses_bad_names(label, saved):
    base = LINEAR.model()
    before = model_state(base)
    with pytest.raises(pk.AdapterError, match="invalid"):
        pk.PeftModel.from_pretrained(base, saved, adapter_name=BAD_NAMES[label][0])
    assert_model_unchanged(base, before)


@pytest.mark.parametrize("label", REPRESENTATIVE)
def test_load_adapter_refuses_bad_names_and_save_stays_inside(label, saved, tmp_path):
    model = pk.get_peft_model(LINEAR.model(), lora())
    before = model_state(model)
    with pytest.raises(pk.AdapterError, match="invalid"):
        model.load_adapter(saved, adapter_name=BAD_NAMES[label][0])
    assert_model_unchanged(model, before)
    model.save_pretrained(tmp_path / "out")  # only the good adapter, inside out/
    assert sorted(folder_state(tmp_path / "out")) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]


@pytest.mark.parametrize("call", ["set_adapter", "delete_adapter", "save_pretrained", "merge_adapter", "forward"])
@pytest.mark.parametrize("label", REPRESENTATIVE)
def test_unknown_bad_names_are_refused_by_every_entry_point(call, label, tmp_path):
    name = BAD_NAMES[label][0]
    model = two_adapters()
    before, out = model_state(model), tmp_path / "out"
    calls = {
        "set_adapter": lambda: model.set_adapter(name),
        "delete_adapter": lambda: model.delete_adapter(name),
        "save_pretrained": lambda: model.save_pretrained(out, selected_adapters=["default", name]),
        "merge_adapter": lambda: model.merge_adapter(adapter_names=[name]),
        "forward": lambda: model(LINEAR.inputs(2), adapter_names=["default", name]),
    }
    with pytest.raises(pk.AdapterError, match=r"unknown adapter\(s\)"):
        calls[call]()
    assert_model_unchanged(model, before)
    assert not out.exists()


def test_a_name_smuggled_past_add_adapter_still_cannot_leave_the_save_folder(tmp_path):
    """peft_config edited by hand: save_pretrained checks every name and path again, before writing."""
    model = two_adapters()
    model.peft_config[str(tmp_path / "outside")] = model.peft_config.pop("b")
    with pytest.raises(pk.AdapterError, match="invalid"):
        model.save_pretrained(tmp_path / "out")
    assert folder_state(tmp_path) == {}


def test_check_inside_refuses_symlinks_that_leave_the_folder(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "link").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(pk.PeftkitError, match="outside"):
        check_inside(tmp_path / "out", tmp_path / "out" / "link" / "x")


WRONG_TYPES = {
    "set_adapter(5)": (lambda m: m.set_adapter(5), "adapter_name must be an adapter name .* got int 5"),
    "set_adapter([1])": (lambda m: m.set_adapter([1]), "holding a int"),
    "set_adapter(None)": (lambda m: m.set_adapter(None), "got NoneType"),
    "delete_adapter(list)": (lambda m: m.delete_adapter(["b"]), "must be an adapter name \\(a string\\), got list"),
    "forward names as str": (lambda m: m(LINEAR.inputs(2), adapter_names="default"), "one adapter name .* per batch row"),
    "forward names as ints": (lambda m: m(LINEAR.inputs(2), adapter_names=[1, 2]), "per batch row"),
    "save selected ints": (lambda m: m.save_pretrained("/nonexistent", selected_adapters=[5]), "selected_adapters"),
    "merge names int": (lambda m: m.merge_adapter(adapter_names=5), "adapter_names must be"),
}


@pytest.mark.parametrize("label", list(WRONG_TYPES))
def test_wrong_types_get_a_clear_error(label):
    call, message = WRONG_TYPES[label]
    model = two_adapters()
    before = model_state(model)
    with pytest.raises(pk.AdapterError, match=message):
        call(model)
    assert_model_unchanged(model, before)


@pytest.mark.parametrize("count", [0, 2, 3, 5, 8])
def test_forward_refuses_a_names_list_that_is_not_one_per_row(count):
    """peft raises; peftkit used to repeat a shorter list over the rows (meant for beam search)."""
    model = two_adapters()
    before = model_state(model)
    with pytest.raises(pk.AdapterError, match=f"but got {count} and 4 respectively"):
        model(LINEAR.inputs(4), adapter_names=["default", "b", "__base__", "b", "default", "b", "b", "b"][:count])
    assert_model_unchanged(model, before)
    assert all(m.row_adapters is None for m in model.modules() if isinstance(m, pk.AdapterLayer))


def test_generate_refuses_a_names_list_that_is_not_one_per_prompt(tiny_llama):
    model = pk.get_peft_model(tiny_llama(), pk.LoraConfig(target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
    # 1 name for 2 prompts would divide the 4 beam rows evenly: still refused
    with pytest.raises(pk.AdapterError, match="but got 1 and 2 respectively"):
        model.generate(input_ids=ids, adapter_names=["default"], max_new_tokens=2, num_beams=2, do_sample=False)
    out = model.generate(input_ids=ids, adapter_names=["default", "__base__"], max_new_tokens=2, num_beams=2,
                         do_sample=False)  # one per prompt: beams repeat them, as intended
    assert out.shape == (2, 5)
