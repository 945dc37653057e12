"""The run config (peftkit.train.config): schema and defaults, every problem reported at once with
its dotted path, dotted overrides, the resolved dict / YAML round trip, and the config hash.

(Named test_run_config.py, not test_config.py: tests/ has no __init__.py files, so a second
``test_config`` module beside tests/test_config.py breaks collection of the whole suite.)
"""

from __future__ import annotations

import importlib.util
import json
import textwrap

import pytest
import yaml

from peftkit import LoraConfig
from peftkit.errors import ConfigError
from peftkit.train.config import (RunConfig, apply_overrides, config_hash, dump_yaml, load_run_config,
                                  resolved_dict, validate_file)

MINIMAL = {"model": {"name": "gpt2"}, "adapter": {"method": "lora"},
           "data": {"train": "train.jsonl", "format": "chat"}}

# A quantized base and the 8-bit optimizer need bitsandbytes, which validation checks is installed;
# without it (make test-oldest) the full config keeps every other value.
HAS_BNB = importlib.util.find_spec("bitsandbytes") is not None
QUANTIZATION = {"backend": "bnb", "bits": 4, "quant_type": "fp4", "double_quant": False,
                "compute_dtype": "bfloat16", "skip_modules": ["mlp.down_proj"]} if HAS_BNB else None

FULL = {
    "model": {"name": "smollm2-135m-instruct", "dtype": "bfloat16", "task_type": "CAUSAL_LM", "revision": "main",
              "quantization": QUANTIZATION},
    "adapter": {"method": "lora", "r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "target_modules": "all-linear",
                "use_rslora": True},
    "data": {"train": "train.jsonl", "eval": "eval.jsonl", "format": "prompt_completion", "text_field": "body",
             "label_field": "y"},
    "train": {"task": "sft", "epochs": 2, "max_steps": 60, "batch_size": 4, "grad_accum": 2, "lr": 2.0e-3,
              "weight_decay": 0.01, "scheduler": "linear", "warmup_steps": 5, "max_seq_len": 256,
              "truncation": "error", "completion_only": False, "packing": True, "save_steps": 20, "eval_steps": 10,
              "logging_steps": 5, "seed": 7, "gradient_checkpointing": True, "mixed_precision": "bf16",
              "max_grad_norm": None, "dpo_beta": 0.2, "optimizer": "adamw_8bit" if HAS_BNB else "adafactor"},
    "eval": {"metrics": ["loss", "exact_match"], "max_new_tokens": 32, "num_examples": 30, "at_start": True},
    "output": {"dir": "out/runs", "name": "contacts"},
    "tracking": {"backends": ["local"]},
}


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """Every test runs in its own folder holding the data files the configs name."""
    monkeypatch.chdir(tmp_path)
    for name in ("train.jsonl", "eval.jsonl"):
        (tmp_path / name).write_text('{"messages": []}\n')


def write(tmp_path, config, name="run.yaml"):
    """Write a config given as a dict (dumped as YAML) or as YAML text; returns its path."""
    path = tmp_path / name
    path.write_text(config if isinstance(config, str) else yaml.safe_dump(config, sort_keys=False))
    return path


def merged(base, **sections):
    """A deep-enough copy of ``base`` with some sections updated (None removes a key)."""
    out = json.loads(json.dumps(base))
    for section, values in sections.items():
        if values is None:
            out.pop(section, None)
        elif isinstance(values, dict):
            target = out.setdefault(section, {})
            target.update(values)
            for key in [k for k, v in values.items() if v is ...]:  # ... removes the key
                del target[key]
        else:
            out[section] = values
    return out


def problems_of(tmp_path, config, overrides=()):
    return validate_file(write(tmp_path, config), list(overrides))


