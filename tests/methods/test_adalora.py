"""AdaLoRA: the adapter contract, the rank allocator side by side with peft's (same gradients, same
masks), pruned adapters moving both ways between peftkit and peft, training from YAML with the rank
budget shrinking, and clear errors."""

from __future__ import annotations

import json

import peft
import pytest
import torch
import yaml
from contract_helpers import ATOL, train_losses
from method_contract import MethodContract, assert_interop_both_ways, hf_subject
from safetensors.torch import load_file
from tiny_assets import assert_loads_in_peftkit_and_peft, the_run, tiny_model_dir, write_config
from tiny_models import example_inputs, make_model, model_outputs, randomize_lora_weights

import peftkit as pk
from peftkit.cli import main
from peftkit.methods.adalora import apply_rank_pattern, orthogonal_regularization, update_and_allocate
from peftkit.train.config import config_hash, load_run_config

pytestmark = [pytest.mark.usefixtures("torch_single_thread"),
              pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning"),
              pytest.mark.filterwarnings("ignore:.*LoRA tensor.*have invalid shape"),  # peft, on rank-0 layers
              pytest.mark.filterwarnings("ignore:The following rank_pattern keys did not match")]  # peft, ditto

TARGETS = {"llama": ["q_proj", "v_proj", "gate_proj"], "gpt2": ["c_attn", "c_fc"]}
FAMILIES = tuple(TARGETS)
SCHEDULE = dict(init_r=6, target_r=2, total_step=8, tinit=1, tfinal=2, deltaT=1, task_type="CAUSAL_LM")


def ada(family: str, **kw) -> dict:
    return {"target_modules": TARGETS[family], "total_step": 100, "init_r": 4, "target_r": 2, **kw}


class TestAdaLoraContract(MethodContract):
    """Identity at init, disable, merge/unmerge, save/load, training, mixed batches, delete, two adapters."""

    SUBJECTS = [hf_subject(family, TARGETS[family]) for family in FAMILIES]
    marker = "lora_"

    def config(self, subject, **kw) -> pk.AdaLoraConfig:
        return pk.AdaLoraConfig(**{"target_modules": subject.targets, "total_step": 100, "init_r": 4, "target_r": 2, **kw})

    def identity_config(self, subject) -> pk.AdaLoraConfig:
        return self.config(subject)  # E starts at zero

    def adapted(self, subject, name="default", seed=0, model=None, **kw) -> pk.PeftModel:
        """Trained-like values: A, E and B drawn from N(0, 0.1^2). A second adapter is added for
        inference: AdaLoRA trains one adapter at a time (peft refuses a second trainable one)."""
        if model is not None:
            kw.setdefault("inference_mode", True)
        model = super().adapted(subject, name, seed, model, **kw)
        randomize_lora_weights(model, seed=seed, patterns=tuple(f"{t}.{name}" for t in ("lora_A", "lora_B", "lora_E")))
        return model


def adapted(family: str, name: str = "default", seed: int = 0, **kw) -> pk.PeftModel:
    return TestAdaLoraContract().adapted(TestAdaLoraContract.SUBJECTS[FAMILIES.index(family)], name, seed, **kw)


def logits(model: torch.nn.Module, family: str) -> torch.Tensor:
    # no labels: peft's AdaLoRA causal-LM model fails on a loss when loaded for inference (peft 0.21.2)
    return model_outputs(model, example_inputs(family, batch_size=3, with_labels=False))["logits"]


def test_ranknum_is_not_saved(tmp_path):
    adapted("llama").save_pretrained(tmp_path)
    assert "ranknum" not in " ".join(load_file(tmp_path / "adapter_model.safetensors"))  # as in peft


