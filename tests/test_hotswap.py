"""Hotswap: a swapped-in adapter gives exactly the outputs of loading it fresh, on every LoRA layer
type and across ranks, alphas, rsLoRA and patterns; a compiled model does not recompile; peft's
results where peft can swap; refusals that leave the model unchanged."""

from __future__ import annotations

import math
import shutil

import peft
import pytest
import torch
from tiny_models import randomize_lora_weights, tiny_llama
from toy_models import TOYS

import peftkit as pk
from peftkit.hotswap import hotswap_adapter, hotswap_adapter_from_state_dict, prepare_model_for_compiled_hotswap

pytestmark = [pytest.mark.usefixtures("torch_single_thread"), pytest.mark.filterwarnings("ignore::UserWarning")]
LINEAR = TOYS[0]


def saved_adapter(folder, toy, seed: int, **config) -> str:
    """A LoRA adapter with random (trained-like) weights, saved by peftkit into ``folder``."""
    config.setdefault("target_modules", toy.targets)
    model = pk.get_peft_model(toy.model(), pk.LoraConfig(**config))
    with torch.no_grad():
        randomize_lora_weights(model, seed=seed, std=0.3)
    model.save_pretrained(str(folder))
    return str(folder)


@torch.no_grad()
def fresh_outputs(toy, path: str) -> torch.Tensor:
    return pk.PeftModel.from_pretrained(toy.model(), path)(toy.inputs())


def snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("toy", TOYS, ids=[t.name for t in TOYS])
def test_swapped_adapter_equals_loading_it_fresh_on_every_layer_type(tmp_path, toy):
    first = saved_adapter(tmp_path / "a", toy, 0, r=2, lora_alpha=4)
    second = saved_adapter(tmp_path / "b", toy, 1, r=4, lora_alpha=3, use_rslora=True)
    model = pk.PeftModel.from_pretrained(toy.model(), first)
    with torch.no_grad():
        before = model(toy.inputs())
    prepare_model_for_compiled_hotswap(model, target_rank=4)
    with torch.no_grad():
        torch.testing.assert_close(model(toy.inputs()), before)  # padding changes nothing
    hotswap_adapter(model, second, adapter_name="default")
    with torch.no_grad():
        torch.testing.assert_close(model(toy.inputs()), fresh_outputs(toy, second))
    hotswap_adapter(model, first, adapter_name="default")  # and back, from a rank-4 slot to rank 2
    with torch.no_grad():
        torch.testing.assert_close(model(toy.inputs()), before)


def test_rank_and_alpha_patterns_swap_with_their_own_scalings(tmp_path):
    first = saved_adapter(tmp_path / "a", LINEAR, 0, r=4, lora_alpha=8)
    second = saved_adapter(tmp_path / "b", LINEAR, 1, r=2, lora_alpha=2, rank_pattern={"lin2": 4},
                           alpha_pattern={"lin1": 16})
    model = pk.PeftModel.from_pretrained(LINEAR.model(), first)
    hotswap_adapter(model, second, "default")  # no prepare: both ranks fit the rank-4 slot
    with torch.no_grad():
        torch.testing.assert_close(model(LINEAR.inputs()), fresh_outputs(LINEAR, second))


def test_prepared_model_saves_an_adapter_both_libraries_reload_with_the_same_outputs(tmp_path):
    first = saved_adapter(tmp_path / "a", LINEAR, 0, r=2, lora_alpha=8, rank_pattern={"lin2": 3})
    model = pk.PeftModel.from_pretrained(LINEAR.model(), first)
    prepare_model_for_compiled_hotswap(model, target_rank=6)
    assert model.peft_config["default"].r == 6 and model.peft_config["default"].rank_pattern == {"lin2": 6}
    model.save_pretrained(str(tmp_path / "padded"))
    x = LINEAR.inputs()
    with torch.no_grad():
        want = model(x)
        torch.testing.assert_close(pk.PeftModel.from_pretrained(LINEAR.model(), str(tmp_path / "padded"))(x), want)
        torch.testing.assert_close(peft.PeftModel.from_pretrained(LINEAR.model(), str(tmp_path / "padded"))(x), want)


