"""Interop with ``peft`` for a classifier whose head trains in full (``modules_to_save``, or
``task_type="SEQ_CLS"`` which adds it) together with trained biases (``bias="all"`` / ``"lora_only"``).

With ``bias="all"`` peft saves every bias of the model by its path, so the wrapped head adds
``classifier.original_module.bias`` and ``classifier.modules_to_save.bias`` beside
``classifier.bias``; peftkit must read and write exactly those keys.
"""

from __future__ import annotations

import peft
import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_models import example_inputs, model_outputs, randomize_lora_weights, tiny_bert_classifier

import peftkit as pk
from peftkit.checkpoint import WEIGHTS_NAME, peft_key_without_adapter

pytestmark = [
    pytest.mark.usefixtures("torch_single_thread"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

ATOL = 1e-5
HEADS = {"task_type": dict(task_type="SEQ_CLS"), "modules_to_save": dict(modules_to_save=["classifier"])}
# "trained" values: LoRA tensors, the head's copy, and the biases that the setting trains and saves
PATTERNS = {
    "all": ("lora_", "modules_to_save.", "bias"),
    "lora_only": ("lora_", "modules_to_save.", "base_layer.bias"),
}
CASES = [(bias, head) for bias in PATTERNS for head in HEADS]


def lora_kwargs(bias: str, head: str) -> dict:
    return dict(r=4, lora_alpha=8, target_modules=["query", "value"], bias=bias, **HEADS[head])


def trained(lib, bias: str, head: str, seed: int):
    """A peft or peftkit model of the tiny BERT classifier with trained-like adapter values."""
    model = lib.get_peft_model(tiny_bert_classifier(), lib.LoraConfig(**lora_kwargs(bias, head)))
    randomize_lora_weights(model, seed=seed, patterns=PATTERNS[bias])
    return model.eval()


def outputs(model, inputs: dict) -> dict:
    """Logits with the adapter, and with it disabled (the head's frozen original then answers)."""
    with model.disable_adapter():
        disabled = model_outputs(model, inputs)["logits"]
    return {"adapted": model_outputs(model, inputs)["logits"], "disabled": disabled}


def assert_close(got: dict, want: dict) -> None:
    for key in want:
        torch.testing.assert_close(got[key], want[key], atol=ATOL, rtol=ATOL, msg=lambda m, key=key: f"{key}: {m}")


def assert_same_tensors(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want), f"only in got {sorted(set(got) - set(want))}, only in want {sorted(set(want) - set(got))}"
    for key in want:
        assert torch.equal(got[key].cpu(), want[key].cpu()), key


@pytest.mark.parametrize("bias,head", CASES)
def test_peft_checkpoint_loads_in_peftkit(bias, head, tmp_path):
    inputs = example_inputs("bert")
    reference = trained(peft, bias, head, seed=1)
    reference.save_pretrained(tmp_path)
    saved = load_file(tmp_path / WEIGHTS_NAME)
    if bias == "all":  # the keys this test is about are really there
        assert {"base_model.model.classifier.original_module.bias", "base_model.model.classifier.modules_to_save.bias"} <= set(saved)

    loaded = pk.PeftModel.from_pretrained(tiny_bert_classifier(), tmp_path)
    assert_close(outputs(loaded, inputs), outputs(reference, inputs))
    assert not torch.allclose(outputs(loaded, inputs)["adapted"], model_outputs(tiny_bert_classifier(), inputs)["logits"], atol=1e-3)
    assert_same_tensors(pk.get_peft_model_state_dict(loaded), saved)


@pytest.mark.parametrize("bias,head", CASES)
def test_peftkit_checkpoint_loads_in_peft(bias, head, tmp_path):
    inputs = example_inputs("bert")
    ours = trained(pk, bias, head, seed=2)
    ours.save_pretrained(tmp_path / "pk")
    trained(peft, bias, head, seed=2).save_pretrained(tmp_path / "peft")
    saved = load_file(tmp_path / "pk" / WEIGHTS_NAME)
    assert sorted(saved) == sorted(load_file(tmp_path / "peft" / WEIGHTS_NAME))

    loaded = peft.PeftModel.from_pretrained(tiny_bert_classifier(), tmp_path / "pk").eval()
    assert_close(outputs(loaded, inputs), outputs(ours, inputs))
    assert_same_tensors(peft.get_peft_model_state_dict(loaded), saved)


def test_checkpoint_without_the_duplicate_bias_keys_still_loads(tmp_path):
    """Files written before peftkit wrote the wrapper's extra bias keys keep loading."""
    inputs = example_inputs("bert")
    ours = trained(pk, "all", "modules_to_save", seed=3)
    ours.save_pretrained(tmp_path)
    path = tmp_path / WEIGHTS_NAME
    saved = load_file(path)
    save_file({k: v for k, v in saved.items() if ".original_module." not in k and ".modules_to_save." not in k}, path)
    loaded = pk.PeftModel.from_pretrained(tiny_bert_classifier(), tmp_path)
    torch.testing.assert_close(model_outputs(loaded, inputs)["logits"], model_outputs(ours, inputs)["logits"], atol=ATOL, rtol=ATOL)


def test_head_bias_comes_from_its_own_key_as_in_peft(tmp_path):
    """If the two keys of the head copy's bias disagree, ``classifier.bias`` wins (peft ignores the other)."""
    ours = trained(pk, "all", "modules_to_save", seed=4)
    ours.save_pretrained(tmp_path)
    path = tmp_path / WEIGHTS_NAME
    saved = load_file(path)
    want = saved["base_model.model.classifier.bias"].clone()
    saved["base_model.model.classifier.modules_to_save.bias"] = want + 1.0
    save_file(saved, path)
    for lib in (pk, peft):
        loaded = lib.PeftModel.from_pretrained(tiny_bert_classifier(), tmp_path)
        assert torch.equal(loaded.base_model.model.classifier.modules_to_save["default"].bias, want), lib.__name__


def test_shape_mismatch_in_duplicate_key_is_refused(tmp_path):
    trained(pk, "all", "modules_to_save", seed=5).save_pretrained(tmp_path)
    path = tmp_path / WEIGHTS_NAME
    saved = load_file(path)
    saved["base_model.model.classifier.original_module.bias"] = torch.zeros(7)
    save_file(saved, path)
    base = tiny_bert_classifier()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    with pytest.raises(pk.CheckpointError, match="original_module.bias"):
        pk.PeftModel.from_pretrained(base, tmp_path)
    assert all(torch.equal(v, before[k]) for k, v in base.state_dict().items())


@pytest.mark.parametrize(
    "key,want",
    [
        ("classifier.modules_to_save.default.bias", "classifier.modules_to_save.bias"),
        ("classifier.modules_to_save.default.dense.bias", "classifier.modules_to_save.default.dense.bias"),
        ("model.embed.lora_embedding_A.default", "model.embed.lora_embedding_A"),
        ("default.lora_A.default.weight", "default.lora_A.weight"),
        ("bias", "bias"),
    ],
)
def test_adapter_name_is_removed_as_peft_removes_it(key, want):
    from peft.tuners.tuners_utils import _remove_adapter_name_from_state_dict_key

    assert peft_key_without_adapter(key, "default") == want == _remove_adapter_name_from_state_dict_key(key, "default")