# ------------------------------------------------------------------------------ the rank allocator vs peft
def train_side_by_side(steps: int = 8):
    """peft and peftkit from the same random adapter, trained on the same batch with SGD, each
    allocating ranks after every step; yields (step, peft model, peftkit model) after each step."""
    theirs = peft.get_peft_model(make_model("llama"), peft.AdaLoraConfig(target_modules=TARGETS["llama"], **SCHEDULE))
    randomize_lora_weights(theirs, seed=3)
    ours = pk.get_peft_model(make_model("llama"), pk.AdaLoraConfig(target_modules=TARGETS["llama"], **SCHEDULE))
    pk.set_peft_model_state_dict(ours, peft.get_peft_model_state_dict(theirs))
    batch = example_inputs("llama")
    optimizers = [torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1) for m in (theirs, ours)]
    for step in range(steps):
        their_loss = theirs(**batch).loss  # peft's causal-LM model adds the orthogonal regulariser in forward
        our_loss = ours(**batch).loss + orthogonal_regularization(ours)
        torch.testing.assert_close(our_loss, their_loss, atol=1e-6, rtol=0)
        for loss, opt in zip((their_loss, our_loss), optimizers):
            loss.backward()
            opt.step()
        theirs.base_model.update_and_allocate(step)
        ours.base_model.update_and_allocate(step)  # peft's spelling works here too
        for opt in optimizers:
            opt.zero_grad()
        yield step, theirs, ours


def strip_adapter_name(pattern: dict) -> dict:
    return {k.removesuffix(".default"): v for k, v in pattern.items()}


def test_allocator_matches_peft_step_by_step():
    masked_steps = 0
    for step, theirs, ours in train_side_by_side():
        their_pattern = theirs.peft_config["default"].rank_pattern
        our_pattern = ours.base_model.rank_allocators["default"].rank_pattern
        if their_pattern is None:
            assert our_pattern is None, step
            continue
        masked_steps += 1
        assert our_pattern == strip_adapter_name(their_pattern), step
        # (live parameters: peft's state dict would already be cut down to the mask)
        theirs_E, ours_E = ({k: v.detach() for k, v in m.named_parameters() if ".lora_E." in k} for m in (theirs, ours))
        assert theirs_E.keys() == ours_E.keys()
        for key in theirs_E:  # the same entries zeroed, the same values elsewhere
            assert torch.equal(ours_E[key] == 0, theirs_E[key] == 0), (step, key)
            torch.testing.assert_close(ours_E[key], theirs_E[key], atol=1e-6, rtol=0)
    assert masked_steps == 6  # steps 2..7: budget phase after tinit=1, final mask at 6, re-applied at 7
    kept = [sum(v) for v in our_pattern.values()]
    assert sum(kept) == SCHEDULE["target_r"] * len(kept) and min(kept) < SCHEDULE["init_r"]


@pytest.fixture(scope="module")
def pruned_pair(tmp_path_factory):
    """Folders of the same adapter pruned by peft and by peftkit, and the two live models."""
    root = tmp_path_factory.mktemp("pruned")
    *_, (_, theirs, ours) = train_side_by_side()
    theirs.save_pretrained(root / "peft")
    apply_rank_pattern(ours)
    ours.save_pretrained(root / "peftkit")
    return root, theirs, ours


def test_pruned_adapters_are_written_alike(pruned_pair):
    root, _, _ = pruned_pair
    configs = [json.loads((root / who / "adapter_config.json").read_text()) for who in ("peft", "peftkit")]
    assert configs[0]["rank_pattern"] == configs[1]["rank_pattern"]
    tensors = [load_file(root / who / "adapter_model.safetensors") for who in ("peft", "peftkit")]
    assert {k: v.shape for k, v in tensors[0].items()} == {k: v.shape for k, v in tensors[1].items()}
    for key, value in tensors[0].items():
        torch.testing.assert_close(tensors[1][key], value, atol=1e-5, rtol=0)
    assert any(v.shape[0] < SCHEDULE["init_r"] for k, v in tensors[1].items() if k.endswith("lora_E"))


