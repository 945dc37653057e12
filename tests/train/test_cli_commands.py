"""`peftkit eval | generate | chat | merge` end to end on a tiny local model, after a 2-step training
run: outputs, files, the merged folder loading in plain transformers, and every error case."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from tiny_assets import chat_rows, tiny_model_dir, write_config, write_jsonl
from transformers import AutoModelForCausalLM

import peftkit as pk
from peftkit.cli import main
from peftkit.train import export


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: the thread pool costs more than it saves
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    config = write_config(root, train={"max_steps": 2, "save_steps": 2, "eval_steps": 100},
                          eval={"at_start": True, "max_new_tokens": 4})
    assert main(["train", str(config)]) == 0
    (run_dir,) = (root / "runs").iterdir()
    return run_dir


def final_eval(run_dir: Path) -> dict:
    return json.loads((run_dir / "run.json").read_text())["final_metrics"]


def test_eval_prints_metrics_and_writes_results(run, capsys):
    assert main(["eval", str(run)]) == 0
    out = capsys.readouterr().out
    assert "loss" in out and "exact_match" in out and "eval_results.json" in out
    results = json.loads((run / "eval_results.json").read_text())
    assert results["num_examples"] == 4 and "base_metrics" not in results
    # the same numbers the training run measured at its end
    assert results["metrics"]["loss"] == pytest.approx(final_eval(run)["eval_loss"], abs=1e-5)
    assert results["metrics"]["exact_match"] == final_eval(run)["eval_exact_match"]
    trained = json.loads((run / "eval_predictions.json").read_text())
    assert [r["prediction"] for r in results["predictions"]] == [r["prediction"] for r in trained]


def test_eval_base_scores_the_model_without_adapter(run, capsys):
    assert main(["eval", str(run / "adapter"), "--base", "--metrics", "loss"]) == 0  # the adapter folder of a run
    assert "base" in capsys.readouterr().out
    results = json.loads((run / "eval_results.json").read_text())
    at_start = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])  # eval.at_start: the base model
    assert at_start["step"] == 0
    assert results["base_metrics"]["loss"] == pytest.approx(at_start["eval_loss"], abs=1e-5)
    assert results["metrics"]["loss"] != pytest.approx(results["base_metrics"]["loss"], abs=1e-4)
    assert set(results["metrics"]) == {"loss"}


def test_eval_other_data_and_standalone_adapter(run, tmp_path, capsys):
    data = write_jsonl(tmp_path / "other.jsonl", chat_rows(2, offset=500))
    out_file = tmp_path / "res.json"
    assert main(["eval", str(run), "--data", str(data), "--out", str(out_file)]) == 0
    assert json.loads(out_file.read_text())["num_examples"] == 2
    adapter = tmp_path / "adapter"  # outside any run: the base model from base_model_name_or_path
    shutil.copytree(run / "adapter", adapter)
    assert main(["eval", str(adapter), "--data", str(data), "--metrics", "loss"]) == 0
    results = json.loads((adapter / "eval_results.json").read_text())
    assert results["run"] is None and set(results["metrics"]) == {"loss"}
    assert main(["eval", str(adapter)]) == 2
    assert "--data" in capsys.readouterr().err


def test_generate_answers_each_prompt_greedily(run, capsys):
    args = ["generate", str(run), "--prompt", "Echo 100", "--prompt", "Echo 101", "--max-new-tokens", "4"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert ">>> Echo 100" in out and ">>> Echo 101" in out
    assert main(args) == 0 and capsys.readouterr().out == out  # greedy: the same again
    # the answers are the ones the run's own evaluation generated for these prompts
    trained = json.loads((run / "eval_predictions.json").read_text())
    answers = [block.split("\n", 1)[1].strip() for block in out.split(">>> ")[1:]]
    assert answers == [r["prediction"].strip() for r in trained[:2]]
    assert main(args[:-2] + ["--max-new-tokens", "3", "--temperature", "0.8", "--seed", "1"]) == 0


def test_chat_from_piped_stdin(run, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("Echo 100\nEcho 101\n\n/reset\nEcho 100\n"))
    assert main(["chat", str(run), "--max-new-tokens", "4"]) == 0  # ends cleanly at end of input
    out = capsys.readouterr().out
    answers = [line for line in out.splitlines() if line.startswith("assistant> ")]
    assert len(answers) == 3 and "(conversation reset)" in out
    assert answers[0] == answers[2]  # after /reset the same first message gets the same answer
    monkeypatch.setattr("sys.stdin", io.StringIO("Echo 1\n/exit\nEcho 2\n"))
    assert main(["chat", str(run), "--max-new-tokens", "2"]) == 0
    assert capsys.readouterr().out.count("assistant> ") == 1


def test_chat_drops_old_turns_beyond_the_context():
    from peftkit.train.commands import _fitting_prompt

    tok = type("Tok", (), {"chat_template": None, "__call__": lambda self, text, **k: {"input_ids": list(text)}})()
    history = [{"role": "user", "content": "x" * 40}, {"role": "assistant", "content": "y" * 40},
               {"role": "user", "content": "z"}]
    prompt = _fitting_prompt(tok, [], history, limit=60, max_new_tokens=8, out=io.StringIO())
    assert "x" not in prompt and "z" in prompt and len(history) == 1


def test_merge_writes_a_plain_transformers_folder(run, tmp_path, capsys):
    out = tmp_path / "merged"
    assert main(["merge", str(run), "--out", str(out)]) == 0
    assert "max abs logit diff" in capsys.readouterr().out
    names = set(os.listdir(out))
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= names
    assert not [n for n in names if n.startswith("adapter")]
    assert "quantization_config" not in (out / "config.json").read_text()
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".merged")]  # no temporary folder left
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir(run.parent.parent))
    adapted = pk.PeftModel.from_pretrained(base, run / "adapter").eval()
    ids = torch.randint(0, 250, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, adapted(input_ids=ids).logits, atol=1e-5, rtol=0)


def test_merge_refuses_a_non_empty_out_unless_forced(run, tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["merge", str(run), "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err and os.listdir(out) == ["keep.txt"]
    assert main(["merge", str(run), "--out", str(out), "--force", "--no-check"]) == 0
    assert "keep.txt" not in os.listdir(out) and "model.safetensors" in os.listdir(out)
    assert sorted(os.listdir(tmp_path)) == ["taken"]
    assert main(["merge", str(run), "--out", str(run / "adapter" / "..")]) == 2  # would delete the adapter


def test_failed_merge_leaves_nothing(run, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(export, "_reload_diff", lambda *a, **k: 1.0)  # as if the merge had gone wrong
    assert main(["merge", str(run), "--out", str(tmp_path / "merged")]) == 2
    assert "differ" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_gguf_quantizer_state_is_dropped_before_saving(tmp_path):
    """The bundled SmolLM2 loads from GGUF and keeps a quantizer that save_pretrained refuses."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir(tmp_path))
    model.hf_quantizer = SimpleNamespace(quantization_config=SimpleNamespace(quant_method="gguf"))
    model.is_quantized = True
    model.config.quantization_config = {"quant_method": "gguf"}
    with pytest.raises(ValueError, match="not serializable"):
        model.save_pretrained(tmp_path / "a")
    export.plain(model).save_pretrained(tmp_path / "b")
    assert "quantization_config" not in (tmp_path / "b" / "config.json").read_text()


