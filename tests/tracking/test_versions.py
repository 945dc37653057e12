"""Config versions: what the hash ignores (key order, number spelling, spelled-out defaults, where
outputs and metrics go, how adapter.from is spelled and where its adapter lies), what changes it,
and result agreement."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file
from fake_runs import BASE, make_run

from peftkit.errors import ConfigError
from peftkit.tracking.records import read_run
from peftkit.tracking.versions import AGREE_RTOL, compare_results, version_groups
from peftkit.train.config import load_run_config
from peftkit.train.runner import resolve_parent, start_run


def version(tmp_path, text_or_dict, overrides=(), name="run.yaml"):
    """The version of a config file, after the run resolves adapter.from (as `peftkit train` does)."""
    path = tmp_path / name
    path.write_text(text_or_dict if isinstance(text_or_dict, str) else yaml.safe_dump(text_or_dict))
    cfg = load_run_config(path, list(overrides))
    resolve_parent(cfg)
    from peftkit.train.config import config_hash

    return config_hash(cfg)


def test_key_order_number_spelling_and_defaults_do_not_change_the_version(tmp_path):
    base = version(tmp_path, BASE)
    reordered = {k: dict(reversed(list(v.items()))) for k, v in reversed(list(BASE.items()))}
    assert version(tmp_path, reordered) == base
    spelled = yaml.safe_dump(BASE).replace("lr: 0.0002", "lr: 2.0e-4")
    assert "2.0e-4" in spelled and version(tmp_path, spelled) == base
    assert version(tmp_path, BASE, ["train.lr=0.00020", "adapter.lora_alpha=8.0", "adapter.method=LORA"]) == base
    defaults = ["train.seed=0", "train.scheduler=cosine", "adapter.lora_alpha=8", "eval.metrics=[loss]",
                "model.task_type=CAUSAL_LM", "adapter.from=null", "tracking.backends=[local]"]
    assert version(tmp_path, BASE, defaults) == base


def test_outputs_run_names_and_trackers_are_not_part_of_the_version(tmp_path):
    base = version(tmp_path, BASE)
    assert version(tmp_path, BASE, ["output.dir=/elsewhere", "output.name=try-3"]) == base
    assert version(tmp_path, BASE, ["tracking.backends=[local, mlflow, tensorboard]", "tracking.project=x",
                                    "tracking.mlflow_uri=file:/tmp/m"]) == base


def test_what_is_trained_changes_the_version(tmp_path):
    base = version(tmp_path, BASE)
    changed = {version(tmp_path, BASE, [o]) for o in ("adapter.r=16", "train.lr=3e-4", "train.seed=1",
                                                      "model.name=user/other", "adapter.target_modules=[q]",
                                                      "eval.max_new_tokens=8")}
    assert base not in changed and len(changed) == 6


def fake_adapter_run(runs_dir, run_id):
    run = make_run(runs_dir, run_id)
    (run / "adapter").mkdir()
    (run / "adapter" / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    return run


def test_adapter_from_spelled_any_way_is_one_version(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    parent = fake_adapter_run(runs, "20261122-100000-lora-aaaaaa")
    monkeypatch.chdir(tmp_path)
    spellings = [str(parent), "runs/20261122-100000-lora-aaaaaa", "runs/20261122-100000-lora-aaaaaa/adapter",
                 "./runs/20261122-100000-lora-aaaaaa/", "20261122-1000"]  # the last: a run id prefix in output.dir
    versions = {version(tmp_path, BASE, [f"adapter.from={s}", "output.dir=runs"]) for s in spellings}
    assert len(versions) == 1 and versions != {version(tmp_path, BASE)}


def write_adapter(folder: Path, value: float = 0.5, r: int = 8) -> Path:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": r}))
    save_file({"base_model.model.q.lora_A.weight": torch.full((r, 4), value)}, folder / "adapter_model.safetensors")
    return folder


def started_run(folder: Path, overrides: list[str]) -> dict:
    """What `peftkit train` records for ``folder/run.yaml`` (BASE) started in ``folder``."""
    (folder / "run.yaml").write_text(yaml.safe_dump(BASE))
    cfg = load_run_config(folder / "run.yaml", [*overrides, "output.dir=runs"])
    run = Path(start_run(cfg, resolve_parent(cfg)))
    return {**json.loads((run / "run.json").read_text()), "config": yaml.safe_load((run / "config.yaml").read_text())}


def test_copies_of_one_adapter_in_other_folders_are_one_version(tmp_path, monkeypatch):
    original = write_adapter(tmp_path / "a" / "start")
    shutil.copytree(original, tmp_path / "b" / "start")  # another checkout, another machine
    write_adapter(tmp_path / "c" / "start", value=0.25)  # another adapter: one weight differs
    write_adapter(tmp_path / "d" / "start", r=4)  # another adapter config
    recorded = {}
    for where in "abcd":
        monkeypatch.chdir(tmp_path / where)  # relative paths are read from the current directory
        recorded[where] = started_run(tmp_path / where, ["adapter.from=start"])
    assert recorded["a"]["config_hash"] == recorded["b"]["config_hash"]
    assert len({recorded[w]["config_hash"] for w in "acd"}) == 3
    for where in "ab":  # the path it came from is still what run.json and config.yaml show
        assert recorded[where]["parent_adapter"] == str(tmp_path / where / "start")
        assert recorded[where]["config"]["adapter"]["from"] == str(tmp_path / where / "start")
        assert recorded[where]["parent"] is None  # a stand-alone adapter folder: no parent run


def test_relative_adapter_from_is_read_from_the_current_directory(tmp_path, monkeypatch):
    write_adapter(tmp_path / "config-folder" / "start")
    write_adapter(tmp_path / "cwd" / "start", value=0.25)
    monkeypatch.chdir(tmp_path / "cwd")
    recorded = started_run(tmp_path / "config-folder", ["adapter.from=start"])
    assert recorded["parent_adapter"] == str(tmp_path / "cwd" / "start")  # like data paths, not the config's folder


@pytest.mark.parametrize("source, words", [
    ("nowhere", "no such folder"),
    ("runs/20261122-100000-lora-bbbbbb", r"no final adapter yet \(status completed\)"),
    ("runs", "neither a run folder"),
])
def test_adapter_from_that_names_no_adapter_fails_before_training(tmp_path, monkeypatch, source, words):
    make_run(tmp_path / "runs", "20261122-100000-lora-bbbbbb")  # a run without an adapter folder
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=words) as info:
        version(tmp_path, BASE, [f"adapter.from={source}", "output.dir=runs"])
    assert info.value.problems[0][0] == "adapter.from"


def test_adapter_from_of_another_method_is_refused(tmp_path, monkeypatch):
    run = fake_adapter_run(tmp_path / "runs", "20261122-100000-lora-cccccc")
    (run / "adapter" / "adapter_config.json").write_text(json.dumps({"peft_type": "IA3"}))
    with pytest.raises(ConfigError, match="holds a ia3 adapter, but adapter.method is lora"):
        version(tmp_path, BASE, [f"adapter.from={run}"])


def test_runs_of_one_version_agree_within_the_tolerance(tmp_path):
    runs = tmp_path / "runs"
    a = read_run(make_run(runs, "a", evals={4: {"loss": 0.5}}))
    b = read_run(make_run(runs, "b", evals={4: {"loss": 0.5 * (1 + AGREE_RTOL / 2)}}))
    c = read_run(make_run(runs, "c", evals={4: {"loss": 0.51}}))
    pending = read_run(make_run(runs, "d", status="running"))
    assert compare_results([a, b]) == (True, pytest.approx(AGREE_RTOL / 2, rel=1e-3), ["loss"])
    agree, worst, _ = compare_results([a, b, c])
    assert agree is False and worst == pytest.approx(0.01 / 0.51)
    assert compare_results([a, pending]) == (None, None, [])
    groups = version_groups([a, b, c, pending])
    (group,) = groups.values()  # one config: one version
    assert group.label() == "4x differ" and group.reruns == 4


def test_without_eval_data_the_training_loss_must_agree(tmp_path):
    runs = tmp_path / "runs"
    a = read_run(make_run(runs, "a", evals={}))
    b = read_run(make_run(runs, "b", evals={}, losses=(2.0, 1.5, 1.2, 1.1)))
    assert compare_results([a, b])[0] is False and compare_results([a, b])[2] == ["train_loss"]
