"""TRL 1.16's trainers on peftkit models, run beside the same runs on real ``peft``.

Each pair starts from identical weights (peftkit's adapter gets peft's initial values before the
first step), trains a few CPU steps with the same seed, and must log the same losses. The saved
adapter is in peft's format. (Runs without ``peft`` installed: test_without_peft.py.)
"""

from __future__ import annotations

import datasets
import peft
import pytest
import torch
import trl
from safetensors.torch import load_file
from tiny_models import model_outputs

import peftkit as pk
from peftkit.checkpoint import WEIGHTS_NAME
from peftkit.integrations import trl as pk_trl
from trl_setup import DATA, TOKENIZER, base_model, logged, trainer_for

pytestmark = [
    pytest.mark.usefixtures("torch_single_thread"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]


def same_start(ours, theirs) -> None:
    """Give peftkit's adapter peft's initial values (the two draw their random init differently)."""
    pk.set_peft_model_state_dict(ours.model, peft.get_peft_model_state_dict(theirs.model))


@pytest.mark.parametrize("task", ["sft", "dpo", "grpo", "rloo"])
def test_trainer_matches_peft(task, tmp_path):
    theirs = trainer_for(task, peft, tmp_path / "peft")
    ours = trainer_for(task, pk, tmp_path / "peftkit")
    assert isinstance(ours.model, pk.PeftModelForCausalLM)
    same_start(ours, theirs)
    torch.manual_seed(0)
    theirs.train()
    torch.manual_seed(0)
    ours.train()
    got, want = logged(ours), logged(theirs)
    assert got.keys() == want.keys() and len(got["loss"]) == 3
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=2e-3, abs=1e-5), key


@pytest.mark.parametrize("task", ["sft", "dpo", "grpo"])
def test_save_model_writes_an_adapter_peft_loads(task, tmp_path):
    trainer = trainer_for(task, pk, tmp_path / "run", steps=1)
    trainer.train()
    trainer.save_model(str(tmp_path / "final"))
    assert {"adapter_config.json", WEIGHTS_NAME} <= {p.name for p in (tmp_path / "final").iterdir()}
    assert not (tmp_path / "final" / "model.safetensors").exists()
    saved = load_file(tmp_path / "final" / WEIGHTS_NAME)
    trained = pk.get_peft_model_state_dict(trainer.model)
    assert saved.keys() == trained.keys() and all(torch.equal(saved[k], trained[k]) for k in saved)
    # (the trainer's own model runs under accelerate's autocast wrapper: compare fresh loads)
    theirs = peft.PeftModel.from_pretrained(base_model(), tmp_path / "final")
    ours = pk.PeftModel.from_pretrained(base_model(), tmp_path / "final")
    inputs = {"input_ids": torch.tensor([TOKENIZER("Is 4 even? yes")["input_ids"]])}
    torch.testing.assert_close(model_outputs(ours, inputs), model_outputs(theirs, inputs))


@pytest.mark.parametrize("task", ["dpo", "grpo"])
def test_reference_is_the_same_model_with_its_adapter_disabled(task, tmp_path):
    ours, theirs = trainer_for(task, pk, tmp_path / "ours", steps=1), trainer_for(task, peft, tmp_path / "theirs", steps=1)
    for trainer in (ours, theirs):
        assert trainer.ref_model is None and list(trainer.model.peft_config) == ["default"]
        storages = {p.untyped_storage().data_ptr() for p in trainer.model.parameters()}
        assert len(storages) == len(list(trainer.model.parameters()))  # no tensor held twice
    count = lambda t: sum(p.numel() for p in t.model.parameters())  # noqa: E731
    assert count(ours) == count(theirs)


def test_a_wrapped_model_gets_a_frozen_copy_of_its_adapter_as_reference_as_with_peft(tmp_path):
    """Handed an adapter that may already be trained, TRL keeps its starting values as the reference."""
    ours = pk.get_peft_model(base_model(), pk.LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False))
    theirs = peft.get_peft_model(base_model(), peft.LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False))
    pk.set_peft_model_state_dict(ours, peft.get_peft_model_state_dict(theirs))
    ours_trainer = trainer_for("dpo", pk, tmp_path / "ours", model=ours, steps=2)
    theirs_trainer = trainer_for("dpo", peft, tmp_path / "theirs", model=theirs, steps=2)
    assert list(ours.peft_config) == list(theirs.peft_config) == ["default", "ref"]
    ours_trainer.train()
    theirs_trainer.train()
    assert logged(ours_trainer)["loss"] == pytest.approx(logged(theirs_trainer)["loss"], rel=2e-3)
    assert logged(ours_trainer)["loss"][0] == pytest.approx(0.6931, abs=1e-4)  # policy == reference at step 0


def test_trl_s_own_trainer_recognises_a_peftkit_model(tmp_path):
    model = pk.get_peft_model(base_model(), pk.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    args = trl.SFTConfig(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=4, report_to=[], use_cpu=True, bf16=False)
    trainer = trl.SFTTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(DATA["sft"]), processing_class=TOKENIZER)
    trainer.train()  # before peftkit.integrations.trl: 'CausalLMOutputWithPast' has no attribute 'last_hidden_state'
    assert trl.trainer.sft_trainer.is_peft_model(model)
    assert not trl.trainer.sft_trainer.is_peft_model(base_model())


def test_an_adapter_on_the_lm_head_is_refused_as_with_peft(tmp_path):
    model = pk.get_peft_model(base_model(), pk.LoraConfig(r=4, target_modules=["q_proj", "lm_head"]))
    with pytest.raises(ValueError, match="lm_head"):
        trainer_for("sft", pk, tmp_path, model=model)


def test_a_model_named_by_path_with_a_peftkit_config(tmp_path):
    base_model().save_pretrained(tmp_path / "base")
    args = trl.SFTConfig(output_dir=str(tmp_path / "run"), max_steps=1, report_to=[], use_cpu=True, bf16=False)
    trainer = pk_trl.SFTTrainer(model=str(tmp_path / "base"), args=args, train_dataset=datasets.Dataset.from_list(DATA["sft"]),
                                processing_class=TOKENIZER, peft_config=pk.LoraConfig(r=2, target_modules=["q_proj"]))
    assert isinstance(trainer.model, pk.PeftModel)
    assert trainer.model.peft_config["default"].base_model_name_or_path == str(tmp_path / "base")
