"""``AutoPeftModel*`` from local folders, side by side with ``peft``'s: same class, same outputs,
on adapters written by either library."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import peft
import pytest
import torch
import transformers
from tiny_models import TASK_TYPES, bert_config, example_inputs, make_model, model_outputs, randomize_lora_weights

import peftkit as pk

sys.path.insert(0, str(Path(__file__).resolve().parent / "train"))  # the tiny byte-level tokenizer
from tiny_assets import tiny_tokenizer  # noqa: E402

pytestmark = [pytest.mark.usefixtures("torch_single_thread"), pytest.mark.filterwarnings("ignore::FutureWarning")]

TARGETS = {"llama": ["q_proj", "v_proj"], "bert": ["query", "value"], "bert_tok": ["query", "value"], "t5": ["q", "v"]}
AUTO = {
    "CAUSAL_LM": "AutoPeftModelForCausalLM",
    "SEQ_CLS": "AutoPeftModelForSequenceClassification",
    "TOKEN_CLS": "AutoPeftModelForTokenClassification",
    "SEQ_2_SEQ_LM": "AutoPeftModelForSeq2SeqLM",
    "QUESTION_ANS": "AutoPeftModelForQuestionAnswering",
    "FEATURE_EXTRACTION": "AutoPeftModelForFeatureExtraction",
}


def saved_adapter(lib, base: torch.nn.Module, folder, **config) -> torch.nn.Module:
    """Save ``base`` as a local model folder and load it from there (so the adapter's config names
    that folder as its base model), then save an adapter over it."""
    base.save_pretrained(folder / "base")
    base = type(base).from_pretrained(folder / "base").eval()
    model = lib.get_peft_model(base, lib.LoraConfig(r=2, **config))
    randomize_lora_weights(model)
    model.save_pretrained(folder / "adapter")
    return model


@pytest.mark.parametrize("family", ["llama", "bert", "bert_tok", "t5"])
@pytest.mark.parametrize("writer", ["peftkit", "peft"])
def test_auto_classes_load_what_either_library_saved(family, writer, tmp_path):
    task = TASK_TYPES[family]
    lib = pk if writer == "peftkit" else peft
    trained = saved_adapter(lib, make_model(family), tmp_path, target_modules=TARGETS[family], task_type=task)
    ours = getattr(pk, AUTO[task]).from_pretrained(tmp_path / "adapter")
    theirs = getattr(peft, AUTO[task]).from_pretrained(tmp_path / "adapter")
    assert type(ours).__name__ == type(theirs).__name__ == type(trained).__name__
    inputs = example_inputs(family)
    torch.testing.assert_close(model_outputs(ours, inputs), model_outputs(theirs, inputs))
    torch.testing.assert_close(model_outputs(ours, inputs), model_outputs(trained.eval(), inputs))


@pytest.mark.parametrize("task", ["QUESTION_ANS", "FEATURE_EXTRACTION"])
def test_auto_classes_for_bert_heads(task, tmp_path):
    base_cls = transformers.BertForQuestionAnswering if task == "QUESTION_ANS" else transformers.BertModel
    torch.manual_seed(0)
    saved_adapter(pk, base_cls(bert_config(num_labels=2)).eval(), tmp_path, target_modules=["query"], task_type=task)
    ours = getattr(pk, AUTO[task]).from_pretrained(tmp_path / "adapter")
    theirs = getattr(peft, AUTO[task]).from_pretrained(tmp_path / "adapter")
    assert type(ours).__name__ == type(theirs).__name__
    inputs = {k: v for k, v in example_inputs("bert").items() if k != "labels"}
    with torch.no_grad():
        a, b = ours(**inputs), theirs(**inputs)
    torch.testing.assert_close(a[0], b[0])


@pytest.mark.parametrize("writer", ["peftkit", "peft"])
def test_auto_peft_model_uses_the_auto_mapping_of_a_task_less_adapter(writer, tmp_path):
    lib = pk if writer == "peftkit" else peft
    trained = saved_adapter(lib, make_model("llama"), tmp_path, target_modules=["q_proj"])
    mapping = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["auto_mapping"]
    assert mapping["base_model_class"] == "LlamaForCausalLM"
    ours, theirs = pk.AutoPeftModel.from_pretrained(tmp_path / "adapter"), peft.AutoPeftModel.from_pretrained(tmp_path / "adapter")
    assert type(ours).__name__ == type(theirs).__name__ == "PeftModel"
    inputs = example_inputs("llama")
    torch.testing.assert_close(model_outputs(ours, inputs), model_outputs(trained.eval(), inputs))


def test_wrong_auto_class_or_disallowed_library_is_a_clear_error(tmp_path):
    saved_adapter(pk, make_model("llama"), tmp_path, target_modules=["q_proj"], task_type="CAUSAL_LM")
    with pytest.raises(pk.ConfigError, match="AutoPeftModelForCausalLM"):
        pk.AutoPeftModelForSequenceClassification.from_pretrained(tmp_path / "adapter")
    with pytest.raises(pk.ConfigError, match="AutoPeftModelForCausalLM"):
        pk.AutoPeftModel.from_pretrained(tmp_path / "adapter")
    config = tmp_path / "adapter" / "adapter_config.json"
    data = json.loads(config.read_text())
    config.write_text(json.dumps({**data, "task_type": None, "auto_mapping": {"base_model_class": "X", "parent_library": "os"}}))
    with pytest.raises(pk.ConfigError, match="import allowlist"):
        pk.AutoPeftModel.from_pretrained(tmp_path / "adapter")
    with pytest.raises(TypeError, match="from_pretrained"):
        pk.AutoPeftModelForCausalLM()


def test_a_larger_tokenizer_in_the_adapter_folder_grows_the_vocabulary(tmp_path):
    for lib, folder in ((pk, tmp_path / "ours"), (peft, tmp_path / "theirs")):
        saved_adapter(lib, make_model("llama"), folder, target_modules=["q_proj"], task_type="CAUSAL_LM")
        tokenizer = tiny_tokenizer()
        assert len(tokenizer) > 100  # the tiny model's vocabulary
        tokenizer.save_pretrained(folder / "adapter")
    ours = pk.AutoPeftModelForCausalLM.from_pretrained(tmp_path / "ours" / "adapter")
    theirs = peft.AutoPeftModelForCausalLM.from_pretrained(tmp_path / "theirs" / "adapter")
    assert ours.get_input_embeddings().weight.shape == theirs.get_input_embeddings().weight.shape
    assert ours.get_input_embeddings().weight.shape[0] == len(tokenizer)
