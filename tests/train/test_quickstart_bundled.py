"""`peftkit train examples/quickstart.yaml` on the bundled SmolLM2-135M-Instruct, cut to two steps:
the run folder is complete and the adapter loads in `peft` with peftkit's outputs. Slow (loads the
GGUF checkpoint twice, ~20 s each on the 2-core CPU); it runs in CI (`make test`)."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
import torch
from tiny_assets import assert_loads_in_peftkit_and_peft, read_metrics, the_run

from peftkit.cli import main
from peftkit.models import load_model, load_tokenizer

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_quickstart_config_on_the_bundled_model(tmp_path, monkeypatch):
    pytest.importorskip("gguf")
    monkeypatch.chdir(REPO)  # the example's data paths are relative to the repository root
    code = main(["train", "examples/quickstart.yaml", "train.max_steps=2", "eval.at_start=false", "eval.metrics=[loss]",
                 "train.save_steps=2", f"output.dir={tmp_path / 'runs'}"])
    assert code == 0
    run = the_run(tmp_path, "quickstart")
    assert {"config.yaml", "run.json", "metrics.jsonl", "adapter", "checkpoints", "loss.png"} <= set(os.listdir(run))
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "completed" and info["final_metrics"]["eval_loss"] > 0
    assert "max_steps: 2" in (run / "config.yaml").read_text()
    records = read_metrics(run)
    assert [r["step"] for r in records if "loss" in r] == [1, 2]
    assert os.listdir(run / "checkpoints") == ["step-00002"]

    base = load_model("smollm2-135m-instruct")  # loaded once: peft and peftkit each get their own copy
    tok = load_tokenizer("smollm2-135m-instruct")
    ids = tok(["Ada Lovelace lives in London; write to ada@example.com."], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        base_logits = base(ids).logits
    copies = [copy.deepcopy(base), base]
    logits = assert_loads_in_peftkit_and_peft(run / "adapter", copies.pop, {"input_ids": ids})
    assert not torch.allclose(logits, base_logits, atol=1e-4)  # two steps at lr 2e-3 moved the model


README_PROMPT = "Ada Lovelace lives in London, ada@math.org."


@pytest.mark.slow
def test_readme_ten_step_run_ends_measured_and_generate_answers_the_readme_prompt(tmp_path, monkeypatch, capsys):
    """The README's `peftkit train examples/quickstart.yaml train.max_steps=10`: eval_steps (30) and
    save_steps (15) do not divide 10, yet the run ends with an evaluation and a checkpoint at step
    10; then the README's `peftkit generate runs/<id> --prompt ...` answers in the trained JSON shape,
    because generate frames the prompt with the run's system prompt. (Evaluation cut to 4 rows and
    no base scoring, to keep the test near a minute and a half on the 2-core CPU.)"""
    pytest.importorskip("gguf")
    monkeypatch.chdir(REPO)
    assert main(["train", "examples/quickstart.yaml", "train.max_steps=10", "eval.at_start=false",
                 "eval.num_examples=4", f"output.dir={tmp_path / 'runs'}"]) == 0
    run = the_run(tmp_path, "quickstart")
    evals = [r for r in read_metrics(run) if "eval_exact_match" in r and not r.get("final")]
    assert [r["step"] for r in evals] == [10]
    assert os.listdir(run / "checkpoints") == ["step-00010"]
    capsys.readouterr()

    assert main(["generate", str(run), "--prompt", README_PROMPT, "--max-new-tokens", "40"]) == 0
    captured = capsys.readouterr()
    assert "using the run's system prompt" in captured.err
    answer = json.loads(captured.out.splitlines()[1])
    assert set(answer) == {"name", "email", "city"}, answer
    assert answer["email"] == "ada@math.org", answer
