"""Loading quantized bases and getting them ready to train: ``QuantizationConfig`` (validated like
every section), ``load_model(quantization=...)`` (bitsandbytes through transformers for folders, in
place for GGUF and torchao) with the flags ``peft`` reads, ``dequantize_model``,
``prepare_model_for_kbit_training`` and the optimizers ``train.optimizer`` names."""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch
from quantized_models import INPUT_IDS, quantized_llama, relative_error, require
from tiny_models import tiny_llama

import peftkit as pk
from peftkit.errors import ConfigError
from peftkit.models import load_model
from peftkit.quantized import kind_of
from peftkit.quantized.bnb import is_linear4bit
from peftkit.quantized.loading import QuantizationConfig, dequantize_model, quantize_model

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.mark.parametrize("fields, message", [
    ({"backend": "torchao", "bits": 4}, "no CPU kernel"),
    ({"bits": 8, "quant_type": "nf4"}, "quant_type only applies to backend bnb with bits 4"),
    ({"backend": "torchao", "bits": 8, "double_quant": False, "compute_dtype": "float32"}, "double_quant, compute_dtype"),
    ({"bits": 3}, "4 or 8"),
    ({"backend": "gptq"}, "bnb"),
])
def test_config_errors_name_the_field(fields, message):
    with pytest.raises(ValueError, match=message):
        QuantizationConfig(**fields)


def test_a_backend_that_is_not_installed_is_named(monkeypatch):
    from peftkit.train.optimizers import optimizer_problem

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name in ("bitsandbytes", "torchao") else real(name, *args))
    for backend, bits, package in (("bnb", 4, "bitsandbytes"), ("torchao", 8, "torchao")):
        with pytest.raises(ValueError, match=rf"backend '{backend}' needs the '{package}' package.*peftkit\[quantization\]"):
            QuantizationConfig(backend=backend, bits=bits)
    assert "'adamw_8bit' comes from bitsandbytes, which is not installed" in optimizer_problem("adamw_8bit")
    assert optimizer_problem("adamw") is None and optimizer_problem("adafactor") is None


def test_run_config_reports_quantization_and_optimizer_errors_together():
    from peftkit.train.config import RunConfig

    with pytest.raises(ConfigError) as raised:
        RunConfig(model={"name": "gpt2", "quantization": {"bitz": 4, "quant_type": "nf5"}}, adapter={"method": "lora"},
                  data={"train": "user/set", "format": "text"}, train={"optimizer": "adamw_16bit"})
    paths = dict(raised.value.problems)
    assert "did you mean 'bits'" in paths["model.quantization.bitz"]
    assert "nf4, fp4" in paths["model.quantization.quant_type"]
    assert "adamw_8bit" in paths["train.optimizer"]


def test_paged_optimizers_are_refused_without_a_gpu(monkeypatch):
    from peftkit.train.optimizers import optimizer_problem

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "needs a CUDA GPU" in optimizer_problem("paged_adamw_8bit") and "'adamw_8bit'" in optimizer_problem("paged_adamw_8bit")
    assert optimizer_problem("adafactor") is None and optimizer_problem("adamw") is None
    if importlib.util.find_spec("bitsandbytes") is not None:  # else: test_a_backend_that_is_not_installed_is_named
        assert optimizer_problem("adamw_8bit") is None


def test_8bit_optimizer_state_round_trips_through_a_checkpoint(tmp_path):
    bnb = require("bnb")

    from peftkit.train.state import _load_optimizer_state, _optimizer_state

    params = [torch.nn.Parameter(torch.randn(64, 96)), torch.nn.Parameter(torch.randn(8))]  # 8-bit and 32-bit state
    opt = bnb.optim.AdamW8bit(params, lr=1e-2)
    for _ in range(2):
        for p in params:
            p.grad = torch.randn_like(p)
        opt.step()
    tensors, meta = _optimizer_state(opt)
    assert any("/" in key for key in tensors)  # bitsandbytes' nested quantized moments, flattened
    again = bnb.optim.AdamW8bit(params, lr=1e-2)
    _load_optimizer_state(again, tensors, meta)
    for p in params:
        for key, value in opt.state[p].items():
            assert torch.equal(value, again.state[p][key]) if torch.is_tensor(value) else value == again.state[p][key]


def test_folder_loads_quantized_through_transformers(tmp_path):
    require("bnb")
    from transformers import BitsAndBytesConfig

    tiny_llama().save_pretrained(tmp_path)
    model = load_model(tmp_path, quantization={"backend": "bnb", "bits": 4, "compute_dtype": "float32"})
    layers = [m for m in model.modules() if is_linear4bit(m)]
    assert len(layers) == 14 and not any(m.support_avx512bf16_for_cpu for m in layers)
    assert model.is_loaded_in_4bit and model.hf_quantizer is not None and type(model.lm_head) is torch.nn.Linear
    passthrough = load_model(tmp_path, quantization_config=BitsAndBytesConfig(load_in_8bit=True))
    assert passthrough.is_loaded_in_8bit and kind_of(passthrough.model.layers[0].mlp.up_proj).name == "bnb-8bit"
    with pytest.raises(ValueError, match="not both"):
        load_model(tmp_path, quantization={"bits": 4}, quantization_config=BitsAndBytesConfig(load_in_4bit=True))


