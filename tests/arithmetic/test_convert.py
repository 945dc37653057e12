"""``convert_to_lora`` / ``save_as_lora``: LoHa, LoKr, (IA)³ and DoRA adapters as LoRA adapters,
exact at full rank, at the smallest rank keeping a chosen energy, with the error reported as
measured; beside ``peft``'s function of the same name, and loadable by both libraries."""

from __future__ import annotations

import peft
import pytest
import torch
from combination_checks import build, changes, relative_error
from toy_models import TOYS
from upstream_bugs import PEFT_WEIGHTED_ADAPTER

import peftkit as pk
from peftkit.arithmetic import convert_to_lora, save_as_lora
from peftkit.checkpoint import set_peft_model_state_dict
from peftkit.errors import AdapterError, ConfigError

pytestmark = [pytest.mark.usefixtures("torch_single_thread"), pytest.mark.filterwarnings("ignore::UserWarning")]
TOY = {t.name: t for t in TOYS}
METHODS = {  # method -> (config for a library and targets, toys whose layers it adapts)
    "loha": (lambda L, t: L.LoHaConfig(r=2, alpha=6, target_modules=t), ["linear", "conv1d", "conv2d"]),
    "lokr": (lambda L, t: L.LoKrConfig(r=2, alpha=6, target_modules=t), ["linear", "conv1d", "conv2d"]),
    "dora": (lambda L, t: L.LoraConfig(r=3, use_dora=True, target_modules=t), list(TOY)),
    "ia3_inputs": (lambda L, t: L.IA3Config(target_modules=t, feedforward_modules=t), ["linear", "conv2d", "gpt2_conv1d"]),
}
CASES = [(method, toy) for method, (_, toys) in METHODS.items() for toy in toys]


def _as_lora(toy, converted):
    """The converted adapter loaded onto a fresh copy of the base model, through its config and tensors."""
    config, state_dict = converted
    model = pk.get_peft_model(toy.model().double(), config.for_loading())
    set_peft_model_state_dict(model, state_dict)
    return model


@pytest.mark.parametrize("method, toy_name", CASES)
def test_exact_at_full_rank_and_report_measures_the_truncation(method, toy_name):
    toy = TOY[toy_name]
    source = build(pk, toy.model().double(), {"default": METHODS[method][0](pk, toy.targets)})
    expected = changes(source, "default")
    full = convert_to_lora(source, 1000)
    exact = 1e-6 if method == "dora" else 1e-9  # DoRA's change is computed in float32
    assert relative_error(changes(_as_lora(toy, full), "default"), expected) < exact
    assert full.report.max_error < exact and full.config.peft_type == "LORA" and not full.config.use_dora
    low = convert_to_lora(source, 1)
    per_module = changes(_as_lora(toy, low), "default")
    for key, error in low.report.errors.items():
        assert low.report.ranks[key] == 1
        assert error == pytest.approx(relative_error({key: per_module[key]}, {key: expected[key]}), rel=1e-6)


@pytest.mark.parametrize("energy", [0.5, 0.9, 0.99])
def test_energy_picks_the_smallest_rank_keeping_it(energy):
    toy = TOY["linear"]
    source = build(pk, toy.model().double(), {"default": pk.LoHaConfig(r=3, target_modules=toy.targets)})
    converted = convert_to_lora(source, energy)
    for key, layer in ((k, m) for k, m in source._adapter_modules()):
        s = torch.linalg.svdvals(layer.delta_weight("default"))
        kept = torch.cumsum(s.square(), 0) / s.square().sum()
        rank = converted.report.ranks[key]
        assert kept[rank - 1] >= energy - 1e-12 and (rank == 1 or kept[rank - 2] < energy)
        assert converted.report.errors[key] <= (1 - energy) ** 0.5 + 1e-9  # error^2 is the energy left out


@pytest.mark.parametrize("method", ["lokr", "loha"])
@pytest.mark.parametrize("rank", [1, 2])
def test_same_lora_as_peft(method, rank):
    toy = TOY["linear"]
    outputs = []
    for lib, convert in ((pk, convert_to_lora), (peft, peft.convert_to_lora)):
        source = build(lib, toy.model(), {"default": METHODS[method][0](lib, toy.targets)})
        config, state_dict = convert(source, rank)
        model = peft.get_peft_model(toy.model(), peft.LoraConfig(**{k: v for k, v in config.to_dict().items()
                                                                      if k in ("r", "lora_alpha", "target_modules",
                                                                               "rank_pattern", "alpha_pattern")}))
        peft.set_peft_model_state_dict(model, state_dict)
        with torch.no_grad():
            outputs.append(model(toy.inputs()))
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-5, atol=1e-6)


