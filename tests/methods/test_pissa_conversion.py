"""``save_pretrained(path_initial_model_for_weight_conversion=...)``: a trained PiSSA / OLoRA adapter
(whose init moved part of the base weights into it) saved as a plain LoRA adapter of rank 2r for
the ORIGINAL base weights, as ``peft`` 0.21 does, and interchangeable with peft's converted files.

"Training" is simulated by adding noise to the adapter (and to the trained biases and head copy).
"""

from __future__ import annotations

import json
from pathlib import Path

import peft
import pytest
import torch
from safetensors.torch import load_file
from tiny_models import example_inputs, model_outputs, tiny_bert_classifier, tiny_gpt2, tiny_llama

import peftkit as pk
from peftkit.checkpoint import WEIGHTS_NAME

pytestmark = [
    pytest.mark.usefixtures("torch_single_thread"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]

ATOL = 1e-5
CONVERT = "path_initial_model_for_weight_conversion"
LLAMA_TARGETS = ["q_proj", "v_proj", "gate_proj"]

# case -> (family, base factory, LoraConfig kwargs); init_lora_weights is added per test
CASES = {
    "llama": ("llama", tiny_llama, dict(r=4, lora_alpha=8, target_modules=LLAMA_TARGETS)),
    "llama_patterns": (
        "llama",
        tiny_llama,
        dict(r=4, lora_alpha=8, target_modules=LLAMA_TARGETS, rank_pattern={"v_proj": 2}, alpha_pattern={"gate_proj": 3}),
    ),
    "llama_rslora": ("llama", tiny_llama, dict(r=4, lora_alpha=8, target_modules=LLAMA_TARGETS, use_rslora=True)),
    # peft refuses rsLoRA together with patterns; peftkit scales the patterns by sqrt(2) like alpha
    "llama_rslora_patterns": (
        "llama",
        tiny_llama,
        dict(r=4, lora_alpha=8, target_modules=LLAMA_TARGETS, use_rslora=True, rank_pattern={"q_proj": 2}, alpha_pattern={"q_proj": 5}),
    ),
    "gpt2_conv1d": ("gpt2", tiny_gpt2, dict(r=4, lora_alpha=8, target_modules=["c_attn", "c_fc"])),
    # trained biases and a head trained in full apply to the original base unchanged: they are kept
    "bert_head": ("bert", tiny_bert_classifier, dict(r=4, lora_alpha=8, target_modules=["query", "value"], task_type="SEQ_CLS")),
    "bert_bias_head": ("bert", tiny_bert_classifier, dict(r=4, lora_alpha=8, target_modules=["query", "value"], bias="all", task_type="SEQ_CLS")),
}


@torch.no_grad()
def simulate_training(model, seed: int) -> None:
    """Add noise to every trainable tensor (name order, one generator: the same for peft and peftkit)."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        if p.requires_grad:
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)


def make_trained(lib, case: str, init: str, folder: Path):
    """A PiSSA/OLoRA model from ``lib`` with its initial adapter saved in ``folder/init`` and noise added."""
    _, factory, kwargs = CASES[case]
    model = lib.get_peft_model(factory(), lib.LoraConfig(init_lora_weights=init, **kwargs))
    model.save_pretrained(folder / "init")
    simulate_training(model, seed=7)
    return model.eval()


def logits(model, family: str) -> torch.Tensor:
    return model_outputs(model, example_inputs(family))["logits"]


def assert_close(got: torch.Tensor, want: torch.Tensor) -> None:
    torch.testing.assert_close(got, want, atol=ATOL, rtol=ATOL)


def params(case: str, inits: tuple[str, ...] = ("pissa", "pissa_niter_4", "olora")) -> list[tuple[str, str]]:
    return [(case, init) for init in inits]


ALL_CASES = params("llama") + [(case, init) for case in list(CASES)[1:] for init in ("pissa", "olora")]


@pytest.mark.parametrize("case,init", ALL_CASES)
def test_converted_adapter_on_original_base_equals_trained_model(case, init, tmp_path):
    family, factory, _ = CASES[case]
    model = make_trained(pk, case, init, tmp_path)
    want = logits(model, family)
    model.save_pretrained(tmp_path / "lora", **{CONVERT: tmp_path / "init"})
    assert torch.equal(logits(model, family), want)  # the model in memory is left as it was

    original_base = factory()
    assert not torch.allclose(logits(original_base, family), want, atol=1e-3)  # training changed something
    loaded = pk.PeftModel.from_pretrained(original_base, tmp_path / "lora")
    assert_close(logits(loaded, family), want)


@pytest.mark.parametrize("case", list(CASES))
def test_converted_config_and_tensors(case, tmp_path):
    _, _, kwargs = CASES[case]
    model = make_trained(pk, case, "pissa", tmp_path)
    model.save_pretrained(tmp_path / "lora", **{CONVERT: tmp_path / "init"})
    config = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    factor = 2**0.5 if kwargs.get("use_rslora") else 2
    assert config["init_lora_weights"] is True and config["inference_mode"] is True
    assert config["r"] == 2 * kwargs["r"] and config["lora_alpha"] == pytest.approx(kwargs["lora_alpha"] * factor)
    assert config["rank_pattern"] == {k: 2 * v for k, v in kwargs.get("rank_pattern", {}).items()}
    assert config["alpha_pattern"] == pytest.approx({k: v * factor for k, v in kwargs.get("alpha_pattern", {}).items()})

    trained, initial = pk.get_peft_model_state_dict(model), load_file(tmp_path / "init" / WEIGHTS_NAME)
    converted = load_file(tmp_path / "lora" / WEIGHTS_NAME)
    assert converted.keys() == trained.keys()
    for key, tensor in converted.items():
        if key.endswith("lora_A.weight"):
            assert torch.equal(tensor, torch.cat([trained[key], initial[key]], dim=0)), key
        elif key.endswith("lora_B.weight"):
            assert torch.equal(tensor, torch.cat([trained[key], -initial[key]], dim=1)), key
        else:  # biases, the head's copy
            assert torch.equal(tensor, trained[key]), key
    assert json.loads((tmp_path / "init" / "adapter_config.json").read_text())["r"] == kwargs["r"]  # initial untouched


@pytest.mark.parametrize("case,init", params("llama") + params("llama_patterns", ("pissa",)) + params("llama_rslora", ("olora",))
                         + params("llama_rslora_patterns", ("pissa",)) + params("gpt2_conv1d", ("pissa",)) + params("bert_head", ("olora",))
                         + params("bert_bias_head", ("pissa",)))
def test_peftkit_converted_file_loads_in_peft(case, init, tmp_path):
    family, factory, _ = CASES[case]
    model = make_trained(pk, case, init, tmp_path)
    model.save_pretrained(tmp_path / "lora", **{CONVERT: tmp_path / "init"})
    loaded = peft.PeftModel.from_pretrained(factory(), tmp_path / "lora").eval()
    assert_close(logits(loaded, family), logits(model, family))


@pytest.mark.parametrize("case,init", params("llama") + params("llama_patterns", ("olora",)) + params("llama_rslora", ("pissa",))
                         + params("gpt2_conv1d", ("pissa",)))
def test_peft_converted_file_loads_in_peftkit(case, init, tmp_path):
    family, factory, _ = CASES[case]
    reference = make_trained(peft, case, init, tmp_path)
    reference.save_pretrained(tmp_path / "lora", **{CONVERT: str(tmp_path / "init")})
    loaded = pk.PeftModel.from_pretrained(factory(), tmp_path / "lora")
    assert_close(logits(loaded, family), logits(reference, family))

    # and both libraries write the same file and config for the same trained adapter
    ours = make_trained(pk, case, init, tmp_path / "pk")
    ours.save_pretrained(tmp_path / "pk" / "lora", **{CONVERT: tmp_path / "pk" / "init"})
    mine, theirs = load_file(tmp_path / "pk" / "lora" / WEIGHTS_NAME), load_file(tmp_path / "lora" / WEIGHTS_NAME)
    assert mine.keys() == theirs.keys()
    mine_cfg, theirs_cfg = (json.loads((p / "adapter_config.json").read_text()) for p in (tmp_path / "pk" / "lora", tmp_path / "lora"))
    for field in ("r", "lora_alpha", "init_lora_weights", "rank_pattern", "alpha_pattern", "use_rslora", "inference_mode"):
        assert mine_cfg[field] == theirs_cfg[field], field


def test_peft_drops_what_peftkit_keeps(tmp_path):
    """peft's converted file holds only lora_A/lora_B, so a trained head is lost there (and with
    bias != "none" peft cannot convert at all: it refuses to load the initial adapter beside the
    trained one); peftkit keeps them, which is why these cases are compared one way only."""
    reference = make_trained(peft, "bert_head", "pissa", tmp_path)
    reference.save_pretrained(tmp_path / "lora", **{CONVERT: str(tmp_path / "init")})
    assert all("lora_" in k for k in load_file(tmp_path / "lora" / WEIGHTS_NAME))
    ours = make_trained(pk, "bert_head", "pissa", tmp_path / "pk")
    ours.save_pretrained(tmp_path / "pk" / "lora", **{CONVERT: tmp_path / "pk" / "init"})
    assert "base_model.model.classifier.weight" in load_file(tmp_path / "pk" / "lora" / WEIGHTS_NAME)
    with pytest.raises(ValueError):  # "only 1 adapter with bias", masked by its clean-up's own error
        make_trained(peft, "bert_bias_head", "pissa", tmp_path / "bias").save_pretrained(
            tmp_path / "bias" / "lora", **{CONVERT: str(tmp_path / "bias" / "init")}
        )


# ------------------------------------------------------------------ refusals


def saved_nothing(folder: Path) -> bool:
    return not folder.exists()


def test_plain_lora_adapter_is_refused(tmp_path):
    model = pk.get_peft_model(tiny_llama(), pk.LoraConfig(r=4, target_modules=LLAMA_TARGETS))
    model.save_pretrained(tmp_path / "init")
    with pytest.raises(pk.CheckpointError, match="PiSSA or OLoRA.*init_lora_weights"):
        model.save_pretrained(tmp_path / "out", **{CONVERT: tmp_path / "init"})
    assert saved_nothing(tmp_path / "out")


def test_initial_config_naming_pissa_is_enough(tmp_path):
    """peft's recipe saves the initial adapter as is and may set init_lora_weights=True on the live
    config before training; the initial adapter's config still says how it was made."""
    model = make_trained(pk, "llama", "pissa", tmp_path)
    model.peft_config["default"].init_lora_weights = True
    model.save_pretrained(tmp_path / "lora", **{CONVERT: tmp_path / "init"})
    assert_close(logits(pk.PeftModel.from_pretrained(tiny_llama(), tmp_path / "lora"), "llama"), logits(model, "llama"))


