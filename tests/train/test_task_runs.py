"""`peftkit train` end to end for seq2seq (tiny T5), token_classification (tiny BERT),
speech_to_text (tiny Whisper) and vision_sft (tiny LLaVA): metrics logged under their names and equal to what the metric library
computes from the saved predictions, a run stopped mid-way and resumed ends bit-identical to one run
in one go, and the adapter loads in peftkit and in the real `peft` with identical outputs."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
from tiny_assets import assert_loads_in_peftkit_and_peft, read_metrics, the_run
from tiny_task_assets import skip_without_task_extras, write_task_config

from peftkit.cli import main
from peftkit.train import loop

pytestmark = pytest.mark.usefixtures("torch_single_thread")
skip_without_task_extras()

TASKS = ("seq2seq", "token_classification", "speech_to_text", "vision_sft")


def stop_in(step: int):
    def stop(at: int) -> None:  # Ctrl-C in the middle of `step`: the checkpoint before it stays
        if at == step:
            raise KeyboardInterrupt

    return stop


@pytest.fixture(scope="module", params=TASKS)
def task_runs(request, tmp_path_factory):
    """One 4-step run in one go and the same run stopped in step 3 and resumed (checkpoint 2)."""
    root = tmp_path_factory.mktemp(request.param)
    config = write_task_config(root, request.param)
    assert main(["train", str(config), "output.name=whole"]) == 0
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loop, "_fault_injection", stop_in(3))
        assert main(["train", str(config), "output.name=split"]) == 130
    split = the_run(root, "split")
    assert main(["train", "--resume", str(split)]) == 0
    return request.param, root, the_run(root, "whole"), split


def test_resumed_run_equals_the_run_in_one_go(task_runs):
    _, _, whole, split = task_runs
    assert json.loads((split / "run.json").read_text())["resumed_from"].endswith("step-00002")
    expected, got = (load_file(run / "adapter" / "adapter_model.safetensors") for run in (whole, split))
    assert expected.keys() == got.keys() and expected
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    assert [r["loss"] for r in read_metrics(whole) if "loss" in r] == [r["loss"] for r in read_metrics(split) if "loss" in r]


def test_metrics_are_what_the_libraries_compute_from_the_predictions(task_runs):
    task, root, whole, _ = task_runs
    final = json.loads((whole / "run.json").read_text())["final_metrics"]
    rows = json.loads((whole / "eval_predictions.json").read_text())
    predictions, references = [r["prediction"] for r in rows], [r["reference"] for r in rows]
    assert len(rows) == 4
    if task == "seq2seq":
        import sacrebleu
        from rouge_score import rouge_scorer

        assert final["eval_bleu"] == pytest.approx(sacrebleu.corpus_bleu(predictions, [references]).score)
        assert final["eval_chrf"] == pytest.approx(sacrebleu.corpus_chrf(predictions, [references]).score)
        scorer = rouge_scorer.RougeScorer(["rougeL"])
        rouge = [scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references)]
        assert final["eval_rougeL"] == pytest.approx(sum(rouge) / len(rouge))
        assert final["eval_exact_match"] == sum(p == r for p, r in zip(predictions, references)) / 4
    elif task == "token_classification":
        from seqeval.metrics import accuracy_score, f1_score

        gold, pred = [r.split() for r in references], [p.split() for p in predictions]
        assert final["eval_f1"] == pytest.approx(f1_score(gold, pred, zero_division=0))
        assert final["eval_accuracy"] == pytest.approx(accuracy_score(gold, pred))
        labels = json.loads((whole / "adapter" / "labels.json").read_text())
        assert labels == ["B-LOC", "B-PER", "O"]
    elif task == "vision_sft":
        assert final["eval_exact_match"] == sum(p == r for p, r in zip(predictions, references)) / 4
        assert references == ["red", "blue", "red", "blue"]
        keys = load_file(whole / "adapter" / "adapter_model.safetensors")
        assert keys and not [k for k in keys if "vision_tower" in k or "projector" in k]  # the language model only
    else:
        import jiwer

        assert final["eval_wer"] == pytest.approx(jiwer.wer(references, predictions))
        assert references == ["low", "high", "low", "high"]
    assert "eval_loss" in final and all(isinstance(v, float) for v in final.values())


def test_the_adapter_loads_in_peft_with_identical_outputs(task_runs):
    import transformers

    task, root, whole, _ = task_runs
    folder = {"seq2seq": "tiny-t5", "token_classification": "tiny-bert", "speech_to_text": "tiny-whisper",
              "vision_sft": "tiny-llava"}[task]
    auto = {"seq2seq": "AutoModelForSeq2SeqLM", "token_classification": "AutoModelForTokenClassification",
            "speech_to_text": "AutoModelForSpeechSeq2Seq", "vision_sft": "AutoModelForImageTextToText"}[task]
    kwargs = {"num_labels": 3} if task == "token_classification" else {}

    def base():
        torch.manual_seed(0)
        return getattr(transformers, auto).from_pretrained(root / folder, **kwargs)

    ids = torch.randint(0, 200, (2, 6), generator=torch.Generator().manual_seed(1))
    inputs = {"seq2seq": {"input_ids": ids, "decoder_input_ids": ids[:, :3]},
              "token_classification": {"input_ids": ids}, "vision_sft": {"input_ids": ids},
              "speech_to_text": {"input_features": torch.randn(2, 16, 100), "decoder_input_ids": ids[:, :3]}}[task]
    if task != "speech_to_text":
        assert_loads_in_peftkit_and_peft(whole / "adapter", base, inputs)
        return
    # peft's SEQ_2_SEQ_LM forward passes input_ids to Whisper, which takes input_features (TypeError):
    # compare with the model peft adapted, called directly
    import peft

    import peftkit as pk

    ours = pk.PeftModel.from_pretrained(base(), whole / "adapter").eval()
    theirs = peft.PeftModel.from_pretrained(base(), whole / "adapter").eval()
    with torch.no_grad():
        got, expected = ours(**inputs).logits, theirs.get_base_model()(**inputs).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    with torch.no_grad(), ours.disable_adapter():
        assert not torch.allclose(ours(**inputs).logits, got)  # the trained adapter changes the outputs


def test_the_evaluation_is_logged_and_the_data_errors_name_the_row(task_runs, capsys):
    task, root, whole, _ = task_runs
    evals = [r for r in read_metrics(whole) if "eval_loss" in r]
    assert evals and evals[-1]["step"] == 4
    bad = {"seq2seq": {"source": "x"}, "token_classification": {"tokens": ["a", "b"], "tags": ["O"]},
           "speech_to_text": {"audio": "clips/none.wav", "text": "x"},
           "vision_sft": {"images": [], "messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}}[task]
    rows = (root / "train.jsonl").read_text().splitlines()
    shutil.copy(root / "train.jsonl", root / "good.jsonl")
    (root / "train.jsonl").write_text("\n".join(rows[:2] + [json.dumps(bad)] + rows[2:]) + "\n")
    try:
        assert main(["train", str(root / f"{task}.yaml"), "output.name=bad"]) == 2
    finally:
        shutil.copy(root / "good.jsonl", root / "train.jsonl")
    err = capsys.readouterr().err
    assert "train.jsonl row 3" in err, err
    assert not any("bad" in p.name for p in (root / "runs").iterdir())
