"""Config differences between runs count ``adapter.from`` the way the config version does: two
copies of one adapter are the same start (shown only where every key is listed), another adapter
is a real difference."""

from __future__ import annotations

import json
import shutil

import torch
from safetensors.torch import save_file

from peftkit.tracking.diff import config_diff, varying_keys
from peftkit.tracking.records import read_run

from fake_runs import make_run


def write_adapter(folder, value: float):
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    save_file({"base_model.model.q.lora_A.weight": torch.full((8, 4), value)}, str(folder / "adapter_model.safetensors"))
    return folder


def test_copies_of_one_adapter_are_no_versioned_difference(tmp_path):
    first = write_adapter(tmp_path / "here" / "adapter", 0.5)
    copy = tmp_path / "there" / "adapter"
    shutil.copytree(first, copy)
    other = write_adapter(tmp_path / "other" / "adapter", 0.25)
    runs_dir = tmp_path / "runs"
    a = read_run(make_run(runs_dir, "a", adapter={"from": str(first)}))
    b = read_run(make_run(runs_dir, "b", adapter={"from": str(copy)}))
    c = read_run(make_run(runs_dir, "c", adapter={"from": str(other)}))

    assert [d.key for d in varying_keys([a, b])] == []
    listed = {d.key: d for d in config_diff(a, b)}
    assert not listed["adapter.from"].versioned  # shown, but as where the files are, not what they are
    assert [d.key for d in varying_keys([a, c])] == ["adapter.from"]
    assert config_diff(a, c)[0].versioned


def test_an_adapter_that_cannot_be_read_counts_as_written(tmp_path):
    runs_dir = tmp_path / "runs"
    a = read_run(make_run(runs_dir, "a", adapter={"from": str(tmp_path / "gone-1")}))
    b = read_run(make_run(runs_dir, "b", adapter={"from": str(tmp_path / "gone-2")}))
    assert [d.key for d in varying_keys([a, b])] == ["adapter.from"]
