"""Checks shared by the prompt-learning tests (prompt tuning, P-tuning, prefix tuning): interop with
the real ``peft`` in both directions, and the contract every prompt method keeps."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import peft
import pytest
import torch
from contract_helpers import assert_only_adapter_params_train, assert_save_load_exact
from safetensors.torch import load_file
from tiny_models import TASK_TYPES, example_inputs, make_model, model_outputs
from upstream_bugs import PEFT_PROMPT_LEARNING_GENERATE

import peftkit as pk

ATOL = 1e-5
NEW_TOKENS = 5


@torch.no_grad()
def perturb(model: torch.nn.Module, seed: int, std: float = 0.5) -> None:
    """Move every prompt-encoder (and trained head) parameter off its initial value, so the
    comparisons below see "trained" values in peft's model and in ours alike."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        if "prompt_encoder" in name or "modules_to_save" in name:
            p.add_(torch.randn(p.shape, generator=gen) * std)


def generation_inputs(family: str) -> dict[str, torch.Tensor]:
    """A left-padded batch (how decoder-only models are prompted) for ``generate``."""
    inputs = example_inputs(family, with_labels=False)
    if family == "t5":
        return {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}
    return {k: inputs[k].flip(1) for k in ("input_ids", "attention_mask")}


@torch.no_grad()
def greedy(model: Any, family: str, **kwargs: Any) -> torch.Tensor:
    return model.generate(**generation_inputs(family), max_new_tokens=NEW_TOKENS, do_sample=False, **kwargs)


@torch.no_grad()
def stepwise_greedy(model: Any, family: str) -> torch.Tensor:
    """Greedy decoding written out as one full forward per new token (no attention cache, no
    ``generate``): the reference that cached generation must reproduce."""
    inputs = generation_inputs(family)
    config = model.get_base_model().generation_config
    eos, pad = config.eos_token_id, config.pad_token_id if config.pad_token_id is not None else 0
    encoder_decoder = family == "t5"
    rows = inputs["input_ids"].shape[0]
    seq = torch.full((rows, 1), config.decoder_start_token_id) if encoder_decoder else inputs["input_ids"]
    mask, done = inputs["attention_mask"], torch.zeros(rows, dtype=torch.bool)
    for _ in range(NEW_TOKENS):
        if encoder_decoder:
            logits = model(**inputs, decoder_input_ids=seq).logits[:, -1]
        else:
            positions = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding: count real tokens, as generate does
            logits = model(input_ids=seq, attention_mask=mask, position_ids=positions).logits[:, -1]
        token = torch.where(done, torch.tensor(pad), logits.argmax(-1))
        done = done | (token == eos) if eos is not None else done
        seq, mask = torch.cat((seq, token[:, None]), 1), torch.cat((mask, torch.ones_like(token[:, None])), 1)
    return seq


def assert_same_behaviour(ours: pk.PeftModel, theirs: Any, family: str) -> None:
    """Same logits and loss (atol 1e-5) and, for generative models, the same greedy tokens (where
    peft's generate is known to be wrong, peftkit's is checked against step-by-step decoding)."""
    inputs = example_inputs(family)
    got, want = model_outputs(ours, inputs), model_outputs(theirs, inputs)
    for key in want:
        torch.testing.assert_close(got[key], want[key], atol=ATOL, rtol=0)
    base = model_outputs(make_model(family), inputs)["logits"]
    if got["logits"].shape == base.shape:  # prefix tuning keeps the length; others add tokens
        assert not torch.allclose(got["logits"], base, atol=1e-3), "the adapter has no effect"
    if family == "bert":
        return
    if PEFT_PROMPT_LEARNING_GENERATE.present:
        # peft's own generate is wrong here (upstream_bugs.py): compare with the definition instead
        assert torch.equal(greedy(ours, family), stepwise_greedy(ours, family))
        return
    assert torch.equal(greedy(ours, family), greedy(theirs, family))
    assert torch.equal(greedy(ours, family, num_beams=2), greedy(theirs, family, num_beams=2))