# ---------------------------------------------------------------------------------------- valid configs
def test_minimal_config_fills_every_default(tmp_path):
    cfg = load_run_config(write(tmp_path, MINIMAL))
    assert cfg.model.dtype == "float32" and cfg.model.task_type == "CAUSAL_LM"  # inferred from train.task=sft
    assert (cfg.train.task, cfg.train.epochs, cfg.train.batch_size, cfg.train.lr) == ("sft", 1, 8, 2e-4)
    assert (cfg.train.scheduler, cfg.train.max_steps, cfg.train.max_grad_norm) == ("cosine", None, 1.0)
    assert cfg.eval.metrics == ["loss"] and cfg.output.dir == "runs" and cfg.tracking.backends == ["local"]
    assert cfg.data.text_field == "text" and cfg.data.label_field == "label" and cfg.data.eval is None
    assert cfg.adapter == {"method": "lora", **{k: v for k, v in LoraConfig().model_dump(mode="json").items()
                                               if k not in ("task_type", "base_model_name_or_path", "revision",
                                                            "inference_mode")}}
    adapter = cfg.adapter_config()
    assert isinstance(adapter, LoraConfig) and adapter.r == 8 and adapter.task_type.value == "CAUSAL_LM"
    assert adapter.base_model_name_or_path == "gpt2"


def test_full_config_keeps_every_value(tmp_path):
    cfg = load_run_config(write(tmp_path, FULL))
    assert resolved_dict(cfg)["train"] == FULL["train"]
    assert resolved_dict(cfg)["eval"] == FULL["eval"] and resolved_dict(cfg)["model"] == FULL["model"]
    assert cfg.data.eval == "eval.jsonl" and cfg.output.name == "contacts"
    adapter = cfg.adapter_config()
    assert (adapter.r, adapter.lora_alpha, adapter.lora_dropout, adapter.use_rslora) == (16, 32, 0.05, True)
    assert adapter.target_modules == "all-linear" and adapter.revision == "main"


def test_classification_infers_seq_cls_and_accepts_its_metrics(tmp_path):
    cfg = load_run_config(write(tmp_path, merged(MINIMAL, data={"format": "classification", "eval_fraction": 0.2},
                                                 train={"task": "classification"},
                                                 eval={"metrics": ["loss", "accuracy", "f1"]})))
    assert cfg.model.task_type == "SEQ_CLS" and cfg.adapter_config().task_type.value == "SEQ_CLS"


def test_yaml_spellings_people_write(tmp_path):
    """2e-4 (a string to PyYAML's YAML 1.1 rules) is a number; `mixed_precision: no` is not False."""
    cfg = load_run_config(write(tmp_path, textwrap.dedent("""\
        model: {name: gpt2}
        adapter: {method: LORA, lora_dropout: 1e-2}
        data: {train: train.jsonl, format: text}
        train: {lr: 2e-4, mixed_precision: no}
        eval:                      # an empty section means its defaults
        """)))
    assert cfg.train.lr == 2e-4 and cfg.train.mixed_precision == "no" and cfg.adapter["lora_dropout"] == 0.01
    assert cfg.adapter["method"] == "lora" and cfg.eval.metrics == ["loss"]


def test_hub_dataset_ids_need_no_local_file(tmp_path):
    assert problems_of(tmp_path, merged(MINIMAL, data={"train": "someone/contacts", "eval": "imdb"})) == []


def test_run_config_built_in_code_is_checked_too():
    cfg = RunConfig(**MINIMAL)  # files are only checked when loading a file
    assert RunConfig.model_validate(MINIMAL) == cfg
    with pytest.raises(ConfigError) as e:
        RunConfig.model_validate(merged(MINIMAL, train={"batch_size": 0}))
    assert [p for p, _ in e.value.problems] == ["train.batch_size"]


