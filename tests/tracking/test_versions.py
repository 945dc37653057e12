"""Config versions: what the hash ignores (key order, number spelling, spelled-out defaults, where
outputs and metrics go, how adapter.from is spelled), what changes it, and result agreement."""

from __future__ import annotations

import json

import pytest
import yaml
from fake_runs import BASE, make_run

from peftkit.errors import ConfigError
from peftkit.tracking.records import read_run
from peftkit.tracking.versions import AGREE_RTOL, compare_results, version_groups
from peftkit.train.config import load_run_config
from peftkit.train.runner import resolve_parent


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
