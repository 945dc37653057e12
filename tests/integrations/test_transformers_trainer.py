"""``transformers.Trainer`` with peftkit models (tiny Llama, a few CPU steps).

A plain Trainer writes a peftkit model as its whole state dict; :class:`AdapterTrainer` writes the
adapter in peft's format, resumes from such checkpoints and reloads the best one.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import peft
import pytest
import torch
import transformers
from safetensors.torch import load_file
from tiny_models import example_inputs, model_outputs, tiny_bert_classifier, tiny_llama

import peftkit as pk
from peftkit.checkpoint import WEIGHTS_NAME
from peftkit.integrations.transformers import AdapterTrainer, AdapterTrainerMixin, check_trainer_hooks

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))  # the tiny tokenizer
from tiny_assets import tiny_tokenizer  # noqa: E402

pytestmark = [
    pytest.mark.usefixtures("torch_single_thread"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]

# the adapter and its model card (peft writes the README.md too)
ADAPTER_FILES = {"adapter_config.json", WEIGHTS_NAME, "README.md"}


def dataset(n: int = 8) -> list[dict]:
    ids = torch.randint(3, 100, (n, 8), generator=torch.Generator().manual_seed(0))
    return [{"input_ids": row, "labels": row} for row in ids]


def lora_model(seed: int = 0, **extra) -> pk.PeftModel:
    torch.manual_seed(seed)  # lora_A's init draws from the global generator
    config = pk.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM", **extra)
    return pk.get_peft_model(tiny_llama(), config)


def training_args(out: Path, steps: int = 3, **extra) -> transformers.TrainingArguments:
    kwargs = dict(
        output_dir=str(out), max_steps=steps, per_device_train_batch_size=4, learning_rate=1e-2, save_steps=2,
        use_cpu=True, report_to=[], disable_tqdm=True, logging_steps=1, seed=0,
    )
    kwargs.update(extra)
    return transformers.TrainingArguments(**kwargs)


def adapter(model: pk.PeftModel, name: str = "default") -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in pk.get_peft_model_state_dict(model, adapter_name=name).items()}


def assert_same(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_plain_trainer_writes_the_whole_model(tmp_path):
    """Why AdapterTrainer exists: Trainer only recognises its own and peft's model classes."""
    model = lora_model()
    trainer = transformers.Trainer(model=model, args=training_args(tmp_path / "run", steps=1), train_dataset=dataset())
    trainer.train()
    trainer.save_model(tmp_path / "final")
    saved = load_file(tmp_path / "final" / "model.safetensors")
    assert "base_model.model.model.layers.0.mlp.up_proj.weight" in saved  # frozen base weights too


def test_plain_trainer_recommended_pattern(tmp_path):
    """With a plain Trainer: save the adapter yourself; its full checkpoints still resume."""
    model = lora_model()
    trainer = transformers.Trainer(model=model, args=training_args(tmp_path / "run"), train_dataset=dataset())
    trainer.train()
    model.save_pretrained(tmp_path / "adapter")
    assert set(os.listdir(tmp_path / "adapter")) == ADAPTER_FILES
    resumed = lora_model(seed=1)
    transformers.Trainer(model=resumed, args=training_args(tmp_path / "run"), train_dataset=dataset()).train(
        resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-2")
    )
    assert_same(adapter(resumed), adapter(model))


def test_save_model_and_checkpoints_hold_the_adapter_only(tmp_path):
    model = lora_model()
    before = adapter(model)
    trainer = AdapterTrainer(model=model, args=training_args(tmp_path / "run"), train_dataset=dataset())
    trainer.train()
    trainer.save_model(tmp_path / "final")

    assert set(os.listdir(tmp_path / "final")) == ADAPTER_FILES | {"training_args.bin"}
    checkpoint_files = set(os.listdir(tmp_path / "run" / "checkpoint-2"))
    assert ADAPTER_FILES <= checkpoint_files and "model.safetensors" not in checkpoint_files
    trained = adapter(model)
    assert not torch.equal(trained["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"],
                           before["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"])
    assert_same(load_file(tmp_path / "final" / WEIGHTS_NAME), trained)

    inputs = example_inputs("llama")
    want = model_outputs(model.eval(), inputs)["logits"]
    for lib in (pk, peft):
        loaded = lib.PeftModel.from_pretrained(tiny_llama(), tmp_path / "final")
        torch.testing.assert_close(model_outputs(loaded, inputs)["logits"], want, atol=1e-5, rtol=1e-5)


def test_save_model_writes_the_tokenizer_beside_the_adapter(tmp_path):
    trainer = AdapterTrainer(model=lora_model(), args=training_args(tmp_path / "run"), processing_class=tiny_tokenizer())
    trainer.save_model(tmp_path / "final")
    files = set(os.listdir(tmp_path / "final"))
    assert ADAPTER_FILES <= files and "tokenizer.json" in files and "model.safetensors" not in files


def test_resume_from_an_adapter_checkpoint_continues_exactly(tmp_path):
    model = lora_model()
    AdapterTrainer(model=model, args=training_args(tmp_path / "run"), train_dataset=dataset()).train()
    at_step_2 = load_file(tmp_path / "run" / "checkpoint-2" / WEIGHTS_NAME)

    resumed = lora_model(seed=1)  # other initial values: only the checkpoint can make them match
    trainer = AdapterTrainer(model=resumed, args=training_args(tmp_path / "run"), train_dataset=dataset())
    trainer._load_from_checkpoint(str(tmp_path / "run" / "checkpoint-2"))
    assert_same(adapter(resumed), at_step_2)
    assert all(p.requires_grad for n, p in resumed.named_parameters() if "lora_" in n)  # still training
    trainer.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-2"))
    assert trainer.state.global_step == 3
    assert_same(adapter(resumed), adapter(model))


