"""`peftkit train` end to end for every task and sft format on tiny local models: classification
(label names, accuracy/F1, the trained head saved with the adapter), DPO (the reference is the same
model with its adapter disabled: no second copy), sft with packing, prompt_completion and text.
Every run's adapter loads in peftkit and in the real `peft` with identical outputs."""

from __future__ import annotations

import copy
import json
import math
import random

import pytest
import torch
import transformers
from tiny_assets import (
    assert_loads_in_peftkit_and_peft,
    read_metrics,
    the_run,
    tiny_bert_dir,
    tiny_model_dir,
    write_config,
    write_jsonl,
)
from tiny_models import tiny_gpt2
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

import peftkit as pk
from peftkit.cli import main
from peftkit.train import loop, prepare, tasks

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def llama_inputs() -> dict:
    return {"input_ids": torch.randint(0, 200, (2, 8), generator=torch.Generator().manual_seed(1))}


def spy_task(monkeypatch, name: str) -> list:
    """Record every batch (and the model) that the loop hands to the task's loss."""
    seen, real = [], loop.TASKS[name]

    def loss(model, batch, beta):
        seen.append((model, {k: v.clone() for k, v in batch.items()}))
        return real.loss(model, batch, beta)

    monkeypatch.setitem(loop.TASKS, name, tasks.Task(name, loss))
    return seen


# --------------------------------------------------------------------------- classification
def sentiment_rows(n: int, seed: int) -> list[dict]:
    rnd = random.Random(seed)
    rows = []
    for i in range(n):
        label = ("negative", "positive")[i % 2]
        word = rnd.choice({"negative": ["bad", "awful"], "positive": ["good", "great"]}[label])
        rows.append({"text": f"{word} {rnd.randint(0, 99)}", "label": label})
    return rows


def test_classification_end_to_end(tmp_path):
    bert = tiny_bert_dir(tmp_path)
    train = write_jsonl(tmp_path / "cls_train.jsonl", sentiment_rows(16, 0))
    evaluation = write_jsonl(tmp_path / "cls_eval.jsonl", sentiment_rows(8, 1))
    config = write_config(
        tmp_path, model={"name": str(bert)}, adapter={"lora_dropout": 0.0},
        data={"train": str(train), "eval": str(evaluation), "format": "classification"},
        train={"task": "classification", "max_steps": 20, "batch_size": 8, "lr": 1e-2, "save_steps": 10,
               "eval_steps": 10, "max_seq_len": 32},
        eval={"metrics": ["loss", "accuracy", "f1"]},
    )
    assert main(["train", str(config)]) == 0
    run = the_run(tmp_path)
    assert json.loads((run / "run.json").read_text())["status"] == "completed"
    # label names (sorted strings) travel with the adapter
    labels = json.loads((run / "adapter" / "labels.json").read_text())
    assert labels == ["negative", "positive"]
    records = read_metrics(run)
    evals = [r for r in records if "eval_accuracy" in r]
    assert [r["step"] for r in evals if not r.get("final")] == [10, 20]
    assert all({"eval_loss", "eval_f1"} <= set(r) for r in evals)
    final = evals[-1]
    assert final["eval_accuracy"] >= 0.75 and final["eval_f1"] >= 0.75, final
    losses = [r["loss"] for r in records if "loss" in r]
    assert losses[-1] < 0.5 * losses[0]
    # the new classifier head trained in full and was saved through modules_to_save
    adapter_config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert "classifier" in adapter_config["modules_to_save"] and adapter_config["task_type"] == "SEQ_CLS"
    from safetensors.torch import load_file

    saved = load_file(run / "adapter" / "adapter_model.safetensors")
    assert {"base_model.model.classifier.weight", "base_model.model.classifier.bias"} <= set(saved)

    def fresh_base():  # a new, randomly initialised head each time (different seed): the adapter restores it
        torch.manual_seed(random.randrange(1 << 30))
        return AutoModelForSequenceClassification.from_pretrained(bert, num_labels=len(labels))

    tok = AutoTokenizer.from_pretrained(bert)
    rows = [json.loads(line) for line in evaluation.read_text().splitlines()]
    enc = tok([r["text"] for r in rows], return_tensors="pt", padding=True)
    logits = assert_loads_in_peftkit_and_peft(run / "adapter", fresh_base, dict(enc))
    base_logits = fresh_base()(**enc).logits
    assert not torch.allclose(logits, base_logits, atol=1e-3)
    torch.testing.assert_close(saved["base_model.model.classifier.weight"],
                               pk.PeftModel.from_pretrained(fresh_base(), run / "adapter")
                               .get_base_model().classifier.modules_to_save["default"].weight)
    # the reloaded adapter scores the eval rows exactly as the run reported
    gold = torch.tensor([labels.index(r["label"]) for r in rows])
    assert float((logits.argmax(-1) == gold).float().mean()) == pytest.approx(final["eval_accuracy"])