# ---------------------------------------------------------------------------------------- bad configs
BAD = [
    # (id, config, exact dotted path, words the message must contain)
    ("unknown top-level key", merged(MINIMAL, trian={"lr": 1.0}), "trian", "did you mean 'train'?"),
    ("top-level key of a section", merged(MINIMAL, lr=0.1), "lr", "did you mean 'train.lr'?"),
    ("unknown nested key", merged(MINIMAL, train={"learning_rate": 1e-4}), "train.learning_rate",
     "unknown key; did you mean 'lr'?"),
    ("key in the wrong section", merged(MINIMAL, train={"max_new_tokens": 8}), "train.max_new_tokens",
     "did you mean 'eval.max_new_tokens'?"),
    ("adapter r=0", merged(MINIMAL, adapter={"r": 0}), "adapter.r", "positive integer"),
    ("unknown adapter method", merged(MINIMAL, adapter={"method": "lorra"}), "adapter.method",
     "did you mean 'lora'?"),
    ("adapter without method", merged(MINIMAL, adapter={"method": ..., "r": 4}), "adapter.method", "needs the method name (known: "),
    ("unknown adapter field", merged(MINIMAL, adapter={"lora_alfa": 16}), "adapter.lora_alfa",
     "did you mean 'lora_alpha'?"),
    ("adapter field from another trainer", merged(MINIMAL, adapter={"rank": 16}), "adapter.rank",
     "did you mean 'r'?"),
    ("peft-only adapter option", merged(MINIMAL, adapter={"use_qalora": True}), "adapter.use_qalora",
     "peftkit does not implement"),
    ("task_type inside the adapter", merged(MINIMAL, adapter={"task_type": "SEQ_CLS"}), "adapter.task_type",
     "does not fit train.task 'sft'; the run sets the adapter's task_type from train.task (sft -> CAUSAL_LM, "
     "classification -> SEQ_CLS, dpo -> CAUSAL_LM, seq2seq -> SEQ_2_SEQ_LM"),
    ("base model inside the adapter", merged(MINIMAL, adapter={"base_model_name_or_path": "gpt2"}),
     "adapter.base_model_name_or_path", "remove it and set model.name instead"),
    ("batch_size 0", merged(MINIMAL, train={"batch_size": 0}), "train.batch_size", "greater than 0, got 0"),
    ("negative lr", merged(MINIMAL, train={"lr": -1e-4}), "train.lr", "greater than 0"),
    ("epochs not an integer", merged(MINIMAL, train={"epochs": 1.5}), "train.epochs", "integer, got 1.5"),
    ("bool as a number", merged(MINIMAL, train={"batch_size": True}), "train.batch_size", "integer"),
    ("string as a number", merged(MINIMAL, train={"max_seq_len": "512"}), "train.max_seq_len", "integer"),
    ("task/format mismatch", merged(MINIMAL, train={"task": "classification"}), "data.format",
     "does not fit train.task 'classification'"),
    ("dpo needs preference data", merged(MINIMAL, train={"task": "dpo"}), "data.format", "preference"),
    ("bad scheduler", merged(MINIMAL, train={"scheduler": "cosin"}), "train.scheduler",
     "got 'cosin'; did you mean 'cosine'?"),
    ("bad dtype", merged(MINIMAL, model={"dtype": "fp8"}), "model.dtype", "one of float32, bfloat16"),
    ("task_type against task", merged(MINIMAL, model={"task_type": "SEQ_CLS"}), "model.task_type",
     "use CAUSAL_LM"),
    ("lower-case task_type", merged(MINIMAL, model={"task_type": "causal_lm"}), "model.task_type",
     "did you mean 'CAUSAL_LM'?"),
    ("missing data file", merged(MINIMAL, data={"train": "data/nope.jsonl"}), "data.train", "'data/nope.jsonl'"),
    ("missing eval file", merged(MINIMAL, data={"eval": "./held_out"}), "data.eval", "file not found"),
    ("missing format", merged(MINIMAL, data={"format": ...}), "data.format",
     "required for train.task 'sft': how each row is laid out, one of chat (rows with messages); prompt_completion "
     "(rows with prompt and completion); text (rows with text)"),
    ("eval_fraction of 1", merged(MINIMAL, data={"eval_fraction": 1.0}), "data.eval_fraction", "less than 1"),
    ("accuracy for sft", merged(MINIMAL, data={"eval": "eval.jsonl"}, eval={"metrics": ["accuracy"]}),
     "eval.metrics", "'accuracy' is only for train.task classification"),
    ("exact_match for classification",
     merged(MINIMAL, data={"format": "classification", "eval": "eval.jsonl"}, train={"task": "classification"},
            eval={"metrics": ["exact_match"]}), "eval.metrics", "only for train.task sft"),
    ("generation metric without eval data", merged(MINIMAL, eval={"metrics": ["exact_match"]}), "eval.metrics",
     "set data.eval or data.eval_fraction"),
    ("unknown metric", merged(MINIMAL, eval={"metrics": ["loss", "perplexity"]}), "eval.metrics[1]", "got 'perplexity'"),
    ("tracker listed twice", merged(MINIMAL, tracking={"backends": ["mlflow", "mlflow"]}), "tracking.backends",
     "lists a backend twice"),
    ("adapter.from not a string", merged(MINIMAL, adapter={"method": "lora", "from": 3}), "adapter.from",
     "run folder, run id or adapter folder"),
    ("bad tracker", merged(MINIMAL, tracking={"backends": ["wandbb"]}), "tracking.backends[0]",
     "did you mean 'wandb'?"),
    ("run name with a slash", merged(MINIMAL, output={"name": "a/b"}), "output.name", "folder name"),
    ("missing section", merged(MINIMAL, data=None), "data", "missing required section"),
    ("section not a mapping", merged(MINIMAL, train=5), "train", "must be a mapping"),
]


