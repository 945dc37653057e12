"""LayerNorm tuning with peft's names and format: interop with the real ``peft`` both ways, norm
detection, the adapter contract (mixed batches, merging by copying values), training from YAML,
and clear errors."""

from __future__ import annotations

import json
import warnings

import peft
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
from tiny_models import TASK_TYPES, make_model, randomize_lora_weights

import peftkit as pk
from peftkit.methods.ln_tuning import LNTuningLayer, is_norm

pytestmark = pytest.mark.usefixtures("torch_single_thread")

FAMILIES = ("llama", "gpt2", "bert")


def adapted(family: str, name: str = "default", model=None, seed: int = 0, **kw) -> pk.PeftModel:
    """Tuned-like copies: the norms' parameters randomised (they start equal to the base)."""
    cfg = pk.LNTuningConfig(**kw)
    if model is None:
        model = pk.get_peft_model(make_model(family), cfg, adapter_name=name)
    else:
        model.add_adapter(name, cfg)
    randomize_lora_weights(model, seed=seed, std=0.5, patterns=(f"ln_tuning_layers.{name}.",))
    return model


def test_default_targets():
    assert pk.get_peft_model(make_model("llama"), pk.LNTuningConfig()).peft_config["default"].target_modules == [
        "input_layernorm", "post_attention_layernorm", "norm"]  # peft's list for llama
    bert = pk.get_peft_model(make_model("bert"), pk.LNTuningConfig(task_type="SEQ_CLS"))  # not in peft's list
    assert bert.peft_config["default"].target_modules == ["LayerNorm"]
    assert sum(isinstance(m, LNTuningLayer) for m in bert.modules()) == 5


def test_norm_detection_by_class():
    class ScaleNorm(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(4))

    class Normalizer(ScaleNorm):  # the name does not end in "Norm"
        pass

    llama = make_model("llama")
    assert is_norm(llama.model.norm) and type(llama.model.norm).__name__ == "LlamaRMSNorm"
    assert is_norm(nn.LayerNorm(4)) and is_norm(nn.RMSNorm(4)) and is_norm(ScaleNorm())
    assert not is_norm(Normalizer()) and not is_norm(nn.Linear(4, 4)) and not is_norm(nn.LayerNorm(4, elementwise_affine=False))
    assert not is_norm(llama.model.layers[0])  # containers never count


@pytest.mark.parametrize("family", FAMILIES)
def test_identity_at_init_then_changes_and_disable_is_base(family):
    expected = logits(make_model(family), family)
    fresh = pk.get_peft_model(make_model(family), pk.LNTuningConfig())
    torch.testing.assert_close(logits(fresh, family), expected, atol=0, rtol=0)
    model = adapted(family)
    assert not torch.allclose(logits(model, family), expected, atol=1e-4)
    with model.disable_adapter():
        torch.testing.assert_close(logits(model, family), expected, atol=0, rtol=0)


@pytest.mark.parametrize("family", ("llama", "gpt2"))
def test_merged_equals_unmerged_and_unmerge_restores_exactly(family):
    model = adapted(family)
    unmerged = logits(model, family)
    before = {k: v.clone() for k, v in model.get_base_model().state_dict().items() if "ln_tuning" not in k}
    model.merge_adapter()
    torch.testing.assert_close(logits(model, family), unmerged, atol=0, rtol=0)
    model.unmerge_adapter()
    after = model.get_base_model().state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before)
    plain = model.merge_and_unload()
    assert not any(isinstance(m, pk.AdapterLayer) for m in plain.modules())
    torch.testing.assert_close(logits(plain, family), unmerged, atol=0, rtol=0)


@pytest.mark.parametrize("family", ("llama", "gpt2"))
def test_save_load_round_trip_is_exact(family, tmp_path):
    assert_save_load_exact(adapted(family), lambda: make_model(family), family, tmp_path)