@pytest.mark.parametrize("written_by", ["peft", "peftkit"])
def test_pruned_adapter_loads_both_ways(pruned_pair, written_by):
    root, theirs_live, ours_live = pruned_pair
    folder = root / written_by
    ours = pk.PeftModel.from_pretrained(make_model("llama"), folder)
    theirs = peft.PeftModel.from_pretrained(make_model("llama"), folder)
    expected = logits(theirs, "llama")
    assert not torch.allclose(expected, logits(make_model("llama"), "llama"), atol=1e-3)
    torch.testing.assert_close(logits(ours, "llama"), expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(logits(ours_live, "llama"), expected, atol=ATOL, rtol=0)
    assert set(pk.get_peft_model_state_dict(ours)) == set(peft.get_peft_model_state_dict(theirs))
    assert ours.peft_config["default"].rank_pattern == theirs.peft_config["default"].rank_pattern
    torch.testing.assert_close(logits(ours.merge_and_unload(), "llama"), logits(theirs.merge_and_unload(), "llama"),
                               atol=ATOL, rtol=0)


# ------------------------------------------------------------------------------ interop, unpruned
@pytest.mark.parametrize("family", FAMILIES)
def test_interop_both_ways(family, tmp_path):
    # random A, E, B: not the identity; GPT-2's Conv1D stores weights (in, out)
    kw = ada(family, init_lora_weights=False, lora_dropout=0.1, fan_in_fan_out=family == "gpt2")
    assert_interop_both_ways(TestAdaLoraContract.SUBJECTS[FAMILIES.index(family)], pk.AdaLoraConfig,
                             peft.AdaLoraConfig, kw, tmp_path)
    assert pk.PeftConfig.from_pretrained(tmp_path / "peft").total_step == 100


# ------------------------------------------------------------------------------ training from YAML
def test_train_from_yaml_shrinks_the_rank_budget(tmp_path):
    adapter = {"method": "adalora", "init_r": 8, "target_r": 4, "total_step": 10, "tinit": 2, "tfinal": 2,
               "lora_alpha": 16, "target_modules": "all-linear"}
    losses = train_losses(tmp_path, adapter, max_steps=10, lr=3e-2, save_steps=4)
    assert len(losses) == 10 and losses[-1] < losses[0]
    folder = the_run(tmp_path) / "adapter"
    pattern = json.loads((folder / "adapter_config.json").read_text())["rank_pattern"]
    assert len(pattern) == 14  # 7 projections x 2 layers
    kept = [sum(flags) for flags in pattern.values()]
    assert all(len(flags) == 8 for flags in pattern.values()) and sum(kept) == 4 * 14 and len(set(kept)) > 1
    tensors = load_file(folder / "adapter_model.safetensors")
    assert sorted(v.shape[0] for k, v in tensors.items() if k.endswith("lora_E")) == sorted(kept)
    # a mid-run checkpoint keeps the full init_r (its dropped singular values are zero): it resumes as is
    step4 = load_file(the_run(tmp_path) / "checkpoints" / "step-00004" / "adapter" / "adapter_model.safetensors")
    assert all(v.shape[0] == 8 for k, v in step4.items() if k.endswith("lora_E"))
    from transformers import AutoModelForCausalLM

    tokens = torch.tensor([[5, 6, 7, 8, 9]])
    assert_loads_in_peftkit_and_peft(folder, lambda: AutoModelForCausalLM.from_pretrained(tiny_model_dir(tmp_path)),
                                     {"input_ids": tokens})


def adalora_run(tmp_path, adapter: dict, **train):
    config = write_config(tmp_path, train={"save_steps": 3, "eval_steps": 100, **train}, eval={"metrics": ["loss"]})
    raw = yaml.safe_load(config.read_text())
    raw["adapter"] = {"method": "adalora", "init_r": 4, "target_r": 2, "target_modules": ["q_proj", "v_proj"], **adapter}
    config.write_text(yaml.safe_dump(raw))
    return config


@pytest.mark.parametrize("train, steps", [({"max_steps": 6}, 6),
                                          ({"max_steps": None, "epochs": 2, "grad_accum": 2}, 4)])  # 2 x ceil(3 / 2)
def test_a_run_fills_total_step_from_its_steps(tmp_path, train, steps):
    """Left out of the adapter section, total_step is the run's optimizer steps (train.max_steps, or
    epochs x batches / grad_accum) in every adapter_config.json the run writes, so peft loads them;
    the run's config.yaml and its hash keep what the user wrote."""
    config = adalora_run(tmp_path, {"tinit": 1}, **train)
    cfg = load_run_config(config)
    assert cfg.adapter["total_step"] is None
    assert main(["train", str(config)]) == 0
    run = the_run(tmp_path)
    assert yaml.safe_load((run / "config.yaml").read_text())["adapter"]["total_step"] is None
    assert json.loads((run / "run.json").read_text())["config_hash"] == config_hash(cfg)
    for folder in (run / "adapter", run / "checkpoints" / "step-00003" / "adapter"):
        assert json.loads((folder / "adapter_config.json").read_text())["total_step"] == steps
    assert peft.PeftConfig.from_pretrained(run / "adapter").total_step == steps
    from transformers import AutoModelForCausalLM

    assert_loads_in_peftkit_and_peft(run / "adapter", lambda: AutoModelForCausalLM.from_pretrained(tiny_model_dir(tmp_path)),
                                     {"input_ids": torch.tensor([[5, 6, 7, 8, 9]])})


def test_a_written_total_step_is_kept_with_a_warning(tmp_path):
    config = adalora_run(tmp_path, {"total_step": 20}, max_steps=6)
    with pytest.warns(UserWarning, match=r"adapter\.total_step is 20 but the run takes 6 optimizer steps"):
        assert main(["train", str(config)]) == 0
    saved = json.loads((the_run(tmp_path) / "adapter" / "adapter_config.json").read_text())
    assert saved["total_step"] == 20


def test_a_schedule_too_long_for_the_run_is_an_error_naming_the_field(tmp_path, capsys):
    config = adalora_run(tmp_path, {"tinit": 5, "tfinal": 2}, max_steps=6)
    with pytest.raises(pk.ConfigError, match=r"adapter\.tinit.*need tinit \(5\) < total_step - tfinal \(6 - 2\)"):
        load_run_config(config)  # max_steps is known before the data: checked with the config
    # counted in epochs, the steps are known once the data is read: checked before the first step
    config = adalora_run(tmp_path, {"tinit": 5, "tfinal": 2}, max_steps=None, epochs=2)
    assert main(["train", str(config)]) == 2
    assert "does not fit the run's 6 optimizer steps" in capsys.readouterr().err
    assert json.loads((the_run(tmp_path) / "run.json").read_text())["status"] == "failed"


def test_the_python_api_still_needs_total_step():
    with pytest.raises(pk.ConfigError, match=r"total_step.*number of training steps.*peftkit train fills it"):
        pk.get_peft_model(make_model("llama"), pk.AdaLoraConfig(target_modules=["q_proj"]))


def test_allocator_state_round_trips_and_a_wrong_one_is_refused():
    model = adapted("llama", **SCHEDULE)
    for step in (1, 2, 3):
        model(**example_inputs("llama")).loss.backward()
        update_and_allocate(model, step)
        model.zero_grad()
    allocator = model.base_model.rank_allocators["default"]
    saved = allocator.state_tensors()
    assert saved and any(k.startswith("rank_pattern.") and v.dtype == torch.bool for k, v in saved.items())
    fresh = adapted("llama", **SCHEDULE).base_model.rank_allocators["default"]
    fresh.load_state_tensors(saved)
    assert fresh.rank_pattern == allocator.rank_pattern
    assert all(torch.equal(fresh.state_tensors()[k], v) for k, v in saved.items())
    bad = {k: v[:1] if k.startswith("exp_avg_ipt.") else v for k, v in saved.items()}
    with pytest.raises(pk.AdapterError, match=r"exp_avg_ipt\..*does not fit adapter 'default'"):
        fresh.load_state_tensors(bad)


# ------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("kwargs, field", [
    ({"total_step": None}, "total_step"), ({"total_step": 0}, "total_step"),
    ({"target_r": 8, "init_r": 4}, "target_r"), ({"tinit": 60, "tfinal": 40}, "tinit"),
    ({"beta1": 1.0}, "beta1"), ({"orth_reg_weight": -1.0}, "orth_reg_weight"), ({"deltaT": 0}, "deltaT"),
    ({"init_lora_weights": "pissa"}, "init_lora_weights"), ({"rank_pattern": {"q_proj": 2}}, "rank_pattern"),
])
def test_bad_config_names_the_field(kwargs, field):
    with pytest.raises(pk.ConfigError, match=field):
        pk.AdaLoraConfig(**{**ada("llama"), **kwargs})