# --------------------------------------------------------------------------- dpo
def preference_rows(n: int, offset: int = 0) -> list[dict]:
    return [{"prompt": f"Echo {i}", "chosen": f"{i}!", "rejected": f"no {i * 7 % 13}"} for i in range(offset, offset + n)]


def test_dpo_end_to_end_with_the_adapter_disabled_as_reference(tmp_path, monkeypatch):
    train = write_jsonl(tmp_path / "pref_train.jsonl", preference_rows(16))
    evaluation = write_jsonl(tmp_path / "pref_eval.jsonl", preference_rows(4, offset=100))
    config = write_config(
        tmp_path, data={"train": str(train), "eval": str(evaluation), "format": "preference"},
        train={"task": "dpo", "max_steps": 12, "batch_size": 4, "lr": 1e-2, "save_steps": 100, "eval_steps": 100,
               "max_seq_len": 48, "dpo_beta": 0.1, "truncation": "error"},
        eval={"metrics": ["loss"], "at_start": True},
    )
    # No second model: one model is built (from_pretrained once, no module deep-copied), and every
    # loss call sees the same parameters: the policy's, whose adapter is switched off for the reference.
    built, loads = [], []
    real_init, real_deepcopy, real_load = transformers.PreTrainedModel.__init__, copy.deepcopy, prepare.load_model

    def init(self, *args, **kwargs):
        built.append(self)
        real_init(self, *args, **kwargs)

    def deepcopy(obj, *args, **kwargs):
        assert not isinstance(obj, torch.nn.Module), "a model was deep-copied"
        return real_deepcopy(obj, *args, **kwargs)

    monkeypatch.setattr(transformers.PreTrainedModel, "__init__", init)
    monkeypatch.setattr(copy, "deepcopy", deepcopy)
    monkeypatch.setattr(prepare, "load_model", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    disabled = []
    real_disable = pk.PeftModel.disable_adapter
    monkeypatch.setattr(pk.PeftModel, "disable_adapter", lambda self: disabled.append(1) or real_disable(self))
    seen = spy_task(monkeypatch, "dpo")

    assert main(["train", str(config)]) == 0
    monkeypatch.undo()
    # models with weights (the run's model check builds one more on the meta device: no memory)
    built = [type(m).__name__ for m in built if next(m.parameters()).device.type != "meta"]
    assert len(loads) == 1 and built.count("LlamaForCausalLM") == 1, built
    models = {id(m) for m, _ in seen}
    assert len(models) == 1
    model = seen[0][0]
    expected = sum(p.numel() for p in pk.get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir(tmp_path)),
        pk.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear")).parameters())
    assert sum(p.numel() for p in model.parameters()) == expected
    assert len(disabled) >= len(seen)  # every loss (training and eval) disabled the adapter for its reference

    run = the_run(tmp_path)
    records = read_metrics(run)
    # the adapter starts as identity (lora_B = 0): policy == reference, so the loss is -log sigmoid(0) = log 2
    assert records[0] == {"step": 0, "eval_loss": pytest.approx(math.log(2), abs=1e-6)}
    losses = [r["loss"] for r in records if "loss" in r]
    assert losses[0] == pytest.approx(math.log(2), abs=1e-6)
    assert len(losses) == 12 and losses[-1] < 0.5 * losses[0], losses
    assert read_metrics(run)[-1]["eval_loss"] < 0.5 * math.log(2)
    # prompts are not learned: every chosen/rejected label before the answer is -100
    batch = seen[0][1]
    for side in ("chosen", "rejected"):
        labels, ids = batch[f"{side}_labels"], batch[f"{side}_input_ids"]
        assert ((labels == -100) | (labels == ids)).all() and (labels[:, :3] == -100).all()
    assert_loads_in_peftkit_and_peft(run / "adapter", lambda: AutoModelForCausalLM.from_pretrained(tiny_model_dir(tmp_path)),
                                     llama_inputs())


def test_dpo_reference_is_the_base_model_without_dropout():
    """With dropout in the base model, the reference log-probs are the base model's in eval mode
    (deterministic), while the policy trains with dropout; modes are restored afterwards."""
    base = tiny_gpt2(resid_pdrop=0.3, embd_pdrop=0.3, attn_pdrop=0.3)
    model = pk.get_peft_model(tiny_gpt2(resid_pdrop=0.3, embd_pdrop=0.3, attn_pdrop=0.3),
                              pk.LoraConfig(r=4, target_modules=["c_attn"], init_lora_weights=False))
    model.train()
    g = torch.Generator().manual_seed(0)
    ids = {s: torch.randint(0, 100, (2, 7), generator=g) for s in ("chosen", "rejected")}
    batch = {}
    for side, x in ids.items():
        labels = x.clone()
        labels[:, :3] = -100
        batch.update({f"{side}_input_ids": x, f"{side}_attention_mask": torch.ones_like(x), f"{side}_labels": labels})
    torch.manual_seed(5)
    loss, tokens = tasks.dpo_loss(model, batch, 0.5)
    assert tokens == 28 and model.training and all(m.training for m in model.modules())

    def logp(m, side):
        return tasks.sequence_logprob(m, batch[f"{side}_input_ids"], batch[f"{side}_attention_mask"], batch[f"{side}_labels"])

    torch.manual_seed(5)  # the same dropout masks for the policy
    policy = {s: logp(model, s) for s in ids}
    with torch.no_grad():
        ref = {s: logp(base.eval(), s) for s in ids}
    margin = (policy["chosen"] - ref["chosen"]) - (policy["rejected"] - ref["rejected"])
    torch.testing.assert_close(loss, -torch.nn.functional.logsigmoid(0.5 * margin).mean())
    loss.backward()  # gradients reach the adapter only
    assert all(p.grad is None for n, p in model.named_parameters() if "lora_" not in n)


# --------------------------------------------------------------------------- sft formats
def test_sft_with_packing(tmp_path, monkeypatch):
    config = write_config(tmp_path, train={"packing": True, "max_seq_len": 64, "batch_size": 2, "max_steps": 6,
                                           "eval_steps": 3},
                          data={"eval": None, "eval_fraction": 0.25}, eval={"metrics": ["loss"]})
    seen = spy_task(monkeypatch, "sft")
    assert main(["train", str(config)]) == 0
    run = the_run(tmp_path)
    assert json.loads((run / "run.json").read_text())["status"] == "completed"
    blocks = [row for _, batch in seen for row in zip(batch["input_ids"], batch["attention_mask"], batch["labels"])]
    # blocks are max_seq_len tokens of several conversations back to back; only the last block of the
    # train and of the eval rows may be shorter (seen once per epoch / evaluation)
    full = [ids for ids, mask, _ in blocks if mask.all() and len(ids) == 64]
    short = {tuple(ids[mask.bool()].tolist()) for ids, mask, _ in blocks if not (mask.all() and len(ids) == 64)}
    assert len(full) > len(blocks) / 2 and len(short) <= 2
    tok = AutoTokenizer.from_pretrained(tiny_model_dir(tmp_path))
    assert any(tok.decode(ids).count("<|im_start|>user") >= 2 for ids in full)
    # completion-only labels survive packing: user prompts are never learned
    for ids, mask, labels in blocks:
        learned = tok.decode(ids[labels != -100])
        assert "Echo" not in learned and "<|im_end|>" in learned
    assert any("eval_loss" in r for r in read_metrics(run))
    assert_loads_in_peftkit_and_peft(run / "adapter", lambda: AutoModelForCausalLM.from_pretrained(tiny_model_dir(tmp_path)),
                                     llama_inputs())


@pytest.mark.parametrize("fmt", ["prompt_completion", "text"])
def test_sft_prompt_completion_and_text(tmp_path, monkeypatch, fmt):
    if fmt == "prompt_completion":
        rows = [{"prompt": f"Echo {i}", "completion": f"{i}!"} for i in range(12)]
        metrics = ["loss", "exact_match"]
    else:
        rows = [{"text": f"The number {i} is {'even' if i % 2 == 0 else 'odd'}."} for i in range(12)]
        metrics = ["loss"]
    train = write_jsonl(tmp_path / f"{fmt}.jsonl", rows)
    config = write_config(tmp_path, data={"train": str(train), "eval": None, "eval_fraction": 0.25, "format": fmt},
                          eval={"metrics": metrics}, train={"max_steps": 8, "lr": 1e-2, "save_steps": 4, "eval_steps": 4},
                          adapter={"lora_dropout": 0.0})
    seen = spy_task(monkeypatch, "sft")
    assert main(["train", str(config)]) == 0
    run = the_run(tmp_path)
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "completed" and set(info["final_metrics"]) == {f"eval_{m}" for m in metrics}
    tok = AutoTokenizer.from_pretrained(tiny_model_dir(tmp_path))
    _, batch = seen[0]
    for ids, mask, labels in zip(batch["input_ids"], batch["attention_mask"], batch["labels"]):
        learned = labels[labels != -100]
        if fmt == "prompt_completion":  # the completion and its end of turn only, in the chat template
            assert tok.decode(ids[mask.bool()]).startswith("<|im_start|>user\nEcho ")
            text = tok.decode(learned)
            assert text.endswith("!<|im_end|>") and text[:-len("!<|im_end|>")].isdigit(), text
        else:  # every real token is learned, and the document ends with eos
            assert torch.equal(learned, ids[mask.bool()]) and learned[-1] == tok.eos_token_id
    losses = [r["loss"] for r in read_metrics(run) if "loss" in r]
    assert len(losses) == 8 and losses[-1] < losses[0]
    if fmt == "prompt_completion":
        assert (run / "eval_predictions.json").exists()
    assert_loads_in_peftkit_and_peft(run / "adapter", lambda: AutoModelForCausalLM.from_pretrained(tiny_model_dir(tmp_path)),
                                     llama_inputs())