def test_compiled_model_swaps_without_recompiling():
    from torch._dynamo.testing import CompileCounter

    def adapter(seed: int, **config):
        config.setdefault("target_modules", ["q_proj", "v_proj", "down_proj"])
        model = pk.get_peft_model(tiny_llama(), pk.LoraConfig(**config))
        with torch.no_grad():
            randomize_lora_weights(model, seed=seed, std=0.05)
        return model

    sources = {"a": adapter(0, r=4, lora_alpha=8), "b": adapter(1, r=8, lora_alpha=32, use_rslora=True),
               "c": adapter(2, r=2, lora_alpha=2, target_modules=["q_proj"])}  # a subset of the modules
    ids = torch.randint(0, 100, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = {n: m(input_ids=ids).logits for n, m in sources.items()}
    model = adapter(0, r=4, lora_alpha=8).eval()
    prepare_model_for_compiled_hotswap(model, target_rank=8)
    counter = CompileCounter()
    compiled = torch.compile(model, backend=counter)
    torch._dynamo.reset()
    with torch.no_grad(), torch._dynamo.config.patch(error_on_recompile=True):
        torch.testing.assert_close(compiled(input_ids=ids).logits, want["a"])
        compiled_once = counter.frame_count
        for name in ["b", "c", "a", "b"]:
            state = pk.get_peft_model_state_dict(sources[name])
            hotswap_adapter_from_state_dict(compiled, state, "default", sources[name].peft_config["default"])
            torch.testing.assert_close(compiled(input_ids=ids).logits, want[name], atol=1e-5, rtol=1e-5)
    assert compiled_once >= 1 and counter.frame_count == compiled_once


def test_same_outputs_as_peft_where_peft_can_swap(tmp_path):
    first = saved_adapter(tmp_path / "a", LINEAR, 0, r=2, lora_alpha=4)
    second = saved_adapter(tmp_path / "b", LINEAR, 1, r=6, lora_alpha=5)
    from peft.utils.hotswap import hotswap_adapter as peft_hotswap
    from peft.utils.hotswap import prepare_model_for_compiled_hotswap as peft_prepare

    theirs = peft.PeftModel.from_pretrained(LINEAR.model(), first)
    peft_prepare(theirs, target_rank=6)
    peft_hotswap(theirs, second, adapter_name="default", torch_device="cpu")
    ours = pk.PeftModel.from_pretrained(LINEAR.model(), first)
    prepare_model_for_compiled_hotswap(ours, target_rank=6)
    hotswap_adapter(ours, second, adapter_name="default")
    with torch.no_grad():
        torch.testing.assert_close(ours(LINEAR.inputs()), theirs(LINEAR.inputs()))


def test_adapter_on_fewer_modules_zeroes_the_rest(tmp_path):
    first = saved_adapter(tmp_path / "a", LINEAR, 0, r=2, lora_alpha=4)
    only_lin1 = saved_adapter(tmp_path / "b", LINEAR, 1, r=2, lora_alpha=4, target_modules=["lin1"])
    model = pk.PeftModel.from_pretrained(LINEAR.model(), first)
    hotswap_adapter(model, only_lin1, "default")
    assert not model.base_model.model.lin2.lora_B["default"].weight.any()
    with torch.no_grad():
        torch.testing.assert_close(model(LINEAR.inputs()), fresh_outputs(LINEAR, only_lin1))


def refused(model, path: str, match: str, error=pk.PeftkitError) -> None:
    before = snapshot(model)
    with pytest.raises(error, match=match):
        hotswap_adapter(model, path, "default")
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())  # nothing written


