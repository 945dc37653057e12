"""``combine_adapters``: combinations computed beside the model (any method with a weight change),
saved as ordinary adapter folders that peftkit and ``peft`` load with the same outputs."""

from __future__ import annotations

import peft
import pytest
import torch
from combination_checks import build, changes, relative_error, weighted_changes
from toy_models import TOYS

import peftkit as pk
from peftkit.arithmetic import combine_adapters

pytestmark = [pytest.mark.usefixtures("torch_single_thread"), pytest.mark.filterwarnings("ignore::UserWarning")]
LINEAR, CONV2D = TOYS[0], TOYS[3]


@pytest.mark.parametrize("toy", [LINEAR, CONV2D], ids=["linear", "conv2d"])
@pytest.mark.parametrize("method", ["loha", "lokr"])
def test_other_methods_combine_into_a_lora_folder_both_libraries_load(tmp_path, toy, method):
    make = {"loha": lambda: pk.LoHaConfig(r=2, alpha=4, target_modules=toy.targets),
            "lokr": lambda: pk.LoKrConfig(r=2, alpha=4, target_modules=toy.targets)}[method]
    model = build(pk, toy.model().double(), {"a": make(), "b": make()})
    weights = [0.6, -1.2]
    expected = weighted_changes(model, ["a", "b"], weights)
    before = {n: p.clone() for n, p in model.named_parameters()}
    combined = combine_adapters(model, ["a", "b"], weights, combination_type="svd", svd_rank=64)
    assert combined.config.peft_type == "LORA" and combined.report.max_error < 1e-9
    assert list(model.peft_config) == ["a", "b"] and all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    combined.save_pretrained(tmp_path / "ab")
    loaded = pk.PeftModel.from_pretrained(toy.model().double(), str(tmp_path / "ab"))
    assert relative_error(changes(loaded, "default"), expected) < 1e-6  # (adapter files hold float32)
    theirs = peft.PeftModel.from_pretrained(toy.model().double(), str(tmp_path / "ab"))
    with torch.no_grad():
        x = toy.inputs().double()
        torch.testing.assert_close(theirs(x), loaded(x))


def test_same_result_as_add_weighted_adapter_and_loads_back_into_the_model():
    configs = {n: pk.LoraConfig(r=4, lora_alpha=a, target_modules=LINEAR.targets) for n, a in (("a", 8), ("b", 16))}
    model = build(pk, LINEAR.model(), configs)
    torch.manual_seed(5)
    model.add_weighted_adapter(["a", "b"], [0.5, 0.5], "in_model", combination_type="dare_ties", density=0.6)
    torch.manual_seed(5)
    combined = combine_adapters(model, ["a", "b"], [0.5, 0.5], combination_type="dare_ties", density=0.6)
    combined.load_into(model, "loaded")
    assert relative_error(changes(model, "loaded"), changes(model, "in_model")) < 1e-7  # same DARE draws too


def test_ia3_stays_ia3_with_linear():
    configs = {n: pk.IA3Config(target_modules=LINEAR.targets, feedforward_modules=["lin2"]) for n in ("a", "b")}
    model = build(pk, LINEAR.model(), configs)
    combined = combine_adapters(model, ["a", "b"], [1.0, -0.25])
    assert combined.config.peft_type == "IA3" and combined.report.combination_type == "linear"
    combined.load_into(model, "ab")
    assert relative_error(changes(model, "ab"), weighted_changes(model, ["a", "b"], [1.0, -0.25])) < 1e-6


def test_adalora_combines_by_svd_into_lora_and_refuses_in_place():
    """AdaLoRA's change is ``B diag(E) A``: the svd types take it from ``delta_weight``; the result is
    LoRA, which an AdaLoRA model cannot hold, so ``add_weighted_adapter`` says where to go instead."""
    # the second adapter is loaded for inference: AdaLoRA trains one adapter at a time, as in peft
    make = lambda **kw: pk.AdaLoraConfig(init_r=3, target_r=2, total_step=10, target_modules=LINEAR.targets, **kw)  # noqa: E731
    model = build(pk, LINEAR.model().double(), {"a": make(), "b": make(inference_mode=True)})
    weights = [0.8, -0.3]
    combined = combine_adapters(model, ["a", "b"], weights, combination_type="svd", svd_rank=16)
    assert combined.config.peft_type == "LORA" and combined.report.max_error < 1e-9
    holder = pk.get_peft_model(LINEAR.model().double(), pk.LoraConfig(r=1, target_modules=LINEAR.targets))
    combined.load_into(holder, "ab")
    expected = weighted_changes(model, ["a", "b"], weights)
    assert relative_error(changes(holder, "ab"), expected) < 1e-6
    with pytest.raises(pk.AdapterError, match="combine_adapters"):
        model.add_weighted_adapter(["a", "b"], weights, "ab", combination_type="svd", svd_rank=16)
