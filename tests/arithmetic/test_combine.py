"""``add_weighted_adapter`` against the exact weighted sum of the adapters' weight changes (cat,
svd at full rank, one adapter, negation), the report it returns, saved modules, (IA)³, and the
refusals of undefined combinations (which leave the model as it was)."""

from __future__ import annotations

import pytest
import torch
from combination_checks import build, changes, relative_error, weighted_changes
from toy_models import TOYS

import peftkit as pk
from peftkit.errors import AdapterError, ConfigError

pytestmark = [pytest.mark.usefixtures("torch_single_thread"), pytest.mark.filterwarnings("ignore::UserWarning")]
LINEAR = TOYS[0]


def _sources(toy):
    """Adapters that differ in everything a combination must respect: rank, alpha, rsLoRA, patterns."""
    first = toy.targets[0]
    return {"a": pk.LoraConfig(r=2, lora_alpha=8, target_modules=toy.targets, rank_pattern={first: 3}),
            "b": pk.LoraConfig(r=4, lora_alpha=3, use_rslora=True, target_modules=toy.targets, alpha_pattern={first: 7}),
            "c": pk.LoraConfig(r=3, lora_alpha=5, target_modules=toy.targets[:1])}


@pytest.mark.parametrize("kwargs", [{"combination_type": "cat"}, {"combination_type": "svd", "svd_rank": 64}],
                         ids=["cat", "svd_full_rank"])
@pytest.mark.parametrize("toy", TOYS, ids=[t.name for t in TOYS])
def test_exact_types_give_the_weighted_sum_of_changes(toy, kwargs):
    model = build(pk, toy.model(), _sources(toy))
    weights = [0.8, -1.5, 0.4]
    expected = weighted_changes(model, ["a", "b", "c"], weights)
    report = model.add_weighted_adapter(["a", "b", "c"], weights, "abc", **kwargs)
    assert relative_error(changes(model, "abc"), expected) < 1e-5
    assert report.max_error < 1e-5 and set(report.errors) == set(toy.targets)
    config = model.peft_config["abc"]
    assert not config.use_rslora and config.lora_alpha == config.r  # scaling 1: the sources' is in the factors


def test_cat_ranks_are_per_module_sums_recorded_in_rank_pattern():
    model = build(pk, LINEAR.model(), _sources(LINEAR))
    report = model.add_weighted_adapter(["a", "b", "c"], [1.0, 1.0, 1.0], "abc", combination_type="cat")
    assert report.ranks == {"lin1": 3 + 4 + 3, "lin2": 2 + 4}
    config = model.peft_config["abc"]
    assert {config.r, *config.rank_pattern.values()} == {10, 6} and config.alpha_pattern == config.rank_pattern


def test_svd_below_full_rank_reports_the_truncation_error():
    model = build(pk, LINEAR.model(), _sources(LINEAR))
    weights = [1.0, 1.0, 1.0]
    expected = weighted_changes(model, ["a", "b", "c"], weights)
    report = model.add_weighted_adapter(["a", "b", "c"], weights, "abc", combination_type="svd", svd_rank=2)
    measured = relative_error(changes(model, "abc"), expected)
    assert report.ranks == {"lin1": 2, "lin2": 2}
    assert 0.01 < report.max_error and measured <= report.max_error + 1e-6


@pytest.mark.parametrize("combination_type", ["linear", "cat", "svd"])
def test_negation_subtracts_a_task(combination_type):
    """A weight of -1 undoes an adapter: a + (-1) a is no change, (-1) a is the change reversed."""
    model = build(pk, LINEAR.model(), {"a": pk.LoraConfig(r=4, target_modules=LINEAR.targets)})
    model.add_weighted_adapter(["a"], [-1.0], "minus_a", combination_type=combination_type)
    minus = changes(model, "minus_a")
    assert relative_error(minus, {k: -v for k, v in changes(model, "a").items()}) < 1e-6
    model.add_adapter("a2", pk.LoraConfig(r=4, target_modules=LINEAR.targets))
    for layer in model._adapter_layers():  # a2: a copy of a
        for (_, p), (_, q) in zip(layer.adapter_parameters("a"), layer.adapter_parameters("a2")):
            q.data.copy_(p)
    model.add_weighted_adapter(["a", "a2"], [1.0, -1.0], "nothing", combination_type=combination_type)
    assert all(float(v.abs().max()) < 1e-6 for v in changes(model, "nothing").values())


def test_linear_keeps_peft_factor_interpolation_and_measures_its_distance_from_the_sum():
    model = build(pk, LINEAR.model(), {"a": pk.LoraConfig(r=4, target_modules=LINEAR.targets),
                                      "b": pk.LoraConfig(r=4, lora_alpha=16, use_rslora=True, target_modules=LINEAR.targets)})
    report = model.add_weighted_adapter(["a", "b"], [0.5, 0.5], "ab", combination_type="linear")
    lin1 = model.base_model.model.lin1
    sa, sb = lin1.scaling["a"], lin1.scaling["b"]
    a = (0.5 * sa) ** 0.5 * lin1.lora_A["a"].weight + (0.5 * sb) ** 0.5 * lin1.lora_A["b"].weight
    b = (0.5 * sa) ** 0.5 * lin1.lora_B["a"].weight + (0.5 * sb) ** 0.5 * lin1.lora_B["b"].weight
    torch.testing.assert_close(lin1.delta_weight("ab"), b @ a)  # (B_a + B_b)(A_a + A_b): cross terms included
    assert report.max_error > 0.1  # ... which is why it is far from the weighted sum