def test_refusals_name_the_problem_and_change_nothing(tmp_path):
    only_lin1 = saved_adapter(tmp_path / "a", LINEAR, 0, r=2, lora_alpha=4, target_modules=["lin1"])
    model = pk.PeftModel.from_pretrained(LINEAR.model(), only_lin1)
    # a module the slot lacks: peft's sentence and error type (a RuntimeError), the key as peft names it
    refused(model, saved_adapter(tmp_path / "both", LINEAR, 1, r=2, lora_alpha=4),
            r"unexpected keys found: base_model\.model\.lin2\.lora_A\.default\.weight", RuntimeError)
    prepare_model_for_compiled_hotswap(model)  # prepared for compiling: a larger rank may not grow the slot
    refused(model, saved_adapter(tmp_path / "big", LINEAR, 2, r=4, lora_alpha=4, target_modules=["lin1"]),
            r"prepare_model_for_compiled_hotswap\(model, target_rank=4\)")
    refused(model, saved_adapter(tmp_path / "dora", LINEAR, 3, r=2, use_dora=True, target_modules=["lin1"]), "use_dora")
    refused(model, saved_adapter(tmp_path / "drop", LINEAR, 3, r=2, lora_dropout=0.1, target_modules=["lin1"]),
            "lora_dropout")
    ia3 = pk.get_peft_model(LINEAR.model(), pk.IA3Config(target_modules=["lin1"], feedforward_modules=[]))
    ia3.save_pretrained(str(tmp_path / "ia3"))
    refused(model, str(tmp_path / "ia3"), "IA3")
    model.merge_adapter()
    refused(model, saved_adapter(tmp_path / "c", LINEAR, 4, r=2, target_modules=["lin1"]), "unmerge_adapter")
    with pytest.raises(pk.AdapterError, match="no such adapter"):
        hotswap_adapter(model, only_lin1, "other")


def test_dora_adapters_swap_their_magnitudes_too(tmp_path):
    first = saved_adapter(tmp_path / "a", LINEAR, 0, r=2, lora_alpha=4, use_dora=True)
    second = saved_adapter(tmp_path / "b", LINEAR, 1, r=2, lora_alpha=8, use_dora=True)
    model = pk.PeftModel.from_pretrained(LINEAR.model(), first)
    with torch.no_grad():
        model(LINEAR.inputs())  # fills the weight-norm cache, which must not go stale
    hotswap_adapter(model, second, "default")
    with torch.no_grad():
        torch.testing.assert_close(model(LINEAR.inputs()), fresh_outputs(LINEAR, second))


def test_prepare_checks_its_arguments_and_when_it_is_called(tmp_path):
    model = pk.PeftModel.from_pretrained(LINEAR.model(), saved_adapter(tmp_path / "a", LINEAR, 0, r=4))
    with pytest.raises(pk.AdapterError, match=r"original rank is larger \(4\).*module 'lin1'"):
        prepare_model_for_compiled_hotswap(model, target_rank=2)
    with pytest.raises(pk.AdapterError, match="positive integer"):
        prepare_model_for_compiled_hotswap(model, target_rank=0)
    compiled = torch.compile(model, backend="eager")
    with pytest.raises(pk.AdapterError, match=r"\*before\* compiling the model.*check_compiled='warn'"):
        prepare_model_for_compiled_hotswap(compiled, target_rank=8)
    with pytest.raises(pk.AdapterError, match="check_compiles should be one of"):
        prepare_model_for_compiled_hotswap(compiled, check_compiled="wrong")
    with pytest.warns(UserWarning, match="called with a model that is already compiled"):
        prepare_model_for_compiled_hotswap(compiled, target_rank=8, check_compiled="warn")
    assert model.peft_config["default"].r == 8
    with pytest.raises(pk.AdapterError, match="No adapter layers found on the model"):
        prepare_model_for_compiled_hotswap(LINEAR.model())


@pytest.mark.slow  # inductor compiles C++ for the toy model: ~12 s on the 2-core machine
@pytest.mark.skipif(not (shutil.which("g++") or shutil.which("c++")), reason="inductor needs a C++ compiler on CPU")
def test_inductor_compiled_model_swaps_to_another_rank_and_alpha_without_recompiling():
    def adapter(seed: int, **config):
        model = pk.get_peft_model(LINEAR.model(), pk.LoraConfig(target_modules=LINEAR.targets, **config))
        with torch.no_grad():
            randomize_lora_weights(model, seed=seed, std=0.3)
        return model

    x = LINEAR.inputs()
    incoming = adapter(1, r=4, lora_alpha=3, use_rslora=True)
    model = adapter(0, r=2, lora_alpha=4)
    with torch.no_grad():
        before = model(x)
        want = incoming(x)
    prepare_model_for_compiled_hotswap(model, target_rank=4)
    compiled = torch.compile(model)
    torch._dynamo.reset()
    with torch.no_grad(), torch._dynamo.config.patch(error_on_recompile=True):
        torch.testing.assert_close(compiled(x), before)
        hotswap_adapter_from_state_dict(compiled, pk.get_peft_model_state_dict(incoming), "default",
                                        incoming.peft_config["default"])
        torch.testing.assert_close(compiled(x), want)  # error_on_recompile: a recompile would raise here