@pytest.mark.parametrize("backend, method", [("bnb", "bitsandbytes"), ("torchao", "torchao")])
def test_in_place_quantization_sets_the_flags_peft_reads(backend, method):
    import peft

    require(backend)
    bits = 4 if backend == "bnb" else 8
    model = quantize_model(tiny_llama(), QuantizationConfig(backend=backend, bits=bits))
    assert model.quantization_method == method and model.is_loaded_in_4bit == (bits == 4)
    assert type(model.lm_head) is torch.nn.Linear  # the output head stays in full precision
    config = QuantizationConfig.from_transformers(model.config.quantization_config) if backend == "bnb" else None
    assert config is None or config.bits == 4
    prepared = peft.prepare_model_for_kbit_training(copy.deepcopy(model), use_gradient_checkpointing=False)
    assert all(not p.requires_grad for p in prepared.parameters())


def test_dequantize_model_gives_a_plain_model_with_the_same_outputs():
    quantized, _ = quantized_llama("bnb-nf4")
    with torch.no_grad():
        expected = quantized(INPUT_IDS).logits
    plain = dequantize_model(copy.deepcopy(quantized))
    assert not any(kind_of(m) for m in plain.modules()) and not hasattr(plain.config, "quantization_config")
    assert "is_loaded_in_4bit" not in vars(plain)
    with torch.no_grad():
        assert relative_error(plain(INPUT_IDS).logits, expected) < 1e-5
    adapted = pk.get_peft_model(quantized, pk.LoraConfig(target_modules=["q_proj"]))
    with pytest.raises(pk.AdapterError, match="before get_peft_model"):
        dequantize_model(adapted.get_base_model())


def test_prepare_model_for_kbit_training():
    from peftkit import prepare_model_for_kbit_training

    require("bnb")
    model = quantize_model(tiny_llama().to(torch.bfloat16),
                           QuantizationConfig(backend="bnb", bits=4, compute_dtype="bfloat16"))
    for layer in (m for m in model.modules() if is_linear4bit(m)):
        layer.support_avx512bf16_for_cpu = True
    prepare_model_for_kbit_training(model)
    assert all(not p.requires_grad for p in model.parameters())
    assert model.model.norm.weight.dtype == torch.float32 and model.lm_head.weight.dtype == torch.float32
    assert model.model.embed_tokens.weight.dtype == torch.float32
    assert model.is_gradient_checkpointing and not model.config.use_cache
    assert not any(m.support_avx512bf16_for_cpu for m in model.modules() if is_linear4bit(m))
    peft_model = pk.get_peft_model(model, pk.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    peft_model.train()
    peft_model(INPUT_IDS, labels=INPUT_IDS).loss.backward()
    assert all(p.grad is not None for p in peft_model.parameters() if p.requires_grad)


@pytest.mark.slow
def test_bundled_gguf_model_quantized_in_place():
    """SmolLM2's GGUF checkpoint (transformers refuses it with a quantization config): NF4 with double
    quantization keeps the projections at <= 0.15x their float32 bytes, and a QLoRA step trains."""
    pytest.importorskip("gguf")
    require("bnb")
    from peftkit.models import load_tokenizer

    model = load_model("smollm2-135m-instruct", quantization={"backend": "bnb", "bits": 4, "compute_dtype": "float32"})
    layers = [m for m in model.modules() if kind_of(m)]
    stored = sum(kind_of(m).weight_bytes(m) for m in layers)
    dense = sum(4 * m.in_features * m.out_features for m in layers)
    assert len(layers) == 30 * 7 and stored <= 0.15 * dense
    assert model.is_loaded_in_4bit and model.config.quantization_config.bnb_4bit_quant_type == "nf4"
    tok = load_tokenizer("smollm2-135m-instruct")
    batch = tok(["Ada lives in London; her email is ada@example.com."] * 2, return_tensors="pt")
    peft_model = pk.get_peft_model(model, pk.LoraConfig(r=8, target_modules="all-linear"))
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(3):
        loss = peft_model(**batch, labels=batch["input_ids"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss))
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("auto_clear_cache, calls", [(True, 1), (False, 0)])
def test_prepare_model_for_kbit_training_clears_the_cache_after_casting(monkeypatch, auto_clear_cache, calls):
    """peft's auto_clear_cache: the half-precision copies the float32 cast left in the caching
    allocator are handed back (once), unless the caller says not to."""
    from peftkit import prepare_model_for_kbit_training

    emptied = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(1))
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 4)).to(torch.float16)
    prepare_model_for_kbit_training(model, use_gradient_checkpointing=False, auto_clear_cache=auto_clear_cache)
    assert len(emptied) == calls and all(p.dtype == torch.float32 for p in model.parameters())
    prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)  # nothing cast: nothing to free
    assert len(emptied) == calls
