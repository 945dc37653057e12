"""`peftkit validate` and `peftkit train` check the run against the model's config (no weights): a
task whose model class does not know the architecture, an encoder-decoder for a causal-LM task,
speech without a feature extractor, targets that match no module, bad data rows and a model that
does not exist are all reported by `validate`, and `train` stops on them before a run folder exists."""

from __future__ import annotations

import pytest
import yaml
from tiny_assets import tiny_model_dir, write_config, write_jsonl
from tiny_task_assets import tiny_t5_dir, tiny_whisper_dir

from peftkit.cli import main
from peftkit.errors import ConfigError
from peftkit.train import model_check
from peftkit.train.config import load_run_config
from peftkit.train.model_check import model_problems, validate_run
from peftkit.train.runner import train_from_config


def config_only_dir(root, config) -> str:
    """A model folder holding only config.json: everything validation needs, no weights."""
    path = root / type(config).__name__
    config.save_pretrained(path)
    return str(path)


def problems(config, *overrides) -> list[tuple[str, str]]:
    return validate_run(str(config), list(overrides))


def assert_train_refuses(config, capsys, *overrides) -> str:
    """`peftkit train` exits 2 with the problem, and leaves no run folder behind."""
    assert main(["train", str(config), *overrides]) == 2
    assert not (config.parent / "runs").exists()
    return capsys.readouterr().err


def test_a_fitting_tiny_model_validates(tmp_path):
    assert problems(write_config(tmp_path)) == []


def test_whisper_is_refused_as_a_causal_lm(tmp_path, capsys):
    config = write_config(tmp_path, model={"name": str(tiny_whisper_dir(tmp_path))})
    [(where, message)] = problems(config)
    assert where == "train.task" and "encoder-decoder (whisper)" in message
    assert "tasks that fit this model: speech_to_text" in message
    assert "encoder-decoder (whisper)" in assert_train_refuses(config, capsys)


def test_t5_for_sft_points_at_seq2seq(tmp_path, capsys):
    config = write_config(tmp_path, model={"name": str(tiny_t5_dir(tmp_path))})
    [(where, message)] = problems(config)
    assert where == "train.task" and "seq2seq" in message.split("tasks that fit this model:")[1]
    assert "does not fit the run config" in assert_train_refuses(config, capsys)


def test_a_vision_language_config_is_refused_for_sft_without_loading_weights(tmp_path):
    from transformers import LlavaConfig

    config = write_config(tmp_path, model={"name": config_only_dir(tmp_path, LlavaConfig())})
    [(where, message)] = problems(config)
    assert where == "train.task" and "AutoModelForCausalLM" in message and "'llava'" in message
    assert message.endswith("tasks that fit this model: vision_sft")


def test_vision_sft_needs_the_models_image_processor(tmp_path):
    from transformers import LlavaConfig

    config = write_config(tmp_path, model={"name": config_only_dir(tmp_path, LlavaConfig())},
                          data={"format": "vision_chat"}, train={"task": "vision_sft"})
    found = dict(model_problems(load_run_config(config)))
    assert "no image processor" in found["model.name"]


def test_vision_sft_adapts_the_language_model_only_unless_told(tmp_path):
    config = write_config(tmp_path, data={"format": "vision_chat"}, train={"task": "vision_sft"})
    assert "vision_tower" in load_run_config(config).adapter["exclude_modules"]
    assert load_run_config(config, ["adapter.exclude_modules=[lm_head]"]).adapter["exclude_modules"] == ["lm_head"]


def test_a_decoder_only_model_is_refused_for_seq2seq(tmp_path):
    config = write_config(tmp_path, data={"format": "seq2seq"}, train={"task": "seq2seq"},
                          eval={"metrics": ["loss"]})
    write_jsonl(tmp_path / "train.jsonl", [{"source": "a", "target": "b"}])
    write_jsonl(tmp_path / "eval.jsonl", [{"source": "a", "target": "b"}])
    [(where, message)] = problems(config)
    assert where == "train.task" and "not an encoder-decoder" in message


