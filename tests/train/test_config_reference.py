"""The run-config reference is generated from the schema: the committed docs/run-config.md and
docs/run-config.schema.json are current, every key is described, `peftkit validate --explain` and
`peftkit config schema` print the same, and the errors a new user meets first say what to do."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from peftkit.cli import main
from peftkit.errors import ConfigError
from peftkit.train.config import SECTIONS, RunConfig
from peftkit.train.config_reference import explain, json_schema, markdown, undocumented_keys

REPO = Path(__file__).resolve().parents[2]


def test_the_committed_reference_and_schema_are_current():
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "gen_run_config_docs.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr + "\n(regenerate: python scripts/gen_run_config_docs.py)"


def test_every_run_config_key_is_described():
    assert undocumented_keys() == []


def test_the_reference_lists_every_key_with_type_default_and_allowed_values():
    page = markdown()
    for section, cls in SECTIONS.items():
        assert f"## `{section}`" in page
        for key in (cls.model_fields if cls else ("method", "from")):
            assert f"| `{key}` |" in page, f"{section}.{key}"
    assert "| `scheduler` | one of: constant, linear, cosine, constant_with_warmup, cosine_with_restarts | cosine |" in page
    assert "| `classification` | `classification` | `text` and `label`" in page  # which format fits which task
    assert "#### `method: lora`" in page and "| `r` | integer | 8 |" in page


def test_the_example_in_the_reference_is_a_valid_run_config():
    example = markdown().split("```yaml\n", 1)[1].split("```", 1)[0]
    cfg = RunConfig(**yaml.safe_load(example))
    assert cfg.adapter["r"] == 16 and cfg.eval.metrics[0] == "exact_match"


def _schema_keys(schema: dict, prefix: str = "") -> set[str]:
    return {f"{prefix}{k}" for k in schema.get("properties", {})}


def test_the_json_schema_covers_every_section_and_key_with_descriptions():
    schema = json_schema()
    assert schema["required"] == ["model", "adapter", "data"] and schema["additionalProperties"] is False
    for section, cls in SECTIONS.items():
        props = schema["properties"][section]
        assert props["description"]
        if cls is not None:
            assert _schema_keys(props) == set(cls.model_fields)
            assert all(p.get("description") for p in props["properties"].values()), section
    adapter = schema["properties"]["adapter"]
    assert "lora" in adapter["properties"]["method"]["enum"]
    lora = next(rule["then"] for rule in adapter["allOf"] if rule["if"]["properties"]["method"]["const"] == "lora")
    assert {"r", "lora_alpha", "target_modules", "method", "from"} <= set(lora["properties"])
    assert "task_type" not in lora["properties"] and lora["additionalProperties"] is False


def test_the_shipped_example_config_uses_only_schema_keys():
    schema = json_schema()
    config = yaml.safe_load((REPO / "examples" / "quickstart.yaml").read_text())
    for section, values in config.items():
        assert section in schema["properties"]
        if section != "adapter":
            assert set(values) <= _schema_keys(schema["properties"][section]), section


def test_explain_one_key_a_section_and_an_unknown_key():
    assert explain("train.lr").startswith("train.lr: number > 0, default 0.0002\n  Peak learning rate")
    assert explain("adapter.r").startswith("adapter.r: integer, default 8")  # LoRA's when no method is named
    assert "adapter.ia3.feedforward_modules" in explain("adapter.ia3.feedforward_modules")
    assert "train.max_steps" in explain("train") and "integer > 0, or null, default null" in explain("train")
    with pytest.raises(ConfigError, match="did you mean 'train.lr'"):
        explain("train.learning_rate")


def test_cli_validate_explain_and_config_schema(capsys):
    assert main(["validate", "--explain", "data.format", "--explain", "eval.at_start"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("data.format: one of: chat, prompt_completion, text, classification, preference, seq2seq, "
                          "token_classification, speech, vision_chat, or null")
    assert "eval.at_start: true/false, default false" in out
    assert main(["config", "schema"]) == 0
    assert json.loads(capsys.readouterr().out) == json_schema()
    assert main(["config", "schema", "--markdown"]) == 0
    assert capsys.readouterr().out == markdown()
    assert main(["config", "explain", "train.lernrate"]) == 2
    assert "did you mean" in capsys.readouterr().err
    assert main(["validate"]) == 2
    assert "--explain KEY" in capsys.readouterr().err


BASE = {"model": {"name": "gpt2"}, "adapter": {"method": "lora"}}


def test_data_format_is_filled_in_where_the_task_reads_one_format():
    cfg = RunConfig(**BASE, data={"train": "user/data"}, train={"task": "classification"})
    assert cfg.data.format == "classification" and cfg.model.task_type == "SEQ_CLS"
    assert RunConfig(**BASE, data={"train": "user/data"}, train={"task": "dpo"}).data.format == "preference"
    explicit = RunConfig(**BASE, data={"train": "user/data", "format": "classification"}, train={"task": "classification"})
    from peftkit.train.config import config_hash

    assert config_hash(cfg) == config_hash(explicit)  # the same run either way


def test_an_sft_run_without_data_format_is_told_the_formats_and_their_fields():
    with pytest.raises(ConfigError) as e:
        RunConfig(**BASE, data={"train": "user/data"})
    (path, message), = e.value.problems
    assert path == "data.format" and "chat (rows with messages)" in message and "prompt_completion" in message


def test_adapter_task_type_that_matches_the_task_is_accepted_and_one_that_does_not_says_what_to_do():
    cfg = RunConfig(model={"name": "gpt2"}, adapter={"method": "lora", "task_type": "SEQ_CLS"},
                    data={"train": "user/data"}, train={"task": "classification"})
    assert "task_type" not in cfg.adapter and cfg.adapter_config().task_type.value == "SEQ_CLS"
    with pytest.raises(ConfigError) as e:
        RunConfig(model={"name": "gpt2"}, adapter={"method": "lora", "task_type": "SEQ_CLS"},
                  data={"train": "user/data", "format": "chat"})
    (path, message), = e.value.problems
    assert path == "adapter.task_type" and "remove adapter.task_type, or change train.task" in message
