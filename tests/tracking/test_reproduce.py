"""`runs reproduce` before it trains: changed data files and a changed starting adapter are named,
and a config whose relative paths do not resolve from here points at the directory the original run
started in."""

from __future__ import annotations

import hashlib

import pytest
import torch
from fake_runs import make_run
from safetensors.torch import save_file

from peftkit.errors import ConfigError
from peftkit.tracking.lineage import adapter_fingerprint
from peftkit.tracking.records import read_run
from peftkit.tracking.reproduce import changed_inputs, reproduce


def test_changed_and_missing_data_files_are_named(tmp_path):
    train, evaluation = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    train.write_text("a\n")
    evaluation.write_text("b\n")
    digest = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (train, evaluation)}
    data = {"train": {"path": str(train), "sha256": digest[train]}, "eval": {"path": str(evaluation), "sha256": digest[evaluation]},
            "hub": {"path": "user/dataset", "sha256": None}}
    run = read_run(make_run(tmp_path / "runs", "r", info={"data": data}))
    assert changed_inputs(run) == []
    train.write_text("a changed row\n")
    evaluation.unlink()
    changes = changed_inputs(run)
    assert changes[0].startswith(f"data.train {train} has changed (sha256 {digest[train][:12]} then, ")
    assert changes[1] == f"data.eval {evaluation} is missing"


def test_a_changed_or_missing_starting_adapter_is_named(tmp_path):
    parent = tmp_path / "parent" / "adapter"
    parent.mkdir(parents=True)
    (parent / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 4}')
    save_file({"w": torch.ones(2, 2)}, str(parent / "adapter_model.safetensors"))
    info = {"parent_adapter": str(parent), "parent_fingerprint": adapter_fingerprint(str(parent))}
    run = read_run(make_run(tmp_path / "runs", "r", info=info))
    assert changed_inputs(run) == []
    save_file({"w": torch.zeros(2, 2)}, str(parent / "adapter_model.safetensors"))
    [change] = changed_inputs(run)
    assert change.startswith(f"adapter.from {parent} has changed ({info['parent_fingerprint'][7:19]} then, ")
    (parent / "adapter_config.json").unlink()
    assert changed_inputs(run) == [f"adapter.from {parent} is missing"]


def test_reproduce_passes_the_config_and_records_what_it_reproduces(tmp_path):
    original = read_run(make_run(tmp_path / "runs", "orig"))
    calls, lines = [], []

    def fake_train(config, overrides, extra):
        calls.append((config, overrides, extra))
        return str(make_run(tmp_path / "runs", "copy", info=extra))

    reproduce(original, str(tmp_path / "runs"), echo=lines.append, train=fake_train)
    assert calls == [(str(tmp_path / "runs" / "orig" / "config.yaml"), [f'output.dir="{tmp_path / "runs"}"'],
                      {"reproduces": "orig"})]
    assert "results agree with orig on loss (largest relative difference 0" in lines[-1]


def test_reproduce_from_another_directory_says_where_the_run_started(tmp_path):
    original = read_run(make_run(tmp_path / "runs", "orig", info={"environment": {"cwd": "/somewhere/else"}}))

    def fake_train(config, overrides, extra):
        raise ConfigError("Invalid run config x:", [("data.train", "file not found: 'data/train.jsonl'")])

    with pytest.raises(ConfigError, match="the original run started in /somewhere/else") as info:
        reproduce(original, str(tmp_path / "runs"), echo=lambda line: None, train=fake_train)
    assert info.value.problems == [("data.train", "file not found: 'data/train.jsonl'")]