COMMANDS = {"eval": [], "generate": ["--prompt", "hi"], "chat": [], "merge": ["--out", "OUT"]}


@pytest.mark.parametrize("command", COMMANDS)
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0 and f"usage: peftkit {command}" in capsys.readouterr().out


def _args(command, path, tmp_path, *extra):
    return [command, str(path), *[str(tmp_path / "out") if a == "OUT" else a for a in COMMANDS[command]], *extra]


@pytest.mark.parametrize("command", COMMANDS)
def test_missing_adapter(command, tmp_path, capsys):
    assert main(_args(command, tmp_path / "nowhere", tmp_path)) == 2
    assert f"{tmp_path / 'nowhere'}: no such run or adapter folder" in capsys.readouterr().err


@pytest.mark.parametrize("command", COMMANDS)
def test_run_folder_without_adapter(command, run, tmp_path, capsys):
    broken = tmp_path / "run"
    broken.mkdir()
    for name in ("config.yaml", "run.json"):
        shutil.copy(run / name, broken / name)
    shutil.copytree(run / "checkpoints", broken / "checkpoints")
    assert main(_args(command, broken, tmp_path)) == 2
    err = capsys.readouterr().err
    assert f"run folder {broken} has no adapter" in err and "step-00002" in err  # points at the checkpoint


@pytest.mark.parametrize("command", COMMANDS)
def test_base_model_not_found(command, run, tmp_path, capsys):
    adapter = tmp_path / "adapter"
    shutil.copytree(run / "adapter", adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tmp_path / "gone-model")
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    extra = ["--data", str(run.parent.parent / "eval.jsonl")] if command == "eval" else []
    assert main(_args(command, adapter, tmp_path, *extra)) == 2
    err = capsys.readouterr().err
    assert "gone-model" in err and "base_model_name_or_path" in err and "--model" in err


def test_other_errors(run, tmp_path, capsys):
    assert main(["eval", str(run), "--config", str(tmp_path / "none.yaml")]) == 2
    assert "none.yaml" in capsys.readouterr().err
    assert main(["eval", str(run), "--data", str(tmp_path / "none.jsonl")]) == 2
    assert "data.eval" in capsys.readouterr().err
    assert main(["eval", str(run), "--metrics", "accuracy"]) == 2
    assert "eval.metrics" in capsys.readouterr().err
    assert main(["generate", str(run / "config.yaml"), "--prompt", "x"]) == 2
    assert "is a file" in capsys.readouterr().err
    assert main(["generate", str(tmp_path), "--prompt", "x"]) == 2
    assert "neither a run folder" in capsys.readouterr().err


def test_classifier_eval_and_merge(tmp_path, capsys):
    """A classification run: labels.json gives the head its size; eval reports accuracy and F1; merge
    writes a sequence classifier with the label names; generate refuses it."""
    from transformers import AutoModelForSequenceClassification

    rows = [{"text": f"{w} {i}", "label": w} for i in range(4) for w in ("good", "bad", "meh")]
    config = write_config(tmp_path, data={"train": str(write_jsonl(tmp_path / "cls.jsonl", rows)), "eval": None,
                                          "eval_fraction": 0.25, "format": "classification"},
                          train={"task": "classification", "max_steps": 2, "save_steps": 2, "eval_steps": 100},
                          eval={"metrics": ["loss", "accuracy", "f1"]})
    assert main(["train", str(config)]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    assert main(["eval", str(run)]) == 0
    results = json.loads((run / "eval_results.json").read_text())
    assert set(results["metrics"]) == {"loss", "accuracy", "f1"} and results["num_examples"] == 3
    assert results["metrics"]["accuracy"] == pytest.approx(final_eval(run)["eval_accuracy"])
    assert main(["generate", str(run), "--prompt", "x"]) == 2
    assert "only CAUSAL_LM" in capsys.readouterr().err
    assert main(["merge", str(run), "--out", str(tmp_path / "merged")]) == 0
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged")
    assert sorted(merged.config.id2label.values()) == ["bad", "good", "meh"]