def test_unused_lora_fields_warn_and_peft_only_features_are_refused():
    with pytest.warns(UserWarning, match=r"`r` is not used in AdaLora and will be ignored. Set init_r"):
        pk.AdaLoraConfig(**ada("llama"), r=16)
    for feature in ({"use_dora": True}, {"loftq_config": {"loftq_bits": 4}}):
        with pytest.raises(pk.ConfigError, match=next(iter(feature))):
            pk.PeftConfig.from_dict({"peft_type": "ADALORA", **ada("llama"), **feature})


def test_only_linear_layers_and_the_model_is_left_as_it_was():
    model = make_model("llama")
    with pytest.raises(pk.TargetError, match=r"embed_tokens.*ADALORA cannot adapt"):
        pk.get_peft_model(model, pk.AdaLoraConfig(**ada("llama", target_modules=["embed_tokens", "q_proj"])))
    assert not any(isinstance(m, pk.AdapterLayer) for m in model.modules())


def test_allocation_after_zero_grad_is_refused_with_the_fix():
    model = adapted("llama")
    model(**example_inputs("llama")).loss.backward()
    model.zero_grad()
    with pytest.raises(pk.AdapterError, match=r"after loss.backward\(\).*before optimizer.zero_grad\(\)"):
        update_and_allocate(model, 1)