def test_missing_initial_adapter_is_refused(tmp_path):
    model = make_trained(pk, "llama", "olora", tmp_path)
    with pytest.raises(pk.CheckpointError, match="holds no saved adapter.*before training"):
        model.save_pretrained(tmp_path / "out", **{CONVERT: tmp_path / "nowhere"})
    assert saved_nothing(tmp_path / "out")


def test_initial_adapter_of_other_modules_is_refused(tmp_path):
    model = make_trained(pk, "llama", "pissa", tmp_path)
    other = pk.get_peft_model(tiny_llama(), pk.LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights="pissa"))
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(pk.CheckpointError, match="does not match.*only this adapter has .*gate_proj.*same target_modules"):
        model.save_pretrained(tmp_path / "out", **{CONVERT: tmp_path / "other"})
    assert saved_nothing(tmp_path / "out")


def test_initial_adapter_of_other_rank_is_refused(tmp_path):
    model = make_trained(pk, "llama", "pissa", tmp_path)
    kwargs = dict(CASES["llama"][2], r=2)
    pk.get_peft_model(tiny_llama(), pk.LoraConfig(init_lora_weights="pissa", **kwargs)).save_pretrained(tmp_path / "r2")
    with pytest.raises(pk.CheckpointError, match=r"shape \(2, 32\) in the initial adapter but \(4, 32\)"):
        model.save_pretrained(tmp_path / "out", **{CONVERT: tmp_path / "r2"})


def test_dora_and_other_methods_are_refused(tmp_path):
    dora = pk.get_peft_model(tiny_llama(), pk.LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights="pissa", use_dora=True))
    dora.save_pretrained(tmp_path / "dora_init")
    with pytest.raises(pk.CheckpointError, match="DoRA"):
        dora.save_pretrained(tmp_path / "out", **{CONVERT: tmp_path / "dora_init"})
    ia3 = pk.get_peft_model(tiny_llama(), pk.IA3Config(target_modules=["q_proj"], feedforward_modules=[]))
    ia3.save_pretrained(tmp_path / "ia3_init")
    with pytest.raises(pk.CheckpointError, match="not to IA3 adapters"):
        ia3.save_pretrained(tmp_path / "out", **{CONVERT: tmp_path / "ia3_init"})
    assert saved_nothing(tmp_path / "out")
