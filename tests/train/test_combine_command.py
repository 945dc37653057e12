"""`peftkit combine combine.yaml` end to end: two tiny training runs combined into a third run whose
adapter equals add_weighted_adapter's result, with both parents in its lineage, shown and compared
by `peftkit runs`, scored with --eval; bad specs fail naming the field and write nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from tiny_assets import chat_rows, tiny_model_dir, write_config, write_jsonl
from transformers import AutoModelForCausalLM

import peftkit as pk
from peftkit.cli import main


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def parents(tmp_path_factory) -> tuple[Path, Path, Path]:
    """Two finished runs on different data (and ranks); returns (root, run a, run b)."""
    root = tmp_path_factory.mktemp("combine")
    found = []
    for name, offset, r in (("a", 0, 4), ("b", 50, 2)):
        config = write_config(root, train={"max_steps": 2, "save_steps": 2, "eval_steps": 100},
                              adapter={"r": r}, output={"name": name})
        write_jsonl(root / "train.jsonl", chat_rows(12, offset=offset))  # write_config wrote its own first
        assert main(["train", str(config)]) == 0
        (run_dir,) = [p for p in (root / "runs").iterdir() if json.loads((p / "run.json").read_text())["name"] == name]
        found.append(run_dir.name)
    return root, root / "runs" / found[0], root / "runs" / found[1]


def write_spec(root: Path, **spec) -> Path:
    path = root / "combine.yaml"
    path.write_text(yaml.safe_dump({"output": {"dir": str(root / "runs"), "name": "ab"}, **spec}))
    return path


def combined_runs(root: Path) -> list[Path]:
    return [p for p in (root / "runs").iterdir() if (p / "combine.yaml").exists()]


def test_combined_run_equals_add_weighted_adapter_and_lists_both_parents(parents, capsys):
    root, a, b = parents
    spec = write_spec(root, adapters=[str(a), b.name], weights=[1.0, -0.5], combination_type="cat")
    assert main(["combine", str(spec), "--eval"]) == 0
    (run_dir,) = combined_runs(root)
    info = json.loads((run_dir / "run.json").read_text())
    assert info["parent"] == a.name and [p["run"] for p in info["parents"]] == [a.name, b.name]
    assert [p["weight"] for p in info["parents"]] == [1.0, -0.5] and info["combination"]["type"] == "cat"
    assert info["combination"]["max_relative_error"] < 1e-6  # cat is exact
    assert set(info["eval_on_parents"]) == {a.name, b.name} and "eval_loss" in info["final_metrics"]
    assert (run_dir / f"eval_results-{b.name}.json").exists()

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir(root))
    reference = pk.PeftModel.from_pretrained(base, str(a / "adapter"))
    reference.load_adapter(str(b / "adapter"), "b")
    reference.add_weighted_adapter(["default", "b"], [1.0, -0.5], "ab", combination_type="cat")
    reference.set_adapter("ab")
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        want = reference(input_ids=ids).logits
        got = pk.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir(root)),
                                           str(run_dir / "adapter"))(input_ids=ids).logits
    torch.testing.assert_close(got, want)

    capsys.readouterr()
    assert main(["runs", "show", run_dir.name, "--dir", str(root / "runs")]) == 0
    shown = capsys.readouterr().out
    assert "cat" in shown and f"-0.5 x {b.name}" in shown and f"1 x {a.name}" in shown
    assert main(["runs", "show", b.name, "--dir", str(root / "runs")]) == 0
    assert run_dir.name in capsys.readouterr().out  # the combination is a child of both parents
    assert main(["runs", "diff", a.name, run_dir.name, "--dir", str(root / "runs")]) == 0
    assert "adapter.r" in capsys.readouterr().out  # rank 4 -> 6 (cat stacks the ranks)


def test_bad_specs_name_the_field_and_write_nothing(parents, capsys):
    root, a, b = parents
    before = set((root / "runs").iterdir())
    cases = [
        ({"adapters": [str(a), str(b)], "weights": [1.0]}, "weights"),
        ({"adapters": [str(a)], "weights": [1.0], "densty": 0.5}, "densty"),
        ({"adapters": [str(a), str(root / "nowhere")], "weights": [1, 1]}, "nowhere"),
        ({"adapters": [str(a), str(b)], "weights": [1, 1], "combination_type": "median"}, "median"),
        ({"adapters": [str(a), str(b)], "weights": [1, 1], "combination_type": "ties"}, "density"),
    ]
    for spec, needle in cases:
        capsys.readouterr()
        assert main(["combine", str(write_spec(root, **spec))]) == 2
        assert needle in capsys.readouterr().err
    assert set((root / "runs").iterdir()) == before


def test_parents_on_different_base_models_are_refused_unless_model_is_set(parents, tmp_path, capsys):
    root, a, b = parents
    other = tmp_path / "other-base"  # run b's adapter, as if trained on another model
    other.mkdir()
    for item in (b / "adapter").iterdir():
        (other / item.name).write_bytes(item.read_bytes())
    config = json.loads((other / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "someone/another-model"
    (other / "adapter_config.json").write_text(json.dumps(config))
    before = set((root / "runs").iterdir())
    assert main(["combine", str(write_spec(root, adapters=[str(a), str(other)], weights=[1, 1]))]) == 2
    err = capsys.readouterr().err
    assert "different base models" in err and "someone/another-model" in err and "model:" in err
    assert set((root / "runs").iterdir()) == before
    base = yaml.safe_load((a / "config.yaml").read_text())["model"]["name"]  # the same model, named: accepted
    spec = write_spec(root, adapters=[str(a), str(other)], weights=[1, 1], model=base, output={"dir": str(root / "runs"), "name": "forced"})
    assert main(["combine", str(spec)]) == 0