def test_where_peft_converts_wrongly_or_not_at_all():
    toy = TOY["linear"]
    dora = lambda L: {"default": METHODS["dora"][0](L, ["lin1"])}  # noqa: E731  (16 x 8: rank 8 is full)
    ours = build(pk, toy.model(), dora(pk))
    converted = convert_to_lora(ours, 8)
    lora = pk.get_peft_model(toy.model(), converted.config.for_loading())
    set_peft_model_state_dict(lora, converted.tensors)
    assert relative_error(changes(lora, "default"), changes(ours, "default")) < 1e-5
    if PEFT_WEIGHTED_ADAPTER.present:
        source = build(peft, toy.model(), dora(peft))
        config, state_dict = peft.convert_to_lora(source, 8)
        theirs = peft.get_peft_model(toy.model(), config)
        peft.set_peft_model_state_dict(theirs, state_dict)
        assert relative_error(changes(theirs, "default"), changes(source, "default")) > 0.9  # magnitude left out
        ia3 = build(peft, toy.model(), {"default": METHODS["ia3_inputs"][0](peft, toy.targets)})
        with pytest.raises(TypeError, match="do not support LoRA conversion"):
            peft.convert_to_lora(ia3, 4)


def test_saved_folder_loads_in_both_libraries_with_the_same_outputs(tmp_path):
    toy = TOY["conv2d"]
    source = build(pk, toy.model(), {"default": pk.LoKrConfig(r=2, target_modules=toy.targets)})
    report = save_as_lora(tmp_path / "lora", source, 0.95)
    assert report.max_error <= 0.05 ** 0.5 + 1e-6
    outputs = []
    for lib in (pk, peft):
        with torch.no_grad():
            outputs.append(lib.PeftModel.from_pretrained(toy.model(), str(tmp_path / "lora"))(toy.inputs()))
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-5, atol=1e-6)


def test_a_bias_change_is_counted_as_error_and_warned_about():
    toy = TOY["linear"]  # nn.Linear with biases; (IA)3 scaling outputs scales the bias too
    source = build(pk, toy.model().double(), {"default": pk.IA3Config(target_modules=["lin1"], feedforward_modules=[])})
    with pytest.warns(UserWarning, match=r"change the biases of \['lin1'\]"):
        converted = convert_to_lora(source, 1000)
    expected = changes(source, "default")
    assert converted.report.errors["lin1"] == pytest.approx(
        relative_error(changes(_as_lora(toy, converted), "default"), expected), rel=1e-6)
    assert converted.report.errors["lin1"] > 0.01


def test_saved_modules_are_copied():
    toy = TOY["linear"]
    source = build(pk, toy.model(), {"default": pk.LoHaConfig(r=2, target_modules=["lin1"], modules_to_save=["lin2"])})
    config, state_dict = convert_to_lora(source, 8)
    assert config.modules_to_save == ["lin2"]
    trained = source.base_model.model.lin2.modules_to_save["default"].weight
    assert torch.equal(state_dict["base_model.model.lin2.weight"], trained)


@pytest.mark.parametrize("rank, field", [(0, "svd_rank"), (1.5, "energy"), ("8", "rank"), (True, "rank")])
def test_bad_rank_names_the_argument(rank, field):
    source = build(pk, TOY["linear"].model(), {"default": pk.LoHaConfig(r=2, target_modules=["lin1"])})
    with pytest.raises(ConfigError, match=field):
        convert_to_lora(source, rank)


def test_unknown_adapter_and_layers_lora_cannot_hold_are_refused():
    source = pk.get_peft_model(TOY["linear"].model(), pk.LoHaConfig(r=2, target_modules=["lin1"]))
    with pytest.raises(AdapterError, match="unknown adapter"):
        convert_to_lora(source, 2, adapter_name="other")
    norms = pk.get_peft_model(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4)),
                              pk.LNTuningConfig(target_modules=["1"]))
    with pytest.raises(AdapterError, match="module '1' is a LayerNorm, which a LORA adapter cannot hold"):
        convert_to_lora(norms, 2)