def test_speech_needs_the_models_feature_extractor(tmp_path):
    folder = tiny_whisper_dir(tmp_path)
    (folder / "preprocessor_config.json").unlink()
    config = write_config(tmp_path, model={"name": str(folder)}, data={"format": "speech"},
                          train={"task": "speech_to_text"}, eval={"metrics": ["loss"]})
    assert any(w == "model.name" and "no feature extractor" in m for w, m in problems(config))


def test_targets_are_checked_against_the_models_module_names(tmp_path, capsys):
    config = write_config(tmp_path, adapter={"target_modules": ["q_projj"]})
    [(where, message)] = problems(config)
    assert where == "adapter.target_modules" and "q_projj" in message
    assert "q_projj" in assert_train_refuses(config, capsys)


def test_prompt_methods_have_no_targets_to_check(tmp_path):
    config = write_config(tmp_path)
    raw = yaml.safe_load(config.read_text())
    raw["adapter"] = {"method": "prompt_tuning", "num_virtual_tokens": 4}
    config.write_text(yaml.safe_dump(raw))
    assert problems(config) == []


def test_a_model_that_does_not_exist_is_named(tmp_path):
    config = write_config(tmp_path)
    [(where, message)] = problems(config, f"model.name={tmp_path / 'nope'}/")
    assert where == "model.name" and "nope" in message


def test_bad_data_rows_are_reported_by_validate(tmp_path, capsys):
    config = write_config(tmp_path)
    write_jsonl(tmp_path / "train.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}])
    [(where, message)] = problems(config)
    assert where == "data.train" and "row 1" in message and "expected 'assistant'" in message
    assert main(["validate", str(config)]) == 2
    assert "train.jsonl row 1" in capsys.readouterr().err


def test_a_missing_metric_library_is_named_with_its_package(tmp_path, monkeypatch):
    import peftkit.train.tasks.metrics as metrics

    real = metrics.importlib.util.find_spec
    monkeypatch.setattr(metrics.importlib.util, "find_spec", lambda name: None if name == "sacrebleu" else real(name))
    config = write_config(tmp_path, model={"name": str(tiny_t5_dir(tmp_path))}, data={"format": "seq2seq"},
                          train={"task": "seq2seq"}, eval={"metrics": ["loss", "bleu"]})
    write_jsonl(tmp_path / "train.jsonl", [{"source": "a", "target": "b"}])
    write_jsonl(tmp_path / "eval.jsonl", [{"source": "a", "target": "b"}])
    [(where, message)] = model_problems(load_run_config(config))
    assert where == "eval.metrics" and "pip install sacrebleu" in message


def test_check_model_raises_a_config_error_before_anything_loads(tmp_path, monkeypatch):
    config = write_config(tmp_path, model={"name": str(tiny_whisper_dir(tmp_path))})
    monkeypatch.setattr(model_check, "_meta_model", lambda *a: pytest.fail("no module tree for a refused task"))
    with pytest.raises(ConfigError, match="encoder-decoder"):
        train_from_config(str(config))
    assert not (tmp_path / "runs").exists()


def test_target_parameters_are_checked_against_the_models_parameters(tmp_path):
    from transformers import MixtralConfig

    moe = config_only_dir(tmp_path, MixtralConfig(vocab_size=64, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                                                  num_attention_heads=4, num_key_value_heads=2, num_local_experts=2))
    adapter = {"lora_dropout": 0.0, "target_modules": [], "target_parameters": ["mlp.experts.gate_up_proj"]}
    fits = write_config(tmp_path / "fits", model={"name": moe}, adapter=adapter)
    assert model_problems(load_run_config(fits)) == []  # no module targets needed
    typo = write_config(tmp_path / "typo", model={"name": moe}, adapter={**adapter, "target_parameters": ["gate_up_prj"]})
    [(where, message)] = model_problems(load_run_config(typo))
    assert where == "adapter.target_parameters" and "gate_up_prj" in message