@pytest.mark.parametrize("toy", [t for t in TOYS if t.name != "embedding"], ids=lambda t: t.name)
def test_lora_bias_swaps_with_its_scaling(tmp_path, toy):
    first = saved_adapter(tmp_path / "a", toy, 0, r=2, lora_alpha=4, lora_bias=True)
    second = saved_adapter(tmp_path / "b", toy, 1, r=2, lora_alpha=3, lora_bias=True)  # bias folds like B
    model = pk.PeftModel.from_pretrained(toy.model(), first)
    hotswap_adapter(model, second, adapter_name="default")
    with torch.no_grad():
        torch.testing.assert_close(model(toy.inputs()), fresh_outputs(toy, second))


def test_layer_kinds_without_one_factor_pair_are_refused_by_name(tmp_path):
    net = torch.nn.Sequential(torch.nn.MultiheadAttention(8, 2), torch.nn.Linear(8, 8))
    first = pk.get_peft_model(net, pk.LoraConfig(target_modules=["0"], r=2))
    first.save_pretrained(str(tmp_path / "a"))
    with pytest.raises(pk.AdapterError, match="two pairs of factors.*hotswap"):
        hotswap_adapter(first, str(tmp_path / "a"), adapter_name="default")
    with pytest.raises(pk.AdapterError, match="two pairs of factors.*rank padding"):
        prepare_model_for_compiled_hotswap(first, target_rank=4)


# ---- peft 0.21.2's semantics (its TestHotSwapping), checked against real peft where it applies
class GroupedConv(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(4, 4, kernel_size=3, groups=2)

    def forward(self, x):
        return self.conv(x)


def grouped_inputs() -> torch.Tensor:
    return torch.rand(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))


def test_prepare_makes_scalings_tensors_of_the_same_values_as_peft():
    config = dict(target_modules=["lin1", "lin2"], r=4, lora_alpha=6, rank_pattern={"lin2": 2})
    ours = pk.get_peft_model(LINEAR.model(), pk.LoraConfig(**config))
    theirs = peft.get_peft_model(LINEAR.model(), peft.LoraConfig(**config))
    from peft.utils.hotswap import prepare_model_for_compiled_hotswap as peft_prepare

    prepare_model_for_compiled_hotswap(ours)
    peft_prepare(theirs)
    for module in ("lin1", "lin2"):
        mine = getattr(ours.base_model.model, module).scaling["default"]
        want = getattr(theirs.base_model.model, module).scaling["default"]
        assert isinstance(mine, torch.Tensor) and mine.dim() == 0 and mine.item() == want.item()
    with torch.no_grad():  # the fused kernel steps aside for tensor scalings; the result is the same
        torch.testing.assert_close(ours(LINEAR.inputs()), theirs(LINEAR.inputs()))


@pytest.mark.parametrize("toy", [t for t in TOYS if t.name in ("linear", "conv2d", "embedding")], ids=lambda t: t.name)
def test_padding_leaves_outputs_and_the_config_reloadable(tmp_path, toy):
    path = saved_adapter(tmp_path / "a", toy, 0, r=3, lora_alpha=5)
    model = pk.PeftModel.from_pretrained(toy.model(), path)
    x = toy.inputs()
    with torch.no_grad():
        before = model(x)
    prepare_model_for_compiled_hotswap(model, target_rank=7)
    with torch.no_grad():
        # the scaling is kept, not folded into B: within allclose's defaults (atol 1e-8), as peft's test asks
        assert torch.allclose(model(x), before)
    config = model.peft_config["default"]
    assert config.r == 7 and math.isclose(config.lora_alpha / config.r, 5 / 3)  # alpha grew with r
    model.save_pretrained(str(tmp_path / "padded"))
    with torch.no_grad():
        torch.testing.assert_close(pk.PeftModel.from_pretrained(toy.model(), str(tmp_path / "padded"))(x), before)
        torch.testing.assert_close(peft.PeftModel.from_pretrained(toy.model(), str(tmp_path / "padded"))(x), before)


