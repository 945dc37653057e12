"""Prompt tuning: interop with peft both ways (Llama, GPT-2, BERT classifier, T5), text and
vocabulary initialisation, the prompt-method contract, errors, and a training run."""

from __future__ import annotations

import sys
from pathlib import Path

import peft
import pytest
import torch
from contract_helpers import train_losses
from prompt_checks import check_contract, check_peft_to_peftkit, check_peftkit_to_peft
from tiny_models import example_inputs, make_model

import peftkit as pk

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
from tiny_assets import tiny_model_dir  # noqa: E402

pytestmark = [
    pytest.mark.usefixtures("torch_single_thread"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning"),  # peft calls it
]

FAMILIES = ["llama", "gpt2", "bert", "t5"]


@pytest.mark.parametrize("family", FAMILIES)
def test_peft_adapter_loads_in_peftkit(family, tmp_path):
    check_peft_to_peftkit(family, "PromptTuningConfig", {"num_virtual_tokens": 4}, tmp_path)


@pytest.mark.parametrize("family", FAMILIES)
def test_peftkit_adapter_loads_in_peft(family, tmp_path):
    check_peftkit_to_peft(family, "PromptTuningConfig", {"num_virtual_tokens": 4}, tmp_path)


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_contract(family, tmp_path):
    task = "CAUSAL_LM" if family == "llama" else "SEQ_CLS"
    check_contract(pk.PromptTuningConfig(num_virtual_tokens=3, task_type=task), family, tmp_path)


def test_inputs_are_extended_as_peft_does():
    model = pk.get_peft_model(make_model("llama"), pk.PromptTuningConfig(num_virtual_tokens=3, task_type="CAUSAL_LM"))
    out = model(**example_inputs("llama"))
    assert out.logits.shape[1] == 3 + 8 and torch.isfinite(out.loss)  # prompt first; labels padded inside
    bert = pk.get_peft_model(make_model("bert"), pk.PromptTuningConfig(num_virtual_tokens=3, task_type="SEQ_CLS"))
    inputs = example_inputs("bert")
    typed = bert(**inputs, token_type_ids=torch.ones_like(inputs["input_ids"])).logits
    assert typed.shape == (2, 3) and not torch.allclose(typed, bert(**inputs).logits)  # token types reach BERT


def test_text_init_matches_peft(tmp_path):
    folder = tiny_model_dir(tmp_path)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = dict(task_type="CAUSAL_LM", num_virtual_tokens=7, prompt_tuning_init="TEXT",
                  prompt_tuning_init_text="Hi!", tokenizer_name_or_path=str(folder))
    ours = pk.get_peft_model(AutoModelForCausalLM.from_pretrained(folder), pk.PromptTuningConfig(**kwargs))
    theirs = peft.get_peft_model(AutoModelForCausalLM.from_pretrained(folder), peft.PromptTuningConfig(**kwargs))
    got = ours.prompt_encoder["default"].embedding.weight
    assert torch.equal(got, theirs.prompt_encoder["default"].embedding.weight)
    ids = AutoTokenizer.from_pretrained(folder)("Hi!")["input_ids"]  # 3 tokens, repeated to 7
    words = ours.get_base_model().get_input_embeddings().weight
    assert len(ids) == 3 and torch.equal(got, words[(ids * 3)[:7]])
    # a saved TEXT adapter loads without its tokenizer: the saved values replace the init
    ours.save_pretrained(tmp_path / "text")
    loaded = pk.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(folder), tmp_path / "text",
                                          config=pk.PeftConfig.from_pretrained(tmp_path / "text").model_copy(
                                              update={"tokenizer_name_or_path": "/nonexistent"}))
    assert torch.equal(loaded.prompt_encoder["default"].embedding.weight, got)


def test_sample_vocab_init_uses_vocabulary_rows():
    model = pk.get_peft_model(make_model("llama"), pk.PromptTuningConfig(
        num_virtual_tokens=5, task_type="CAUSAL_LM", prompt_tuning_init="SAMPLE_VOCAB"))
    rows = model.prompt_encoder["default"].embedding.weight
    words = model.get_base_model().get_input_embeddings().weight
    assert all(any(torch.equal(r, w) for w in words) for r in rows)


def test_loaded_adapter_can_train_further(tmp_path):
    model = pk.get_peft_model(make_model("llama"), pk.PromptTuningConfig(num_virtual_tokens=3, task_type="CAUSAL_LM"))
    model.save_pretrained(tmp_path)
    loaded = pk.PeftModel.from_pretrained(make_model("llama"), tmp_path, is_trainable=True)
    assert [n for n, p in loaded.named_parameters() if p.requires_grad] == ["prompt_encoder.default.embedding.weight"]


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(num_virtual_tokens=0), "num_virtual_tokens"),
        (dict(num_virtual_tokens=-2), "num_virtual_tokens"),
        (dict(num_virtual_tokens=4, prompt_tuning_init="TEXT", prompt_tuning_init_text="x"), "tokenizer_name_or_path"),
        (dict(num_virtual_tokens=4, prompt_tuning_init="TEXT", tokenizer_name_or_path="t"), "prompt_tuning_init_text"),
        (dict(num_virtual_tokens=4, tokenizer_kwargs={"use_fast": True}), "tokenizer_kwargs"),
        (dict(num_virtual_tokens=4, prompt_tuning_init="WORDS"), "prompt_tuning_init"),
        (dict(num_virtual_tokens=4, num_transformer_submodules=3), "num_transformer_submodules"),
    ],
)
def test_bad_config_names_the_field(kwargs, field):
    with pytest.raises(pk.ConfigError, match=field):
        pk.PromptTuningConfig(task_type="CAUSAL_LM", **kwargs)


def test_num_virtual_tokens_may_be_left_out_of_a_config_but_not_of_an_adapter():
    config = pk.PromptTuningConfig(task_type="CAUSAL_LM")  # as in peft: the config alone is fine
    with pytest.raises(pk.ConfigError, match="num_virtual_tokens: is required"):
        pk.get_peft_model(make_model("llama"), config)


def test_bad_setup_leaves_the_model_unchanged():
    base = make_model("llama")
    with pytest.raises(pk.ConfigError, match="task_type"):
        pk.get_peft_model(base, pk.PromptTuningConfig(num_virtual_tokens=4))
    with pytest.raises(pk.ConfigError, match="tokenizer_name_or_path.*cannot load"):
        pk.get_peft_model(base, pk.PromptTuningConfig(
            num_virtual_tokens=4, task_type="CAUSAL_LM", prompt_tuning_init="TEXT",
            prompt_tuning_init_text="x", tokenizer_name_or_path="/nonexistent/tokenizer"))
    assert all(p.requires_grad for p in base.parameters())


def test_peftkit_train_loss_falls(tmp_path):
    losses = train_losses(tmp_path, {"method": "prompt_tuning", "num_virtual_tokens": 8}, max_steps=12, lr=3e-2)
    assert sum(losses[-3:]) / 3 < losses[0] - 0.3, losses