def test_best_checkpoint_is_reloaded(tmp_path):
    model = lora_model()
    args = training_args(tmp_path / "run", eval_strategy="steps", eval_steps=1, save_steps=1,
                         load_best_model_at_end=True, metric_for_best_model="loss", learning_rate=0.5)
    trainer = AdapterTrainer(model=model, args=args, train_dataset=dataset(), eval_dataset=dataset(4))
    trainer.train()
    best, last = trainer.state.best_model_checkpoint, tmp_path / "run" / "checkpoint-3"
    assert best is not None and Path(best) != last  # so reloading it is visible
    assert_same(adapter(model), load_file(Path(best) / WEIGHTS_NAME))
    assert not torch.equal(*(load_file(p / WEIGHTS_NAME)["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"]
                             for p in (Path(best), last)))


def test_several_adapters_are_saved_and_resumed(tmp_path):
    model = lora_model()
    model.add_adapter("other", pk.LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False))
    AdapterTrainer(model=model, args=training_args(tmp_path / "run"), train_dataset=dataset()).train()
    checkpoint = tmp_path / "run" / "checkpoint-2"
    assert ADAPTER_FILES - {"README.md"} <= set(os.listdir(checkpoint / "other"))  # the card is written once, at the top

    resumed = lora_model(seed=1)
    resumed.add_adapter("other", pk.LoraConfig(r=2, target_modules=["q_proj"]))
    AdapterTrainer(model=resumed, args=training_args(tmp_path / "run"), train_dataset=dataset())._load_from_checkpoint(str(checkpoint))
    assert_same(adapter(resumed, "other"), load_file(checkpoint / "other" / WEIGHTS_NAME))
    assert_same(adapter(resumed), load_file(checkpoint / WEIGHTS_NAME))


def test_resume_with_other_adapters_is_refused(tmp_path):
    model = lora_model()
    AdapterTrainer(model=model, args=training_args(tmp_path / "run", steps=2), train_dataset=dataset()).train()
    other = lora_model()
    other.add_adapter("extra", pk.LoraConfig(r=2, target_modules=["q_proj"]))
    trainer = AdapterTrainer(model=other, args=training_args(tmp_path / "run"), train_dataset=dataset())
    with pytest.raises(pk.CheckpointError, match=r"missing: \['extra'\]"):
        trainer._load_from_checkpoint(str(tmp_path / "run" / "checkpoint-2"))


def test_other_models_are_left_to_trainer(tmp_path):
    model = tiny_bert_classifier()
    data = [{"input_ids": r, "labels": torch.tensor(i % 3)} for i, r in enumerate(torch.randint(3, 100, (4, 8)))]
    trainer = AdapterTrainer(model=model, args=training_args(tmp_path / "run", steps=1), train_dataset=data)
    trainer.train()
    trainer.save_model(tmp_path / "final")
    assert {"model.safetensors", "config.json"} <= set(os.listdir(tmp_path / "final"))


def test_mixin_order_and_trainer_hooks_are_checked():
    check_trainer_hooks(AdapterTrainer)  # this transformers version has what the mixin overrides

    class Backwards(transformers.Trainer, AdapterTrainerMixin):
        pass

    with pytest.raises(TypeError, match="AdapterTrainerMixin before the Trainer"):
        check_trainer_hooks(Backwards)


def test_label_smoothing_shifts_labels_for_a_causal_lm_as_for_peft(tmp_path):
    # Trainer shifts labels by the model's class name; peftkit's must get the causal LM's treatment
    batch = transformers.default_data_collator(dataset(4))
    args = training_args(tmp_path, label_smoothing_factor=0.1)
    ours = lora_model(init_lora_weights=False)
    theirs = peft.get_peft_model(tiny_llama(), peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                              task_type="CAUSAL_LM"))
    peft.set_peft_model_state_dict(theirs, pk.get_peft_model_state_dict(ours))
    torch.manual_seed(0)
    our_loss = AdapterTrainer(model=ours, args=args).compute_loss(ours, dict(batch))
    their_loss = transformers.Trainer(model=theirs, args=args).compute_loss(theirs, dict(batch))
    torch.testing.assert_close(our_loss, their_loss, atol=1e-5, rtol=1e-5)
    smoother = transformers.trainer_pt_utils.LabelSmoother(epsilon=0.1)
    with torch.no_grad():
        logits = ours(input_ids=batch["input_ids"])
    unshifted = smoother(logits, batch["labels"], shift_labels=False)
    assert (our_loss - unshifted).abs() > 1e-3  # the plain Trainer's result for a peftkit model


def test_qlora_model_loaded_by_transformers_trains(tmp_path):
    """transformers refuses to train a quantized model it sees no adapters on; AdapterTrainer lets
    it see a peftkit model's (a plain Trainer raises "purely quantized models")."""
    from peftkit.models import load_model

    pytest.importorskip("bitsandbytes")
    tiny_llama().save_pretrained(tmp_path / "base")
    base = load_model(tmp_path / "base", quantization={"backend": "bnb", "bits": 4, "compute_dtype": "float32"})
    assert base.hf_quantizer is not None  # loaded quantized by transformers itself
    model = pk.get_peft_model(base, pk.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    before = adapter(model)
    trainer = AdapterTrainer(model=model, args=training_args(tmp_path / "out", steps=2), train_dataset=dataset())
    trainer.train()
    trainer.save_model(tmp_path / "saved")
    assert set(os.listdir(tmp_path / "saved")) >= ADAPTER_FILES
    assert any(not torch.equal(v, before[k]) for k, v in adapter(model).items())