def test_padding_keeps_the_lora_bias():
    model = pk.get_peft_model(LINEAR.model(), pk.LoraConfig(target_modules=LINEAR.targets, r=2, lora_bias=True))
    with torch.no_grad():
        randomize_lora_weights(model, seed=0, std=0.3)
        before = model(LINEAR.inputs())
    prepare_model_for_compiled_hotswap(model, target_rank=5)
    assert model.base_model.model.lin1.lora_B["default"].weight.shape[1] == 5
    with torch.no_grad():
        assert torch.allclose(model(LINEAR.inputs()), before)


def test_grouped_convolution_pads_per_group_like_peft(tmp_path):
    from peft.utils.hotswap import prepare_model_for_compiled_hotswap as peft_prepare

    ours = pk.get_peft_model(GroupedConv(), pk.LoraConfig(target_modules=["conv"], r=2))
    with torch.no_grad():
        randomize_lora_weights(ours, seed=0, std=0.3)
    ours.save_pretrained(str(tmp_path / "a"))
    theirs = peft.PeftModel.from_pretrained(GroupedConv(), str(tmp_path / "a"))
    prepare_model_for_compiled_hotswap(ours, target_rank=4)
    peft_prepare(theirs, target_rank=4)
    for attr in ("lora_A", "lora_B"):  # the same padded layout, number for number
        assert torch.equal(getattr(ours.base_model.model.conv, attr)["default"].weight,
                           getattr(theirs.base_model.model.conv, attr)["default"].weight)
    with pytest.raises(ValueError, match=r"groups=2 to target rank 3, but the target rank is not divisible by 2"):
        prepare_model_for_compiled_hotswap(ours, target_rank=3)


@pytest.mark.parametrize("ranks", [(2, 4), (4, 2)])
def test_grouped_convolution_swaps_like_loading_fresh_and_like_peft(tmp_path, ranks):
    from peft.utils.hotswap import hotswap_adapter as peft_hotswap
    from peft.utils.hotswap import prepare_model_for_compiled_hotswap as peft_prepare

    paths = []
    for seed, r in enumerate(ranks):
        model = pk.get_peft_model(GroupedConv(), pk.LoraConfig(target_modules=["conv"], r=r, lora_alpha=3 + seed))
        with torch.no_grad():
            randomize_lora_weights(model, seed=seed, std=0.3)
        model.save_pretrained(str(tmp_path / f"a{seed}"))
        paths.append(str(tmp_path / f"a{seed}"))
    x = grouped_inputs()
    with torch.no_grad():
        fresh = [pk.PeftModel.from_pretrained(GroupedConv(), p)(x) for p in paths]
    ours = pk.PeftModel.from_pretrained(GroupedConv(), paths[0])
    theirs = peft.PeftModel.from_pretrained(GroupedConv(), paths[0])
    prepare_model_for_compiled_hotswap(ours, target_rank=4)
    peft_prepare(theirs, target_rank=4)
    for i in (1, 0):
        hotswap_adapter(ours, paths[i], "default")
        peft_hotswap(theirs, paths[i], "default", torch_device="cpu")
        with torch.no_grad():
            torch.testing.assert_close(ours(x), fresh[i])
            torch.testing.assert_close(ours(x), theirs(x))


def test_larger_rank_grows_an_uncompiled_slot_and_saves_consistently(tmp_path):
    small = saved_adapter(tmp_path / "a", LINEAR, 0, r=2, lora_alpha=2)
    big = saved_adapter(tmp_path / "b", LINEAR, 1, r=5, lora_alpha=5, target_modules=["lin1"])
    model = pk.PeftModel.from_pretrained(LINEAR.model(), small)
    hotswap_adapter(model, big, "default")  # peft replaces the tensors; here the slot is padded to r=5 first
    assert model.base_model.model.lin2.lora_A["default"].weight.shape[0] == 5
    assert not model.base_model.model.lin2.lora_B["default"].weight.any()  # lin2 is not in the new adapter
    with torch.no_grad():
        torch.testing.assert_close(model(LINEAR.inputs()), fresh_outputs(LINEAR, big))
    model.save_pretrained(str(tmp_path / "saved"))  # the slot's config says r=5 now: reloads the same
    with torch.no_grad():
        torch.testing.assert_close(fresh_outputs(LINEAR, str(tmp_path / "saved")), fresh_outputs(LINEAR, big))
    hotswap_adapter(model, small, "default")
    with torch.no_grad():
        torch.testing.assert_close(model(LINEAR.inputs()), fresh_outputs(LINEAR, small))