def _saved(folder: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    return json.loads((folder / "adapter_config.json").read_text()), load_file(folder / "adapter_model.safetensors")


def assert_configs_agree(ours: dict, theirs: dict) -> None:
    """Every field peft writes is written by peftkit with the same value (peft lists task heads twice)."""
    for key, value in theirs.items():
        if key in ("peft_version", "auto_mapping"):
            continue
        assert key in ours, key
        if key == "modules_to_save" and value:
            assert set(ours[key]) == set(value)
        else:
            assert ours[key] == value, (key, ours[key], value)


def check_peft_to_peftkit(family: str, config_name: str, kwargs: dict, tmp_path: Path) -> pk.PeftModel:
    """peft makes and saves an adapter; peftkit reads its config and weights, behaves the same, and
    saves exactly what it read."""
    kwargs = {"task_type": TASK_TYPES[family], **kwargs}
    theirs = peft.get_peft_model(make_model(family), getattr(peft, config_name)(**kwargs)).eval()
    perturb(theirs, seed=1)
    theirs.save_pretrained(tmp_path / "peft")
    config = pk.PeftConfig.from_pretrained(tmp_path / "peft")
    assert type(config) is getattr(pk, config_name)
    ours = pk.PeftModel.from_pretrained(make_model(family), tmp_path / "peft")
    assert_same_behaviour(ours, theirs, family)
    ours.save_pretrained(tmp_path / "again")
    (peft_json, peft_tensors), (our_json, our_tensors) = _saved(tmp_path / "peft"), _saved(tmp_path / "again")
    assert_configs_agree(our_json, peft_json)
    assert sorted(our_tensors) == sorted(peft_tensors)
    assert all(torch.equal(our_tensors[k], peft_tensors[k]) for k in peft_tensors)
    return ours


def check_peftkit_to_peft(family: str, config_name: str, kwargs: dict, tmp_path: Path) -> pk.PeftModel:
    """peftkit trains-like (its encoder perturbed) and saves; peft reads config and weights and
    behaves the same; the files have peft's keys and fields."""
    kwargs = {"task_type": TASK_TYPES[family], **kwargs}
    ours = pk.get_peft_model(make_model(family), getattr(pk, config_name)(**kwargs)).eval()
    perturb(ours, seed=2)
    ours.save_pretrained(tmp_path / "ours")
    assert type(peft.PeftConfig.from_pretrained(tmp_path / "ours")) is getattr(peft, config_name)
    theirs = peft.PeftModel.from_pretrained(make_model(family), tmp_path / "ours").eval()
    assert_same_behaviour(ours, theirs, family)
    reference = peft.get_peft_model(make_model(family), getattr(peft, config_name)(**kwargs))
    reference.save_pretrained(tmp_path / "reference")
    (ref_json, ref_tensors), (our_json, our_tensors) = _saved(tmp_path / "reference"), _saved(tmp_path / "ours")
    assert_configs_agree(our_json, ref_json)
    assert {k: v.shape for k, v in our_tensors.items()} == {k: v.shape for k, v in ref_tensors.items()}
    return ours


def check_contract(config: pk.PeftConfig, family: str, tmp_path: Path) -> None:
    """Round trip exact; disabled == base (forward and generate); only the encoder trains; merging
    and mixed batches are refused with clear errors; a second adapter switches and deletes."""
    make = lambda: make_model(family)  # noqa: E731
    model = pk.get_peft_model(make(), config.model_copy(deep=True))
    perturb(model, seed=3)
    loaded = assert_save_load_exact(model, make, family, tmp_path / "saved")
    assert not any(p.requires_grad for p in loaded.parameters())  # loaded for inference

    inputs = example_inputs(family)
    base = make()
    with model.disable_adapter():
        assert torch.equal(model_outputs(model, inputs)["logits"], model_outputs(base, inputs)["logits"])
        if family != "bert":
            assert torch.equal(greedy(model, family), greedy(base, family))
    head = {"base_model.model.classifier.modules_to_save.default." + n for n in ("weight", "bias")} if family == "bert" else set()
    encoder = {"prompt_encoder.default." + n for n, _ in model.prompt_encoder["default"].named_parameters()}
    assert {n for n, p in model.named_parameters() if p.requires_grad} == encoder | head  # a new task head trains too
    assert_only_adapter_params_train(model, family, marker="default.")

    with pytest.raises(pk.AdapterError, match="add virtual tokens, they cannot be merged"):
        model.merge_and_unload()
    with pytest.raises(pk.AdapterError, match="one batch cannot mix them"):
        model(**inputs, adapter_names=["default", "__base__"])

    model.add_adapter("other", config.model_copy(deep=True))
    first = model_outputs(model, inputs)["logits"]
    model.set_adapter("other")
    assert {n for n, p in model.prompt_encoder.named_parameters() if p.requires_grad} == {
        f"other.{n}" for n, _ in model.prompt_encoder["other"].named_parameters()
    }
    assert not torch.allclose(model_outputs(model, inputs)["logits"], first)
    with pytest.raises(pk.AdapterError, match="1 active adapter"):
        model.set_adapter(["default", "other"])
    model.delete_adapter("other")
    assert list(model.prompt_encoder) == ["default"] and model.active_adapters == ["default"]
    assert torch.equal(model_outputs(model, inputs)["logits"], first)