def test_inference_adapters_have_no_allocator(tmp_path):
    adapted("llama").save_pretrained(tmp_path)
    loaded = pk.PeftModel.from_pretrained(make_model("llama"), tmp_path)
    assert loaded.base_model.rank_allocators == {}
    assert float(orthogonal_regularization(loaded)) == 0.0
    trainable = pk.PeftModel.from_pretrained(make_model("llama"), tmp_path, is_trainable=True)
    assert list(trainable.base_model.rank_allocators) == ["default"]
    assert float(orthogonal_regularization(trainable).detach()) > 0


def test_a_second_trainable_adalora_adapter_is_refused_as_in_peft():
    import torch.nn as nn

    base = nn.Sequential(nn.Linear(8, 8))
    model = pk.get_peft_model(base, pk.AdaLoraConfig(target_modules=["0"], total_step=10))
    with pytest.raises(pk.AdapterError, match="AdaLoraModel supports only 1 trainable adapter"):
        model.add_adapter("b", pk.AdaLoraConfig(target_modules=["0"], total_step=10))
    assert list(model.peft_config) == ["default"]
    model.add_adapter("frozen", pk.AdaLoraConfig(target_modules=["0"], total_step=10, inference_mode=True))


def test_bias_accepts_peft_spelling_adalora_only():
    """peft reads any "<method>_only" as "the adapted layers' biases"."""
    config = pk.AdaLoraConfig(target_modules=["q_proj"], total_step=10, bias="adalora_only")
    assert config.bias == "adalora_only"
