"""A classification run: `peftkit eval --base` scores the base model exactly as the run's step 0 did
(the new head is drawn with the run's seed), and `peftkit classify` labels texts as the run's
evaluation did."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
from tiny_assets import read_metrics, the_run, tiny_bert_dir, write_config, write_jsonl

from peftkit.cli import main
from peftkit.errors import PeftkitError

from test_tasks_e2e import sentiment_rows  # noqa: E402  (tests/train is on sys.path)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("classify")
    bert = tiny_bert_dir(root)
    train = write_jsonl(root / "cls_train.jsonl", sentiment_rows(16, 0))
    evaluation = write_jsonl(root / "cls_eval.jsonl", sentiment_rows(8, 1))
    config = write_config(
        root, model={"name": str(bert)}, adapter={"lora_dropout": 0.0},
        data={"train": str(train), "eval": str(evaluation), "format": None},  # filled in: classification
        train={"task": "classification", "max_steps": 10, "batch_size": 8, "lr": 1e-2, "save_steps": 10,
               "eval_steps": 10, "max_seq_len": 32, "seed": 3},
        eval={"metrics": ["accuracy", "loss"], "at_start": True},
    )
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["train", str(config)]) == 0
    return the_run(root), evaluation


def test_eval_base_scores_the_base_model_as_the_run_step_0_did(run, capsys):
    folder, _ = run
    step0 = next(r for r in read_metrics(folder) if r["step"] == 0)
    assert main(["eval", str(folder), "--base"]) == 0
    capsys.readouterr()
    results = json.loads((folder / "eval_results.json").read_text())
    assert results["base_metrics"]["accuracy"] == step0["eval_accuracy"]
    assert results["base_metrics"]["loss"] == pytest.approx(step0["eval_loss"], rel=1e-5)


def test_classify_labels_texts_as_the_run_evaluation_did(run, capsys, monkeypatch):
    folder, evaluation = run
    rows = [json.loads(line) for line in evaluation.read_text().splitlines()]
    monkeypatch.setattr("sys.stdin", io.StringIO("".join(r["text"] + "\n" for r in rows)))
    assert main(["classify", str(folder)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(rows)
    labels = [line.split("\t") for line in lines]
    assert all(label in ("negative", "positive") and 0.5 <= float(p) <= 1.0 and text == row["text"]
               for (label, p, text), row in zip(labels, rows))
    accuracy = sum(label == row["label"] for (label, _, _), row in zip(labels, rows)) / len(rows)
    assert accuracy == json.loads((folder / "run.json").read_text())["final_metrics"]["eval_accuracy"]

    assert main(["classify", str(folder), "--text", rows[0]["text"], "--text", "great 7"]) == 0
    assert [line.split("\t")[0] for line in capsys.readouterr().out.splitlines()][0] == labels[0][0]


def test_classify_refuses_a_causal_lm_adapter(tmp_path, capsys):
    config = write_config(tmp_path, train={"max_steps": 1, "save_steps": 1, "eval_steps": 1}, eval={"metrics": ["loss"]})
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["train", str(config)]) == 0
    assert main(["classify", str(the_run(tmp_path)), "--text", "hi"]) == 2
    assert "classify needs a classification (SEQ_CLS) adapter" in capsys.readouterr().err
    assert issubclass(__import__("peftkit.train.commands", fromlist=["CommandError"]).CommandError, PeftkitError)
