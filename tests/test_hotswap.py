"""Hotswap: a swapped-in adapter gives exactly the outputs of loading it fresh, on every LoRA layer
type and across ranks, alphas, rsLoRA and patterns; a compiled model does not recompile; peft's
results where peft can swap; refusals that leave the model unchanged."""

from __future__ import annotations

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
    refused(model, saved_adapter(tmp_path / "both", LINEAR, 1, r=2, lora_alpha=4), "lin2")  # a module the slot lacks
    refused(model, saved_adapter(tmp_path / "big", LINEAR, 2, r=4, lora_alpha=4, target_modules=["lin1"]),
            r"target_rank=4")
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
    with pytest.raises(pk.AdapterError, match="below the rank"):
        prepare_model_for_compiled_hotswap(model, target_rank=2)
    with pytest.raises(pk.AdapterError, match="positive integer"):
        prepare_model_for_compiled_hotswap(model, target_rank=0)
    compiled = torch.compile(model, backend="eager")
    with pytest.raises(pk.AdapterError, match="before torch.compile"):
        prepare_model_for_compiled_hotswap(compiled, target_rank=8)
    with pytest.warns(UserWarning, match="before torch.compile"):
        prepare_model_for_compiled_hotswap(compiled, target_rank=8, check_compiled="warn")
    assert model.peft_config["default"].r == 8
    with pytest.raises(pk.AdapterError, match="PeftModel"):
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
    net = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3, groups=2), torch.nn.Conv2d(4, 4, 1))
    first = pk.get_peft_model(net, pk.LoraConfig(target_modules=["0"], r=2))
    first.save_pretrained(str(tmp_path / "a"))
    with pytest.raises(pk.AdapterError, match="grouped convolution.*hotswap"):
        hotswap_adapter(first, str(tmp_path / "a"), adapter_name="default")
