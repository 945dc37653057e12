"""VeRA: the adapter contract, the shared projections (drawn bit for bit as peft draws them, saved or
regenerated), interop with the real peft in both directions, training from YAML, and clear errors."""

from __future__ import annotations

import json

import peft
import pytest
import torch
from contract_helpers import logits, train_losses
from method_contract import MethodContract, assert_interop_both_ways, hf_subject
from safetensors.torch import load_file
from tiny_models import make_model

import peftkit as pk
from peftkit.methods.vera import PROJECTION_KEYS, make_projections

pytestmark = [pytest.mark.usefixtures("torch_single_thread"),
              pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning"),
              pytest.mark.filterwarnings("ignore:Specified to not (save|load) vera_A:UserWarning")]

TARGETS = {"llama": ["q_proj", "v_proj", "gate_proj", "down_proj"], "gpt2": ["c_attn", "c_fc"]}
FAMILIES = tuple(TARGETS)


def vera(family: str, **kw) -> dict:
    return {"r": 4, "target_modules": TARGETS[family], **kw}


class TestVeraContract(MethodContract):
    """Identity at init, disable, merge/unmerge, save/load, training, mixed batches, delete, two adapters."""

    SUBJECTS = [hf_subject(family, TARGETS[family]) for family in FAMILIES]
    marker = "vera_lambda"

    def config(self, subject, **kw) -> pk.VeraConfig:
        # init_weights=False: lambda_b = 1 and a random lambda_d, so the adapter is not the identity
        return pk.VeraConfig(**{"r": 4, "target_modules": subject.targets, "init_weights": False, **kw})

    def identity_config(self, subject) -> pk.VeraConfig:
        return pk.VeraConfig(r=4, target_modules=subject.targets)


def adapted(family: str, name: str = "default", model=None, seed: int = 0, **kw) -> pk.PeftModel:
    return TestVeraContract().adapted(TestVeraContract.SUBJECTS[FAMILIES.index(family)], name, seed, model, **kw)


@pytest.mark.parametrize("save_projection", [True, False])
@pytest.mark.parametrize("family", FAMILIES)
def test_save_load_with_or_without_the_projections(family, save_projection, tmp_path):
    model = adapted(family, save_projection=save_projection, projection_prng_key=7)
    expected = logits(model, family)
    model.save_pretrained(tmp_path)
    loaded = pk.PeftModel.from_pretrained(make_model(family), tmp_path)
    assert torch.equal(logits(loaded, family), expected)
    assert (PROJECTION_KEYS[0] in load_file(tmp_path / "adapter_model.safetensors")) == save_projection
    assert torch.equal(loaded.base_model.vera_A["default"], model.base_model.vera_A["default"])


def test_projections_are_frozen_buffers_sized_for_the_largest_layer():
    model = adapted("llama")
    buffers = dict(model.named_buffers())
    # one pair for the whole model, sized for the largest layer (gate_proj out 64, down_proj in 64)
    assert tuple(buffers["base_model.vera_A.default"].shape) == (4, 64)
    assert tuple(buffers["base_model.vera_B.default"].shape) == (64, 4)
    assert not any("vera_A" in n or "vera_B" in n for n, _ in model.named_parameters())


def test_each_adapter_has_its_own_pair_and_delete_removes_it():
    model = adapted("llama", name="a", seed=0)
    adapted("llama", name="b", model=model, seed=1, r=8, projection_prng_key=3)
    assert model.base_model.vera_A["b"].shape[0] == 8
    model.set_adapter("b")
    only_b = logits(model, "llama")
    model.delete_adapter("a")
    assert "a" not in model.base_model.vera_A and "b" in model.base_model.vera_A
    torch.testing.assert_close(logits(model, "llama"), only_b, atol=0, rtol=0)
    model.delete_adapter("b")
    assert len(model.base_model.vera_A) == 0


def test_projections_follow_the_key():
    a1, b1 = make_projections(0, 4, 32, 64)
    a2, _ = make_projections(0, 4, 32, 64)
    a3, _ = make_projections(1, 4, 32, 64)
    assert torch.equal(a1, a2) and not torch.equal(a1, a3)
    bound_a = (3 / 32) ** 0.5 * 2**0.5  # Kaiming-uniform, fan-in 32, gain sqrt(2)
    assert a1.abs().max() <= bound_a and b1.abs().max() <= (6 / 4) ** 0.5


