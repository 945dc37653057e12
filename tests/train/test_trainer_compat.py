"""A peftkit model trains under `transformers.Trainer` with its default arguments, as a `peft` model
does, and its adapter is saved in the `peft` format.

What it takes (src/peftkit/model.py): the Trainer keeps only the dataset columns that
`inspect.signature(model.forward)` names and finds the label column through the model class's
`forward`; `PeftModel.forward` therefore carries the wrapped model's signature (per instance) and names
`labels`. Gradient checkpointing goes through to the wrapped model, which makes its inputs require
grad. Note: `Trainer.save_model` recognises only `transformers`/`peft` classes by `isinstance`; for any
other model (a peftkit one included) it writes the whole state dict, so save the adapter with
`model.save_pretrained(dir)`, as tested here.
"""

from __future__ import annotations

import json

import datasets
import pytest
import torch
from tiny_assets import assert_loads_in_peftkit_and_peft, tiny_model_dir, tiny_tokenizer
from transformers import AutoModelForCausalLM, DataCollatorForLanguageModeling, Trainer, TrainingArguments

import peftkit as pk

pytestmark = pytest.mark.usefixtures("torch_single_thread")


# transformers 5.23 renamed TrainingArguments.gradient_checkpointing (the old name warns)
CHECKPOINTING_ARGUMENT = ("activation_checkpointing" if "activation_checkpointing" in TrainingArguments.__dataclass_fields__
                          else "gradient_checkpointing")


def make_trainer(tmp_path, model, steps: int, **args) -> Trainer:
    tok = tiny_tokenizer()
    texts = [f"The number {i} is {'even' if i % 2 == 0 else 'odd'}." for i in range(16)]
    ds = datasets.Dataset.from_dict({"text": texts}).map(lambda b: tok(b["text"]), batched=True, remove_columns=["text"])
    arguments = TrainingArguments(output_dir=str(tmp_path / "trainer"), max_steps=steps, per_device_train_batch_size=4,
                                  learning_rate=1e-2, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True,
                                  seed=0, disable_tqdm=True, **args)
    return Trainer(model=model, args=arguments, train_dataset=ds, eval_dataset=ds.select(range(4)),
                   data_collator=DataCollatorForLanguageModeling(tok, mlm=False))


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "gradient_checkpointing"])
def test_trains_under_trainer_and_saves_a_peft_adapter(tmp_path, checkpointing):
    base_dir = tiny_model_dir(tmp_path)
    model = pk.get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir),
                              pk.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = make_trainer(tmp_path, model, steps=8, **{CHECKPOINTING_ARGUMENT: checkpointing})
    assert trainer.label_names == ["labels"]  # found through PeftModel.forward
    trainer.train()
    assert any(getattr(m, "gradient_checkpointing", False) for m in model.modules()) == checkpointing
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    assert len(losses) == 8 and losses[-1] < 0.8 * losses[0], losses
    assert "eval_loss" in trainer.evaluate()

    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed and all("lora_" in n for n in changed)  # the base model is untouched
    lora_b = {n for n in before if "lora_B" in n}
    assert lora_b <= changed  # every adapted layer trained, checkpointed blocks included

    out = tmp_path / "adapter"
    model.save_pretrained(out)
    assert json.loads((out / "adapter_config.json").read_text())["peft_type"] == "LORA"
    model.eval()
    ids = {"input_ids": torch.randint(0, 200, (2, 9), generator=torch.Generator().manual_seed(0))}
    with torch.no_grad():
        trained = model(**ids).logits
    reloaded = assert_loads_in_peftkit_and_peft(out, lambda: AutoModelForCausalLM.from_pretrained(base_dir), ids)
    torch.testing.assert_close(reloaded, trained, atol=1e-5, rtol=0)


def test_forward_signature_is_the_wrapped_models(tmp_path):
    import inspect

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir(tmp_path))
    model = pk.get_peft_model(base, pk.LoraConfig(r=2, target_modules=["q_proj"]))
    params = inspect.signature(model.forward).parameters
    assert list(params)[:2] == ["input_ids", "attention_mask"] and "labels" in params and "adapter_names" in params
    ids = torch.randint(0, 200, (1, 6))
    out = model(input_ids=ids, labels=ids)  # keyword and positional calls still go through
    assert out.loss is not None and torch.equal(model(ids).logits, out.logits)