def test_one_adapter_is_copied_exactly_whatever_the_type():
    model = build(pk, LINEAR.model(), {"a": pk.LoraConfig(r=4, lora_alpha=8, use_rslora=True, target_modules=LINEAR.targets)})
    model.add_weighted_adapter(["a"], [0.3], "a3", combination_type="ties", density=0.5)
    assert relative_error(changes(model, "a3"), {k: 0.3 * v for k, v in changes(model, "a").items()}) < 1e-6


def test_saved_modules_combine_like_the_rest():
    configs = {n: pk.LoraConfig(r=2, target_modules=["lin1"], modules_to_save=["lin2"]) for n in ("a", "b")}
    model = build(pk, LINEAR.model(), configs)
    head = model.base_model.model.lin2
    model.add_weighted_adapter(["a", "b"], [0.25, 0.5], "ab", combination_type="cat")
    orig, a, b = (dict(m.named_parameters()) for m in (head.original_module, head.modules_to_save["a"], head.modules_to_save["b"]))
    for path, p in head.modules_to_save["ab"].named_parameters():
        torch.testing.assert_close(p, orig[path] + 0.25 * (a[path] - orig[path]) + 0.5 * (b[path] - orig[path]))
    assert model.peft_config["ab"].modules_to_save == ["lin2"]


def test_ia3_linear_is_the_default_and_exact():
    configs = {"a": pk.IA3Config(target_modules=["lin1", "lin2"], feedforward_modules=["lin2"]),
               "b": pk.IA3Config(target_modules=["lin1"], feedforward_modules=[])}
    model = build(pk, LINEAR.model(), configs)
    expected = weighted_changes(model, ["a", "b"], [2.0, -0.5])
    report = model.add_weighted_adapter(["a", "b"], [2.0, -0.5], "ab")
    assert report.combination_type == "linear" and report.max_error == 0.0
    assert relative_error(changes(model, "ab"), expected) < 1e-6
    assert model.peft_config["ab"].peft_type == "IA3"


def _unchanged(model, before):
    assert list(model.peft_config) == before
    assert not any(".new." in n for n, _ in model.named_parameters())


@pytest.mark.parametrize("configs, kwargs, message", [
    ({"a": pk.LoraConfig(r=4, target_modules=["lin1"]), "b": pk.LoraConfig(r=4, target_modules=["lin1", "lin2"])},
     {"combination_type": "linear"}, r"adapters \['a', 'b'\] differ: these modules hold only \{'lin2': \['b'\]\}"),
    ({"a": pk.LoraConfig(r=4, target_modules=["lin1"]), "b": pk.LoraConfig(r=2, target_modules=["lin1"])},
     {"combination_type": "ties", "density": 0.5}, r"at 'lin1' the ranks are \{'a': 4, 'b': 2\}"),
    ({"a": pk.LoraConfig(r=4, use_dora=True, target_modules=["lin1"]), "b": pk.LoraConfig(r=4, target_modules=["lin1"])},
     {"combination_type": "cat"}, "adapter 'a' at module 'lin1' is a DoRA adapter"),
    ({"a": pk.LoHaConfig(r=2, target_modules=["lin1"]), "b": pk.LoHaConfig(r=2, target_modules=["lin1"])},
     {"combination_type": "cat"}, "LoHaLayer, which has no LoRA factors"),
    ({"a": pk.LoHaConfig(r=2, target_modules=["lin1"]), "b": pk.LoHaConfig(r=2, target_modules=["lin1"])},
     {"combination_type": "svd"}, "gives a LORA adapter, which this model .* cannot hold.*combine_adapters"),
    ({"a": pk.IA3Config(target_modules=["lin1"], feedforward_modules=["lin1"]),
      "b": pk.IA3Config(target_modules=["lin1"], feedforward_modules=[])},
     {}, r"at module 'lin1': their 'ia3_l' tensors have shapes \{'a': \(1, 8\), 'b': \(16, 1\)\}"),
])
def test_undefined_combinations_are_refused_and_change_nothing(configs, kwargs, message):
    model = build(pk, LINEAR.model(), configs)
    before = list(model.peft_config)
    with pytest.raises(AdapterError, match=message):
        model.add_weighted_adapter(list(configs), [0.5, 0.5], "new", **kwargs)
    _unchanged(model, before)


@pytest.mark.parametrize("args, kwargs, field", [
    ((["a", "b"], [1.0], "new"), {}, "weights"),
    ((["a", "b"], [1.0, float("nan")], "new"), {}, "weights"),
    ((["a", "b"], [1.0, 1.0], "new"), {"combination_type": "mean"}, "combination_type"),
    ((["a", "b"], [1.0, 1.0], "new"), {"combination_type": "ties"}, "density"),
    ((["a", "b"], [1.0, 1.0], "new"), {"combination_type": "dare_ties", "density": 1.5}, "density"),
    ((["a", "b"], [1.0, 1.0], "new"), {"svd_rank": 0}, "svd_rank"),
    ((["a", "a"], [1.0, 1.0], "new"), {}, "adapters"),
])
def test_bad_arguments_name_the_field(args, kwargs, field):
    model = build(pk, LINEAR.model(), {n: pk.LoraConfig(r=2, target_modules=["lin1"]) for n in ("a", "b")})
    with pytest.raises(ConfigError, match=field):
        model.add_weighted_adapter(*args, **kwargs)
    _unchanged(model, ["a", "b"])


def test_existing_name_and_unknown_adapter_are_refused():
    model = build(pk, LINEAR.model(), {n: pk.LoraConfig(r=2, target_modules=["lin1"]) for n in ("a", "b")})
    with pytest.raises(AdapterError, match="already exists"):
        model.add_weighted_adapter(["a", "b"], [1.0, 1.0], "a")
    with pytest.raises(AdapterError, match="unknown adapter"):
        model.add_weighted_adapter(["a", "zzz"], [1.0, 1.0], "new")
