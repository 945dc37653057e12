"""``add_weighted_adapter`` beside the real ``peft``: the same adapter where ``peft`` is right (every
combination type on every LoRA layer type, DARE with the same seed), and the exact weighted sum of
the adapters' weight changes where ``peft`` is wrong, with ``peft``'s error measured."""

from __future__ import annotations

import peft
import pytest
import torch
from combination_checks import build, combination_error
from toy_models import TOYS
from upstream_bugs import PEFT_WEIGHTED_ADAPTER

import peftkit as pk
from peftkit.arithmetic import COMBINATION_TYPES

pytestmark = [pytest.mark.usefixtures("torch_single_thread"), pytest.mark.filterwarnings("ignore::UserWarning")]
SVD_TYPES = [t for t in COMBINATION_TYPES if t.endswith("svd")]


def _combined_outputs(lib, toy, combination_type):
    configs = {"a": lib.LoraConfig(r=4, lora_alpha=8, target_modules=toy.targets),
               "b": lib.LoraConfig(r=4, lora_alpha=16, target_modules=toy.targets)}
    model = build(lib, toy.model(), configs)
    torch.manual_seed(7)  # DARE draws from the global generator, after the new adapter is made
    density = None if combination_type in ("svd", "cat", "linear") else 0.5
    model.add_weighted_adapter(["a", "b"], [0.7, -0.4], "ab", combination_type=combination_type, density=density)
    model.set_adapter("ab")
    with torch.no_grad():
        return model(toy.inputs())


@pytest.mark.parametrize("combination_type", COMBINATION_TYPES)
@pytest.mark.parametrize("toy", TOYS, ids=[t.name for t in TOYS])
def test_same_adapter_as_peft(toy, combination_type):
    ours = _combined_outputs(pk, toy, combination_type)
    if toy.name == "conv1d" and combination_type in SVD_TYPES and PEFT_WEIGHTED_ADAPTER.present:
        with pytest.raises(RuntimeError, match="at least three dimensions"):  # peft svd()s the 3-D kernel
            _combined_outputs(peft, toy, combination_type)
        return
    torch.testing.assert_close(ours, _combined_outputs(peft, toy, combination_type), rtol=1e-5, atol=1e-6)


def _lora(lib, **kw):
    return lib.LoraConfig(**{"r": 4, "lora_alpha": 8, "target_modules": ["lin1", "lin2"], **kw})


def _ia3(lib, targets=("lin1", "lin2"), feedforward=("lin2",)):
    return lib.IA3Config(target_modules=list(targets), feedforward_modules=list(feedforward))


# case -> (configs for a library, weights, add_weighted_adapter arguments); the linear toy model
WRONG_IN_PEFT = {
    "rslora_cat": (lambda L: {"a": _lora(L, use_rslora=True), "b": _lora(L, use_rslora=True, r=2)}, [0.7, 0.3],
                   {"combination_type": "cat"}),
    # (svd at rank 8 on lin1 (16 x 8) alone: full rank, exact; peft cannot go above a layer's size)
    "rslora_svd": (lambda L: {"a": _lora(L, use_rslora=True, target_modules=["lin1"]),
                              "b": _lora(L, use_rslora=True, target_modules=["lin1"])}, [0.7, 0.3],
                   {"combination_type": "svd", "svd_rank": 8}),
    "rslora_single_copy": (lambda L: {"a": _lora(L, use_rslora=True)}, [1.0], {"combination_type": "svd"}),
    "dora_svd_full_rank": (lambda L: {"a": _lora(L, use_dora=True, target_modules=["lin1"]),
                                      "b": _lora(L, use_dora=True, target_modules=["lin1"])}, [0.7, 0.3],
                           {"combination_type": "svd", "svd_rank": 8}),
    "dora_single_copy": (lambda L: {"a": _lora(L, use_dora=True, target_modules=["lin1"])}, [1.0],
                         {"combination_type": "svd", "svd_rank": 8}),
    "ia3_weights_sum_2": (lambda L: {"a": _ia3(L), "b": _ia3(L)}, [1.0, 1.0], {}),
    "ia3_negation": (lambda L: {"a": _ia3(L), "b": _ia3(L)}, [1.0, -1.0], {}),
    "ia3_other_targets": (lambda L: {"a": _ia3(L, ["lin1"], []), "b": _ia3(L)}, [0.5, 0.5], {}),
}


@pytest.mark.parametrize("case", list(WRONG_IN_PEFT))
def test_exact_where_peft_is_wrong(case):
    configs, weights, kwargs = WRONG_IN_PEFT[case]
    base = TOYS[0].model
    assert combination_error(pk, base(), configs(pk), weights, **kwargs) < 1e-5
    if PEFT_WEIGHTED_ADAPTER.present:  # documented in docs/adapter-arithmetic.md with these numbers
        assert combination_error(peft, base(), configs(peft), weights, **kwargs) > 0.2


@pytest.mark.parametrize("kwargs", [{"combination_type": "svd", "svd_rank": 12}, {"combination_type": "dare_linear", "density": 0.0}])
def test_works_where_peft_fails(kwargs):
    """svd at a rank above a layer's size (peft's factors do not fit each other); DARE at density 0
    (peft divides 0 by 0 and returns NaN; everything dropped is no change)."""
    configs = lambda L: {"a": _lora(L), "b": _lora(L)}  # noqa: E731
    weights = [0.7, 0.3]
    if kwargs["combination_type"] == "svd":
        assert combination_error(pk, TOYS[0].model(), configs(pk), weights, **kwargs) < 1e-5
        if PEFT_WEIGHTED_ADAPTER.present:
            with pytest.raises(RuntimeError, match="cannot be multiplied"):
                combination_error(peft, TOYS[0].model(), configs(peft), weights, **kwargs)
        return
    model = build(pk, TOYS[0].model(), configs(pk))
    model.add_weighted_adapter(["a", "b"], weights, "none", **kwargs)
    assert all(float(p.abs().sum()) == 0 for n, p in model.named_parameters() if ".none." in n)


def test_ia3_equals_peft_when_weights_sum_to_one_on_the_same_modules():
    assert combination_error(pk, TOYS[0].model(), {"a": _ia3(pk), "b": _ia3(pk)}, [0.7, 0.3]) < 1e-6
    assert combination_error(peft, TOYS[0].model(), {"a": _ia3(peft), "b": _ia3(peft)}, [0.7, 0.3]) < 1e-6


def test_combined_adapter_reloads_in_both_libraries(tmp_path):
    """rank_pattern survives (peft #3737: its element-wise types write a rank the config does not say)."""
    configs = {"a": _lora(pk, rank_pattern={"lin1": 2}, alpha_pattern={"lin2": 3}),
               "b": _lora(pk, rank_pattern={"lin1": 2}, lora_alpha=5)}
    model = build(pk, TOYS[0].model(), configs)
    x = TOYS[0].inputs()
    for combination_type in ("linear", "cat", "svd"):
        model.add_weighted_adapter(["a", "b"], [0.6, -0.5], combination_type, combination_type=combination_type, svd_rank=6)
        model.set_adapter(combination_type)
        with torch.no_grad():
            expected = model(x)
        model.save_pretrained(tmp_path / combination_type, selected_adapters=[combination_type])
        folder = tmp_path / combination_type / combination_type
        for lib in (pk, peft):
            again = lib.PeftModel.from_pretrained(TOYS[0].model(), str(folder))
            with torch.no_grad():
                torch.testing.assert_close(again(x), expected, rtol=1e-5, atol=1e-6)
