"""Tiny, deterministic, offline models for the test suite.

Every factory builds a model from a ``transformers`` config class with random weights under a
fixed seed (the global RNG state is left untouched), in ``eval()`` mode and ``float32``. Calling a
factory twice gives two independent models with identical weights, so a test can adapt one copy
and load a checkpoint into another "fresh copy of the same base".

Each model is a few tens of thousands of parameters; a forward takes milliseconds on a CPU.

Import from tests as ``from tiny_models import ...`` (``tests/conftest.py`` puts this folder on
``sys.path``); ``conftest.py`` also wraps the factories as pytest fixtures.
"""

from __future__ import annotations

import os
import random
from typing import Callable

import torch
import transformers

VOCAB_SIZE = 100
HIDDEN = 32
DEFAULT_SEED = 0

# Token ids used for special tokens; all inside the tiny vocabulary.
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2


def seed_everything(seed: int = DEFAULT_SEED) -> None:
    """Seed Python's, NumPy's (if installed) and torch's RNGs."""
    random.seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:  # pragma: no cover - numpy ships with torch/transformers
        pass
    torch.manual_seed(seed)


def _build(model_cls, config, seed: int) -> torch.nn.Module:
    """Instantiate ``model_cls(config)`` under ``seed`` without disturbing the global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config)
    return model.to(torch.float32).eval()


# ---------------------------------------------------------------------------------------------
# configs


def llama_config(**overrides) -> transformers.LlamaConfig:
    kwargs = dict(
        vocab_size=VOCAB_SIZE,
        hidden_size=HIDDEN,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        pad_token_id=PAD_ID,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
    )
    kwargs.update(overrides)
    return transformers.LlamaConfig(**kwargs)


def gpt2_config(**overrides) -> transformers.GPT2Config:
    kwargs = dict(
        vocab_size=VOCAB_SIZE,
        n_embd=HIDDEN,
        n_layer=2,
        n_head=4,
        n_positions=64,
        pad_token_id=PAD_ID,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
    )
    kwargs.update(overrides)
    return transformers.GPT2Config(**kwargs)


def bert_config(**overrides) -> transformers.BertConfig:
    kwargs = dict(
        vocab_size=VOCAB_SIZE,
        hidden_size=HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        pad_token_id=PAD_ID,
        num_labels=3,
    )
    kwargs.update(overrides)
    return transformers.BertConfig(**kwargs)


def t5_config(**overrides) -> transformers.T5Config:
    kwargs = dict(
        vocab_size=VOCAB_SIZE,
        d_model=HIDDEN,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        pad_token_id=PAD_ID,
        eos_token_id=EOS_ID,
        decoder_start_token_id=PAD_ID,
    )
    kwargs.update(overrides)
    return transformers.T5Config(**kwargs)


# ---------------------------------------------------------------------------------------------
# factories


def tiny_llama(seed: int = DEFAULT_SEED, **config_overrides) -> transformers.LlamaForCausalLM:
    """Llama-style decoder: hidden 32, 2 layers, 4 heads, 2 kv heads, vocab 100, untied lm_head."""
    return _build(transformers.LlamaForCausalLM, llama_config(**config_overrides), seed)


def tiny_gpt2(seed: int = DEFAULT_SEED, **config_overrides) -> transformers.GPT2LMHeadModel:
    """GPT-2: its projections are ``transformers.pytorch_utils.Conv1D`` (weight is in x out)."""
    return _build(transformers.GPT2LMHeadModel, gpt2_config(**config_overrides), seed)


def tiny_bert_classifier(
    seed: int = DEFAULT_SEED, **config_overrides
) -> transformers.BertForSequenceClassification:
    """BERT sequence classifier with 3 labels (head module: ``classifier``)."""
    return _build(transformers.BertForSequenceClassification, bert_config(**config_overrides), seed)


def tiny_bert_token_classifier(
    seed: int = DEFAULT_SEED, **config_overrides
) -> transformers.BertForTokenClassification:
    """BERT token classifier with 3 labels (head module: ``classifier``)."""
    return _build(transformers.BertForTokenClassification, bert_config(**config_overrides), seed)


def tiny_t5(seed: int = DEFAULT_SEED, **config_overrides) -> transformers.T5ForConditionalGeneration:
    """T5 encoder-decoder: 2+2 layers, 4 heads of 8, tied embeddings."""
    return _build(transformers.T5ForConditionalGeneration, t5_config(**config_overrides), seed)


MODEL_FACTORIES: dict[str, Callable[..., torch.nn.Module]] = {
    "llama": tiny_llama,
    "gpt2": tiny_gpt2,
    "bert": tiny_bert_classifier,
    "bert_tok": tiny_bert_token_classifier,
    "t5": tiny_t5,
}

# The `peft` task type that fits each family.
TASK_TYPES: dict[str, str] = {
    "llama": "CAUSAL_LM",
    "gpt2": "CAUSAL_LM",
    "bert": "SEQ_CLS",
    "bert_tok": "TOKEN_CLS",
    "t5": "SEQ_2_SEQ_LM",
}

FAMILIES = tuple(MODEL_FACTORIES)


def make_model(family: str, seed: int = DEFAULT_SEED, **config_overrides) -> torch.nn.Module:
    """A fresh tiny model of ``family`` (one of ``FAMILIES``)."""
    try:
        factory = MODEL_FACTORIES[family]
    except KeyError:
        raise ValueError(f"unknown family {family!r}; choose from {sorted(MODEL_FACTORIES)}") from None
    return factory(seed=seed, **config_overrides)


# ---------------------------------------------------------------------------------------------
# inputs


def example_inputs(
    family: str,
    batch_size: int = 2,
    seq_len: int = 8,
    seed: int = 1234,
    with_labels: bool = True,
    pad_last_row: bool = True,
) -> dict[str, torch.Tensor]:
    """Deterministic example inputs for ``family``.

    Always ``input_ids`` and ``attention_mask``; ``decoder_input_ids`` for T5; ``labels`` (when
    ``with_labels``) shaped for the task: next-token ids for causal LMs and T5, one class per row
    for the sequence classifier, one class per token for the token classifier. With
    ``pad_last_row`` the last row (if ``batch_size > 1``) has its final two positions masked out.
    """
    if family not in MODEL_FACTORIES:
        raise ValueError(f"unknown family {family!r}; choose from {sorted(MODEL_FACTORIES)}")
    gen = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, VOCAB_SIZE, (batch_size, seq_len), generator=gen)
    attention_mask = torch.ones(batch_size, seq_len, dtype=torch.long)
    if pad_last_row and batch_size > 1:
        attention_mask[-1, -2:] = 0
        input_ids[-1, -2:] = PAD_ID
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask}

    if family == "t5":
        dec_len = max(seq_len // 2, 2)
        labels = torch.randint(3, VOCAB_SIZE, (batch_size, dec_len), generator=gen)
        # shift right, starting from decoder_start_token_id (= PAD_ID)
        decoder_input_ids = torch.cat([torch.full((batch_size, 1), PAD_ID), labels[:, :-1]], dim=1)
        inputs["decoder_input_ids"] = decoder_input_ids
        if with_labels:
            inputs["labels"] = labels
    elif with_labels:
        if family in ("llama", "gpt2"):
            labels = input_ids.clone()
            labels[attention_mask == 0] = -100
        elif family == "bert":
            labels = torch.randint(0, 3, (batch_size,), generator=gen)
        else:  # bert_tok
            labels = torch.randint(0, 3, (batch_size, seq_len), generator=gen)
            labels[attention_mask == 0] = -100
        inputs["labels"] = labels
    return inputs


# ---------------------------------------------------------------------------------------------
# adapter weights

DEFAULT_RANDOMIZE_PATTERNS = ("lora_", "modules_to_save.")


@torch.no_grad()
def randomize_lora_weights(
    model: torch.nn.Module,
    seed: int = 0,
    std: float = 0.1,
    patterns: tuple[str, ...] = DEFAULT_RANDOMIZE_PATTERNS,
) -> list[str]:
    """Fill every parameter whose name contains one of ``patterns`` with N(0, std^2) values.

    By default that is all LoRA tensors (``lora_A``, ``lora_B``, ``lora_embedding_A/B``,
    ``lora_magnitude_vector`` ...) and the trainable copies held for ``modules_to_save``, so that
    interop is tested with trained-like values rather than a zero-initialised ``lora_B``. Pass e.g.
    ``patterns=("lora_", "bias")`` to also perturb biases (``bias="all"``).

    Parameters are visited in name order with one generator, so the result depends only on the
    seed and the set of names. Returns the names that were changed; raises if none matched.
    """
    gen = torch.Generator().manual_seed(seed)
    changed = []
    for name, param in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        if not any(p in name for p in patterns):
            continue
        values = torch.randn(param.shape, generator=gen, dtype=torch.float32) * std
        param.copy_(values.to(dtype=param.dtype, device=param.device))
        changed.append(name)
    if not changed:
        raise ValueError(f"no parameter name contains any of {patterns!r}")
    return changed


def model_outputs(model: torch.nn.Module, inputs: dict, **kwargs) -> dict[str, torch.Tensor]:
    """Run ``model(**inputs, **kwargs)`` under ``no_grad`` and return its tensor outputs we compare.

    Returns ``{"logits": ..., "loss": ...}`` (loss only when labels were given).
    """
    with torch.no_grad():
        out = model(**inputs, **kwargs)
    result = {"logits": out.logits.detach().clone()}
    if getattr(out, "loss", None) is not None:
        result["loss"] = out.loss.detach().clone()
    return result