@pytest.mark.parametrize("config, path, words", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_config_names_the_field(tmp_path, config, path, words):
    problems = problems_of(tmp_path, config)
    assert [p for p, _ in problems] == [path], problems
    assert words in problems[0][1], problems


def test_every_problem_is_reported_at_once(tmp_path):
    config = merged(MINIMAL, model={"dtype": "fp33"}, adapter={"r": 0, "lora_alfa": 3},
                    data={"train": "nope.jsonl", "format": "classification"},
                    train={"batch_size": 0, "learning_rate": 1.0}, eval={"metrics": ["perplexity"]}, trian={})
    with pytest.raises(ConfigError) as e:
        load_run_config(write(tmp_path, config))
    paths = [p for p, _ in e.value.problems]
    assert sorted(paths) == sorted(["trian", "model.dtype", "adapter.lora_alfa", "adapter.r", "train.batch_size",
                                    "train.learning_rate", "eval.metrics[0]", "data.format", "data.train"])
    # the task/format check still runs although train has other errors: it reads only valid values
    assert "adapter.r: must be a positive integer" in str(e.value)
    assert validate_file(write(tmp_path, config)) == e.value.problems


# ---------------------------------------------------------------------------------------- the file itself
@pytest.mark.parametrize("text, words", [
    ("model: {name: gpt2\nadapter: {}\n", "invalid YAML"),
    ("", "the file is empty"),
    ("# only a comment\n", "the file is empty"),
    ("- model\n- data\n", "top level must be a mapping"),
], ids=["bad YAML", "empty", "only comments", "a list"])
def test_unusable_file_is_named(tmp_path, text, words):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_run_config(path)
    assert str(path) in str(e.value) and words in str(e.value)
    assert validate_file(path) == e.value.problems and e.value.problems[0][0] == ""


def test_invalid_yaml_names_the_line(tmp_path):
    path = write(tmp_path, "model:\n  name: gpt2\ntrain:\n  lr: [1e-4\n  epochs: 1\n")
    [(where, message)] = validate_file(path)
    assert where == "" and "invalid YAML at line 5" in message and str(path) in message


def test_missing_file_is_named(tmp_path):
    assert validate_file(tmp_path / "nope.yaml") == [("", f"{tmp_path / 'nope.yaml'}: no such file")]
    [(_, message)] = validate_file(tmp_path)  # a folder, not a file
    assert str(tmp_path) in message


# ---------------------------------------------------------------------------------------- overrides
def test_overrides_are_typed_yaml_values(tmp_path):
    cfg = load_run_config(write(tmp_path, FULL), [
        "adapter.r=8", "train.lr=1e-3", "train.max_steps=null", "train.packing=false", "model.name=gpt2",
        "adapter.target_modules=[q_proj, v_proj]", "eval.metrics=[loss]", "output.name=other",
    ])
    assert cfg.adapter["r"] == 8 and cfg.train.lr == 1e-3 and cfg.train.max_steps is None
    assert cfg.train.packing is False and cfg.model.name == "gpt2" and cfg.eval.metrics == ["loss"]
    assert cfg.adapter["target_modules"] == ["q_proj", "v_proj"] and cfg.output.name == "other"


def test_overrides_fill_keys_and_sections_the_file_left_out(tmp_path):
    cfg = load_run_config(write(tmp_path, MINIMAL), ["eval.max_new_tokens=8", "train.seed=3", "adapter.lora_alpha=16"])
    assert cfg.eval.max_new_tokens == 8 and cfg.train.seed == 3 and cfg.adapter["lora_alpha"] == 16


def test_override_of_unknown_key_gets_the_files_error(tmp_path):
    from_file = problems_of(tmp_path, merged(MINIMAL, train={"learning_rate": 1e-4}))
    from_override = problems_of(tmp_path, MINIMAL, ["train.learning_rate=1e-4"])
    assert from_override == from_file == [("train.learning_rate", "unknown key; did you mean 'lr'?")]
    assert problems_of(tmp_path, MINIMAL, ["trian.lr=1"]) == [("trian", "unknown key; did you mean 'train'?")]
    assert [p for p, _ in problems_of(tmp_path, MINIMAL, ["adapter.rr=4"])] == ["adapter.rr"]


@pytest.mark.parametrize("override, path, words", [
    ("adapter.rank_pattern.q_proj=4", "adapter.rank_pattern.q_proj", "adapter.rank_pattern is missing"),
    ("train.lr.value=1", "train.lr.value", "train.lr is 0.0002, not a mapping"),
    ("--train.lr=1e-4", "train.lr", "without dashes"),
    ("train.lr", "train.lr", "is not key.sub=value"),
    ("train..lr=1", "train..lr", "is not key.sub=value"),
    ("train.max_steps=", "train.max_steps", "key=null"),
    ("adapter.target_modules=[q_proj", "adapter.target_modules", "not valid YAML"),
    ("train.batch_size=0", "train.batch_size", "greater than 0"),
], ids=["nested create", "into a number", "dashes", "no value", "empty part", "empty value", "bad YAML", "bad value"])
def test_bad_override_names_its_key(tmp_path, override, path, words):
    config = merged(MINIMAL, train={"lr": 2e-4})
    problems = problems_of(tmp_path, config, [override])
    assert [p for p, _ in problems] == [path] and words in problems[0][1], problems


def test_override_into_an_existing_mapping(tmp_path):
    cfg = load_run_config(write(tmp_path, merged(MINIMAL, adapter={"rank_pattern": {"k_proj": 2}})),
                          ["adapter.rank_pattern.q_proj=4"])
    assert cfg.adapter["rank_pattern"] == {"k_proj": 2, "q_proj": 4}


def test_apply_overrides_edits_in_place_and_reports():
    raw = {"train": {"lr": 1.0}}
    assert apply_overrides(raw, ["train.lr=2e-4", "data.train=x.jsonl", "bad"]) == [
        ("bad", "override 'bad' is not key.sub=value, e.g. train.lr=1e-4")]
    assert raw == {"train": {"lr": 2e-4}, "data": {"train": "x.jsonl"}}


# ---------------------------------------------------------------------------------------- hash
def hash_of(tmp_path, config, overrides=(), name="run.yaml"):
    return config_hash(load_run_config(write(tmp_path, config, name), list(overrides)))


def test_hash_ignores_spelling_order_defaults_and_output(tmp_path):
    base = hash_of(tmp_path, FULL)
    reordered = {k: dict(reversed(list(v.items()))) for k, v in reversed(list(FULL.items()))}
    assert hash_of(tmp_path, reordered) == base
    text = yaml.safe_dump(FULL).replace("lr: 0.002", "lr: 2e-3")
    assert "2e-3" in text and hash_of(tmp_path, text) == base
    assert hash_of(tmp_path, FULL, ["train.lr=0.0020", "adapter.lora_alpha=32.0", "adapter.method=LORA"]) == base
    assert hash_of(tmp_path, FULL, ["output.dir=elsewhere", "output.name=null"]) == base
    assert hash_of(tmp_path, MINIMAL) == config_hash(RunConfig(**resolved_dict(RunConfig(**MINIMAL))))
    assert hash_of(tmp_path, MINIMAL) == hash_of(tmp_path, merged(MINIMAL, train={"lr": 0.0002, "seed": 0},
                                                                     model={"task_type": "CAUSAL_LM"},
                                                                     eval={"metrics": ["loss"]}))


def test_hash_changes_with_what_is_trained(tmp_path):
    base = hash_of(tmp_path, FULL)
    changed = {hash_of(tmp_path, FULL, [o]) for o in ("adapter.r=8", "train.seed=1", "data.train=eval.jsonl",
                                                     "model.name=gpt2", "eval.max_new_tokens=16")}
    assert base not in changed and len(changed) == 5
    assert len(base) == 12 and int(base, 16) >= 0


# ---------------------------------------------------------------------------------------- resolved dict
def test_resolved_dict_round_trips_through_yaml(tmp_path):
    cfg = load_run_config(write(tmp_path, MINIMAL), ["output.name='1e5'", "train.lr=3e-5"])
    resolved = resolved_dict(cfg)
    assert json.loads(json.dumps(resolved)) == resolved and list(resolved) == [
        "model", "adapter", "data", "train", "eval", "output", "tracking"]
    assert resolved["adapter"]["lora_alpha"] == 8 and resolved["model"]["task_type"] == "CAUSAL_LM"
    dump_yaml(cfg, tmp_path / "run" / "config.yaml")
    again = load_run_config(tmp_path / "run" / "config.yaml")
    assert again == cfg and resolved_dict(again) == resolved and config_hash(again) == config_hash(cfg)
    assert again.output.name == "1e5"  # a string that looks like a number stays a string
    text = (tmp_path / "run" / "config.yaml").read_text()
    assert f"config_hash {config_hash(cfg)}" in text and not (tmp_path / "run" / "config.yaml.tmp").exists()
    assert RunConfig(**yaml.safe_load(text)) == cfg


def test_every_shipped_example_validates(monkeypatch):
    """The configs in examples/ (the quick start and its QLoRA variant) stay valid as the schema grows."""
    from pathlib import Path

    from peftkit.train.config import validate_file

    repo = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(repo)  # their data paths are relative to the repository root
    examples = sorted((repo / "examples").glob("*.yaml"))
    assert {p.name for p in examples} >= {"quickstart.yaml", "quickstart-qlora.yaml"}
    for path in examples:
        problems = validate_file(path)
        if "quantization" in path.read_text() and not HAS_BNB:  # refused, naming what to install
            assert [field for field, _ in problems] == ["model.quantization"], problems
            assert "pip install 'peftkit[quantization]'" in problems[0][1]
        else:
            assert problems == [], path.name