def test_only_norm_copies_train():
    assert_only_adapter_params_train(adapted("llama"), "llama", "ln_tuning_layers")


def test_two_adapters_mixed_batch_switch_and_delete():
    model = adapted("gpt2", name="a", seed=0)
    adapted("gpt2", name="b", model=model, seed=1)
    assert_mixed_batch_equals_per_row(model, "gpt2", ["a", pk.BASE_ADAPTER, "b", "a"])
    model.set_adapter(["a", "b"])
    with pytest.raises(pk.AdapterError, match="one adapter at a time"):
        logits(model, "gpt2")
    with pytest.raises(pk.AdapterError, match="merges one adapter at a time"):
        model.merge_adapter()
    model.set_adapter("a")
    model.merge_adapter()
    model.add_adapter("c", pk.LNTuningConfig())  # a new copy starts from the original, not the merged values
    model.unmerge_adapter()
    model.set_adapter("c")
    torch.testing.assert_close(logits(model, "gpt2"), logits(make_model("gpt2"), "gpt2"), atol=0, rtol=0)
    assert_delete_restores_base(model, lambda: make_model("gpt2"), "gpt2", ["a", "b", "c"])


def test_training_from_yaml_lowers_the_loss(tmp_path):
    losses = train_losses(tmp_path, {"method": "ln_tuning"}, max_steps=20, lr=5e-2)
    assert sum(losses[-3:]) / 3 < 0.8 * losses[0], losses


# ---------------------------------------------------------------------------------------------- peft interop
@pytest.mark.parametrize("family", FAMILIES)
def test_peft_saves_peftkit_loads(family, tmp_path):
    task = TASK_TYPES[family]
    targets = ["LayerNorm"] if family == "bert" else None  # peft has no default for BERT
    theirs = peft.get_peft_model(make_model(family), peft.LNTuningConfig(task_type=task, target_modules=targets))
    randomize_lora_weights(theirs, seed=3, std=0.5, patterns=("ln_tuning_layers",))
    theirs.save_pretrained(tmp_path)
    ours = pk.PeftModel.from_pretrained(make_model(family), tmp_path)
    torch.testing.assert_close(logits(ours, family), logits(theirs.eval(), family), atol=ATOL, rtol=0)
    assert set(pk.get_peft_model_state_dict(ours)) == set(load_file(tmp_path / "adapter_model.safetensors"))


@pytest.mark.parametrize("family", FAMILIES)
def test_peftkit_saves_peft_loads(family, tmp_path):
    ours = adapted(family, task_type=TASK_TYPES[family])
    ours.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "LN_TUNING" and "layers_to_transform" not in config
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        theirs = peft.PeftModel.from_pretrained(make_model(family), tmp_path)
    assert not [w for w in caught if "Unexpected keyword" in str(w.message)]  # peft reads our config as its own
    torch.testing.assert_close(logits(theirs, family), logits(ours, family), atol=ATOL, rtol=0)
    saved = pk.get_peft_model_state_dict(ours)
    peft_sd = peft.get_peft_model_state_dict(theirs)
    assert set(peft_sd) == set(saved)
    # merged models agree too
    torch.testing.assert_close(logits(theirs.merge_and_unload(), family), logits(ours.merge_and_unload(), family),
                               atol=ATOL, rtol=0)


# ---------------------------------------------------------------------------------------------- errors
def test_no_norm_and_container_targets_are_clear():
    net = nn.Sequential(nn.Linear(3, 3))
    with pytest.raises(pk.TargetError, match="found no normalisation layer in Sequential"):
        pk.get_peft_model(net, pk.LNTuningConfig())
    base = make_model("llama")
    with pytest.raises(pk.TargetError, match=r"'model.layers.0.mlp' is a LlamaMLP, which LN_TUNING cannot adapt"):
        pk.get_peft_model(base, pk.LNTuningConfig(target_modules=["norm", "mlp"]))
    assert not any(isinstance(m, pk.AdapterLayer) for m in base.modules())