# ------------------------------------------------------------------------------ interop with peft
@pytest.mark.parametrize("save_projection", [True, False])
@pytest.mark.parametrize("family", FAMILIES)
def test_interop_both_ways(family, save_projection, tmp_path):
    bias = "vera_only" if family == "gpt2" and save_projection else "none"  # GPT-2's adapted biases saved too
    kw = vera(family, init_weights=False, save_projection=save_projection, projection_prng_key=11, bias=bias,
              fan_in_fan_out=family == "gpt2")  # GPT-2's Conv1D stores weights (in, out)
    assert_interop_both_ways(TestVeraContract.SUBJECTS[FAMILIES.index(family)], pk.VeraConfig, peft.VeraConfig,
                             kw, tmp_path)


@pytest.mark.parametrize("save_projection", [True, False])
def test_projections_are_peft_s_bit_for_bit(save_projection, tmp_path):
    theirs = peft.get_peft_model(make_model("gpt2"), peft.VeraConfig(**vera("gpt2", save_projection=save_projection,
                                                                            projection_prng_key=11, fan_in_fan_out=True)))
    theirs.save_pretrained(tmp_path)
    ours = pk.PeftModel.from_pretrained(make_model("gpt2"), tmp_path)  # regenerated from the key when not saved
    assert torch.equal(ours.base_model.vera_A["default"], theirs.base_model.vera_A["default"])
    assert torch.equal(ours.base_model.vera_B["default"], theirs.base_model.vera_B["default"])
    mine = pk.get_peft_model(make_model("gpt2"), pk.VeraConfig(**vera("gpt2", projection_prng_key=11)))
    assert torch.equal(mine.base_model.vera_B["default"], theirs.base_model.vera_B["default"])


# ------------------------------------------------------------------------------ training from YAML
def test_train_from_yaml_loss_falls(tmp_path):
    losses = train_losses(tmp_path, {"method": "vera", "r": 16}, max_steps=8, lr=5e-2)
    assert len(losses) == 8 and losses[-1] < losses[0]
    saved = json.loads(next((tmp_path / "runs").iterdir()).joinpath("adapter", "adapter_config.json").read_text())
    assert saved["r"] == 16 and sorted(saved["target_modules"]) == ["q_proj", "v_proj"]  # peft's default for llama


# ------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("kwargs, field", [
    ({"r": 0}, "r"), ({"vera_dropout": 1.0}, "vera_dropout"), ({"bias": "lora_only"}, "bias"),
    ({"d_initial": float("nan")}, "d_initial"), ({"layers_pattern": "layers"}, "layers_pattern"),
])
def test_bad_config_names_the_field(kwargs, field):
    with pytest.raises(pk.ConfigError, match=field):
        pk.VeraConfig(target_modules=["q_proj"], **kwargs)


def test_only_linear_layers_and_the_model_is_left_as_it_was():
    model = make_model("llama")
    expected = logits(model, "llama")
    with pytest.raises(pk.TargetError, match=r"embed_tokens.*Embedding.*VERA cannot adapt.*nn.Linear"):
        pk.get_peft_model(model, pk.VeraConfig(r=4, target_modules=["embed_tokens", "q_proj"]))
    assert not any(isinstance(m, pk.AdapterLayer) for m in model.modules())
    torch.testing.assert_close(logits(model, "llama"), expected, atol=0, rtol=0)


def test_checkpoint_without_the_projections_it_promises(tmp_path):
    adapted("llama", save_projection=False).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    (tmp_path / "adapter_config.json").write_text(json.dumps({**config, "save_projection": True}))
    with pytest.raises(pk.CheckpointError, match="lacks 2 adapter tensor"):
        pk.PeftModel.from_pretrained(make_model("llama"), tmp_path)


def test_projection_of_the_wrong_size_is_refused(tmp_path):
    adapted("llama", target_modules=["q_proj", "v_proj"]).save_pretrained(tmp_path)
    wider = pk.VeraConfig(**vera("llama", target_modules=["q_proj", "v_proj", "gate_proj"]))  # out 64, not 32
    with pytest.raises(pk.CheckpointError, match=r"vera_B.*shape \(32, 4\) in the checkpoint but \(64, 4\)"):
        pk.PeftModel.from_pretrained(make_model("llama"), tmp_path, config=wider)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_base_without_autocast_runs_and_merges(dtype):
    """autocast_adapter_dtype=False keeps the lambdas in the base's dtype; the shared projections
    stay float32 and are cast where they meet them (as peft), so forward and merge work."""
    model = pk.get_peft_model(make_model("llama").to(dtype), pk.VeraConfig(**vera("llama", init_weights=False)),
                              autocast_adapter_dtype=False).eval()
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    assert layer.vera_lambda_d["default"].dtype == dtype
    ids = torch.arange(8)[None]
    with torch.no_grad():
        unmerged = model(input_ids=ids).logits
        model.merge_adapter()
        merged = model(input_ids=ids).logits
    assert unmerged.dtype == dtype and torch.isfinite(unmerged).all()
    torch.testing.assert_close(merged, unmerged, atol=5e-2, rtol=5e-2)