def test_larger_rank_is_refused_on_a_compiled_model(tmp_path):
    model = pk.PeftModel.from_pretrained(LINEAR.model(), saved_adapter(tmp_path / "a", LINEAR, 0, r=2))
    compiled = torch.compile(model, backend="eager")
    with pytest.raises(pk.AdapterError, match=r"is compiled.*target_rank=4"):
        hotswap_adapter(compiled, saved_adapter(tmp_path / "b", LINEAR, 1, r=4), "default")


def test_a_missing_factor_is_zeroed_with_a_warning_as_peft_zeroes_it(tmp_path):
    from peft.utils.hotswap import hotswap_adapter_from_state_dict as peft_swap

    first = saved_adapter(tmp_path / "a", LINEAR, 0, r=2, lora_alpha=4)
    second = pk.PeftModel.from_pretrained(LINEAR.model(), saved_adapter(tmp_path / "b", LINEAR, 1, r=2, lora_alpha=4))
    state = pk.get_peft_model_state_dict(second)
    del state["base_model.model.lin2.lora_A.weight"]
    ours = pk.PeftModel.from_pretrained(LINEAR.model(), first)
    with pytest.warns(UserWarning, match=r"lin2.*zeroes the missing factor"):
        hotswap_adapter_from_state_dict(ours, state, "default", second.peft_config["default"])
    assert not ours.base_model.model.lin2.lora_A["default"].weight.any()
    theirs = peft.PeftModel.from_pretrained(LINEAR.model(), first)
    peft_state = {k.replace(".lora_A.", ".lora_A.default.").replace(".lora_B.", ".lora_B.default."): v
                  for k, v in state.items()}
    peft_swap(theirs, peft_state, "default", peft.LoraConfig(target_modules=LINEAR.targets, r=2, lora_alpha=4))
    with torch.no_grad():
        torch.testing.assert_close(ours(LINEAR.inputs()), theirs(LINEAR.inputs()))


def test_refusal_messages_begin_with_peft_sentences(tmp_path):
    from peft.utils.hotswap import hotswap_adapter as peft_hotswap

    lora = saved_adapter(tmp_path / "lora", LINEAR, 0, r=2)
    ia3 = pk.get_peft_model(LINEAR.model(), pk.IA3Config(target_modules=["lin1"], feedforward_modules=[]))
    ia3.save_pretrained(str(tmp_path / "ia3"))
    dora = saved_adapter(tmp_path / "dora", LINEAR, 1, r=2, use_dora=True)
    cases = [(lora, str(tmp_path / "ia3"), "Incompatible PEFT types found: LORA and IA3"),
             (str(tmp_path / "ia3"), str(tmp_path / "ia3"), "Hotswapping only supports LORA but IA3 was passed"),
             (lora, dora, "Configs are incompatible: for use_dora, False != True")]
    for slot, incoming, sentence in cases:
        for library in (pk, peft):
            model = library.PeftModel.from_pretrained(LINEAR.model(), slot)
            swap = hotswap_adapter if library is pk else peft_hotswap
            with pytest.raises(ValueError) as info:
                swap(model, incoming, adapter_name="default")
            assert str(info.value).startswith(sentence), (library.__name__, str(info.value))


def test_scale_layer_on_a_tensor_scaling_makes_a_new_tensor():
    model = pk.get_peft_model(LINEAR.model(), pk.LoraConfig(target_modules=LINEAR.targets, r=2, lora_alpha=4))
    prepare_model_for_compiled_hotswap(model)
    layer = model.base_model.model.lin1
    before = layer.scaling["default"]
    layer.scale_layer(0.5)
    assert layer.scaling["default"] is not before and before.item() == 2.0 and layer.scaling["default"].item() == 1.0


def test_prepare_without_target_rank_leaves_refused_layer_kinds_alone():
    net = torch.nn.Sequential(torch.nn.MultiheadAttention(8, 2), torch.nn.Linear(8, 8))
    model = pk.get_peft_model(net, pk.LoraConfig(target_modules=["0", "1"], r=2))
    prepare_model_for_compiled_hotswap(model)
    assert isinstance(model.base_model.model[1].scaling["default"], torch.Tensor)
    assert isinstance(model.base_model.model[0].scaling["default"], float)  # hotswap refuses MHA anyway
