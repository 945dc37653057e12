"""Loading a PiSSA / OLoRA adapter saved *without* conversion: its A and B belong to the residual
base (W minus the top-r part the init moved into the adapter), so loading re-runs the
(deterministic) decomposition on the original base before the saved values replace A and B, as
``peft`` does. Files from either library load in the other with the same outputs; a failed load
puts the base weights back.
"""

from __future__ import annotations

import peft
import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_models import example_inputs, model_outputs, tiny_llama

import peftkit as pk
from peftkit.checkpoint import WEIGHTS_NAME

pytestmark = [
    pytest.mark.usefixtures("torch_single_thread"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]

TARGETS = ["q_proj", "v_proj", "gate_proj"]
ATOL = 1e-5


def logits(model) -> torch.Tensor:
    return model_outputs(model, example_inputs("llama"))["logits"]


@torch.no_grad()
def trained(lib, init: str):
    """A model from ``lib`` with a PiSSA/OLoRA adapter whose B was changed, as training would."""
    model = lib.get_peft_model(tiny_llama(), lib.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights=init))
    gen = torch.Generator().manual_seed(3)
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        if "lora_B" in name:
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    return model.eval()


@pytest.mark.parametrize("init", ["pissa", "olora"])
@pytest.mark.parametrize("saver, loader", [(pk, pk), (peft, pk), (pk, peft)])
def test_unconverted_adapter_loads_onto_the_original_base_with_the_trained_outputs(saver, loader, init, tmp_path):
    model = trained(saver, init)
    want = logits(model)
    model.save_pretrained(tmp_path)
    original = tiny_llama()
    assert not torch.allclose(logits(original), want, atol=1e-3)
    loaded = loader.PeftModel.from_pretrained(original, tmp_path).eval()
    torch.testing.assert_close(logits(loaded), want, atol=ATOL, rtol=ATOL)


def test_failed_load_puts_the_rewritten_base_weights_back(tmp_path):
    trained(pk, "pissa").save_pretrained(tmp_path)
    weights = load_file(tmp_path / WEIGHTS_NAME)
    key = next(k for k in weights if k.endswith("lora_A.weight"))
    weights[key] = weights[key][:2].contiguous()  # a rank the config does not have: the load fails after the init
    save_file(weights, tmp_path / WEIGHTS_NAME)
    base = tiny_llama()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    with pytest.raises(pk.CheckpointError):
        pk.PeftModel.from_pretrained(base, tmp_path)
    after = base.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_loading_beside_other_adapters_warns(tmp_path):
    trained(pk, "olora").save_pretrained(tmp_path / "olora")
    pk.get_peft_model(tiny_llama(), pk.LoraConfig(r=4, target_modules=TARGETS)).save_pretrained(tmp_path / "plain")
    model = pk.PeftModel.from_pretrained(tiny_llama(), tmp_path / "plain")
    with pytest.warns(UserWarning, match="OLoRA changes the base weights of the model and should thus not be used "
                                         "with other adapters.*path_initial_model_for_weight_conversion"):
        model.load_adapter(tmp_path / "olora", adapter_name="olora")
