"""PeftMixedModel: adapters of different methods on one model, against hand-computed outputs and
against peft's own PeftMixedModel (the same saved adapters loaded in both)."""

from __future__ import annotations

import copy
import os

import peft
import pytest
import torch
import torch.nn as nn

import peftkit as pk
from peftkit.layers import layer_stack


class TwoLayers(nn.Module):
    """peft's test network for mixed models: two linears with a non-linearity between them."""

    def __init__(self):
        super().__init__()
        self.lin0 = nn.Linear(10, 20)
        self.lin1 = nn.Linear(20, 16)

    def forward(self, x):
        return self.lin1(torch.relu(self.lin0(x)))


class OneLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(12, 8)

    def forward(self, x):
        return self.lin(x)


def _fresh(cls=TwoLayers) -> nn.Module:
    torch.manual_seed(0)
    return cls().eval()


X2 = torch.randn(5, 10, generator=torch.Generator().manual_seed(1))
X1 = torch.randn(5, 12, generator=torch.Generator().manual_seed(2))


def _configs(lib, targets):
    """One random (non-identity) config per method peft's mixed model accepts and peftkit has."""
    return {
        "lora": lib.LoraConfig(r=4, lora_alpha=8, target_modules=targets["lora"], init_lora_weights=False),
        "loha": lib.LoHaConfig(r=2, alpha=4, target_modules=targets["loha"], init_weights=False),
        "adalora": lib.AdaLoraConfig(init_r=3, target_r=2, lora_alpha=6, target_modules=targets["adalora"],
                                     init_lora_weights=False, total_step=1),
        "lokr": lib.LoKrConfig(r=2, alpha=3, target_modules=targets["lokr"], init_weights=False),
    }


STACKED = {"lora": ["lin0", "lin1"], "loha": ["lin0"], "adalora": ["lin1"], "lokr": ["lin0", "lin1"]}


def _peftkit_mixed(order=("lora", "loha", "adalora", "lokr"), targets=STACKED) -> pk.PeftMixedModel:
    configs = _configs(pk, targets)
    torch.manual_seed(10)
    model = pk.get_peft_model(_fresh(), configs[order[0]], order[0], mixed=True)
    for seed, name in enumerate(order[1:], start=11):
        torch.manual_seed(seed)
        model.add_adapter(name, configs[name])
    model.set_adapter(list(order))
    return model.eval()


# ---------------------------------------------------------------------------------- by hand
def _lora(layer, name):
    return layer.lora_B[name].weight @ layer.lora_A[name].weight * layer.scaling[name]


def _loha(layer, name):
    first = layer.hada_w1_a[name] @ layer.hada_w1_b[name]
    second = layer.hada_w2_a[name] @ layer.hada_w2_b[name]
    return first * second * layer.alpha[name] / layer.r[name]


def _lokr(layer, name):
    def factor(i):
        whole = getattr(layer, f"lokr_w{i}")
        return whole[name] if name in whole else getattr(layer, f"lokr_w{i}_a")[name] @ getattr(layer, f"lokr_w{i}_b")[name]

    return torch.kron(factor(1), factor(2)) * layer.alpha[name] / layer.r[name]


def _adalora(layer, name):
    a, e, b = layer.lora_A[name], layer.lora_E[name], layer.lora_B[name]
    return b @ (a * e) * layer.scaling[name] / (layer.ranknum[name] + 1e-5)


BY_HAND = {pk.LoraConfig: _lora, pk.LoHaConfig: _loha, pk.LoKrConfig: _lokr, pk.AdaLoraConfig: _adalora}


def _one_layer_model(order):
    configs = {
        "lora": pk.LoraConfig(r=4, lora_alpha=8, target_modules=["lin"], init_lora_weights=False),
        "loha": pk.LoHaConfig(r=2, alpha=4, target_modules=["lin"], init_weights=False),
        "lokr": pk.LoKrConfig(r=2, alpha=3, target_modules=["lin"], init_weights=False),
        "adalora": pk.AdaLoraConfig(init_r=3, target_r=2, lora_alpha=6, target_modules=["lin"], init_lora_weights=False, total_step=1),
        "ia3": pk.IA3Config(target_modules=["lin"], feedforward_modules=[], init_ia3_weights=False),
    }
    torch.manual_seed(3)
    model = pk.get_peft_model(_fresh(OneLayer), configs[order[0]], order[0], mixed=True)
    for name in order[1:]:
        model.add_adapter(name, configs[name])
    model.set_adapter(list(order))
    return model.eval(), configs


@torch.no_grad()
def test_five_methods_on_one_layer_compose_as_computed_by_hand():
    order = ["lora", "loha", "lokr", "adalora", "ia3"]  # (IA)³ last: it wraps, so rescales, all the others
    model, configs = _one_layer_model(order)
    stack = layer_stack(model.get_base_model().lin)
    assert [type(layer).__name__ for layer in stack] == ["IA3Linear", "AdaLoraLinear", "LoKrLayer", "LoHaLayer", "LoraLinear"]
    layers = {name: next(layer for layer in stack if name in layer.adapter_names) for name in order}
    base = model.get_base_model().lin.get_base_layer()
    weight = base.weight + sum(BY_HAND[type(configs[n])](layers[n], n) for n in order[:-1])
    scale = layers["ia3"].ia3_l["ia3"].flatten()
    expected = (X1 @ weight.T + base.bias) * scale
    torch.testing.assert_close(model(X1), expected, rtol=1e-5, atol=1e-5)

    model.set_adapter(["loha", "ia3"])  # any subset: the others' layers pass their input through
    expected = (X1 @ (base.weight + _loha(layers["loha"], "loha")).T + base.bias) * scale
    torch.testing.assert_close(model(X1), expected, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_order_of_adding_is_the_order_of_composition():
    model, _ = _one_layer_model(["ia3", "lora"])  # (IA)³ first: LoRA's layer wraps it, so it is not rescaled
    stack = layer_stack(model.get_base_model().lin)
    ia3, lora = stack[1], stack[0]
    base = ia3.get_base_layer()
    expected = (X1 @ base.weight.T + base.bias) * ia3.ia3_l["ia3"].flatten() + X1 @ _lora(lora, "lora").T
    torch.testing.assert_close(model(X1), expected, rtol=1e-5, atol=1e-5)
    merged = copy.deepcopy(model).merge_and_unload()
    torch.testing.assert_close(merged(X1), expected, rtol=1e-4, atol=1e-5)


def test_each_method_joins_its_own_outermost_layer_else_stacks_a_new_one():
    model = _peftkit_mixed()
    lin0 = [type(layer).__name__ for layer in layer_stack(model.get_base_model().lin0)]
    assert lin0 == ["LoKrLayer", "LoHaLayer", "LoraLinear"]
    model.add_adapter("lokr2", pk.LoKrConfig(target_modules=["lin0"]))  # joins the outermost LoKr layer
    model.add_adapter("lora2", pk.LoraConfig(target_modules=["lin0"]))  # a new layer on top, as in peft
    lin0 = layer_stack(model.get_base_model().lin0)
    assert [type(layer).__name__ for layer in lin0] == ["LoraLinear", "LoKrLayer", "LoHaLayer", "LoraLinear"]
    assert lin0[1].adapter_names == ["lokr", "lokr2"]


# ---------------------------------------------------------------------------------- against peft
def _peft_mixed_from(folders: list[tuple[str, str]]) -> peft.PeftMixedModel:
    model = peft.PeftMixedModel.from_pretrained(_fresh(), folders[0][1], folders[0][0])
    for name, folder in folders[1:]:
        model.load_adapter(folder, name)
    model.set_adapter([name for name, _ in folders])
    return model.eval()


@torch.no_grad()
def test_saved_mixed_adapters_give_the_same_outputs_in_peft(tmp_path):
    ours = _peftkit_mixed()
    ours.save_pretrained(tmp_path)
    names = ["lora", "loha", "adalora", "lokr"]
    for name in names:  # peft's layout: a non-default adapter in a sub-folder of its name
        assert sorted(os.listdir(tmp_path / name)) == ["adapter_config.json", "adapter_model.safetensors"]
    theirs = _peft_mixed_from([(n, str(tmp_path / n)) for n in names])
    torch.testing.assert_close(ours(X2), theirs(X2), rtol=1e-5, atol=1e-6)
    theirs_types = [type(m).__name__ for m in theirs.base_model.model.lin0.modules() if isinstance(m, peft.tuners.tuners_utils.BaseTunerLayer)]
    ours_types = [type(m).__name__ for m in layer_stack(ours.get_base_model().lin0)]
    assert len(theirs_types) == len(ours_types) == 3  # stacked the same way

    for subset in (["loha", "lokr"], ["lora"], ["adalora", "lora"]):
        ours.set_adapter(subset)
        theirs.set_adapter(subset)
        torch.testing.assert_close(ours(X2), theirs(X2), rtol=1e-5, atol=1e-6)
    ours.set_adapter(names)
    theirs.set_adapter(names)
    torch.testing.assert_close(ours.merge_and_unload()(X2), theirs.merge_and_unload()(X2), rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_adapters_saved_by_peft_load_into_our_mixed_model(tmp_path):
    configs = _configs(peft, STACKED)
    folders = []
    for seed, (name, config) in enumerate(configs.items()):
        torch.manual_seed(seed)
        peft.get_peft_model(_fresh(), config, name).save_pretrained(tmp_path)  # peft's own PeftModel writes it
        folders.append((name, str(tmp_path / name)))
    theirs = _peft_mixed_from(folders)
    ours = pk.PeftMixedModel.from_pretrained(_fresh(), folders[0][1], folders[0][0])
    for name, folder in folders[1:]:
        ours.load_adapter(folder, name)
    assert ours.active_adapters == ["lora"]  # loading adds, it does not activate
    ours.set_adapter([name for name, _ in folders])
    torch.testing.assert_close(ours(X2), theirs(X2), rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_an_ia3_adapter_saved_from_a_mixed_model_loads_alone_in_peft(tmp_path):
    # peft's mixed model refuses (IA)³; its own PeftModel loads what ours saved, with the same output
    model, _ = _one_layer_model(["lora", "ia3"])
    model.save_pretrained(tmp_path, selected_adapters=["ia3"])
    model.set_adapter("ia3")
    theirs = peft.PeftModel.from_pretrained(_fresh(OneLayer), str(tmp_path / "ia3"), "ia3")
    torch.testing.assert_close(model(X1), theirs(X1), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="not compatible with the `PeftMixedModel`"):
        peft.PeftMixedModel.from_pretrained(_fresh(OneLayer), str(tmp_path / "ia3"), "ia3")


# ---------------------------------------------------------------------------------- merging, disabling, unloading
@torch.no_grad()
def test_merge_unmerge_disable_and_unload():
    model = _peftkit_mixed()
    base_out = _fresh()(X2)
    out = model(X2)
    weights = {k: v.clone() for k, v in _fresh().state_dict().items()}
    with model.disable_adapter():
        torch.testing.assert_close(model(X2), base_out)
    model.base_model.merge_adapter(adapter_names=["loha", "lokr"])  # peft's spelling, a subset
    torch.testing.assert_close(model(X2), out, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match=r"Cannot delete adapter\(s\) \['lokr'\] while they are merged"):
        model.delete_adapter(["lora", "lokr"])
    assert set(model.peft_config) == {"lora", "loha", "adalora", "lokr"}  # nothing was deleted
    model.unmerge_adapter()
    restored = {k.replace(".base_layer", ""): v for k, v in model.get_base_model().state_dict().items()
                if k.replace(".base_layer", "") in weights}
    for key, value in weights.items():
        torch.testing.assert_close(restored[key], value, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model(X2), out, rtol=1e-5, atol=1e-6)
    only = copy.deepcopy(model)
    only.set_adapter(["loha", "adalora"])
    expected = only(X2)
    only.set_adapter(["lora", "loha", "adalora", "lokr"])
    torch.testing.assert_close(only.merge_and_unload(adapter_names=["loha", "adalora"])(X2), expected, rtol=1e-4, atol=1e-5)
    unloaded = copy.deepcopy(model).unload()
    assert type(unloaded.lin0) is nn.Linear and type(unloaded.lin1) is nn.Linear
    torch.testing.assert_close(unloaded(X2), base_out)


@torch.no_grad()
def test_rescaling_layer_merges_only_with_what_is_stacked_inside_it():
    model, _ = _one_layer_model(["lora", "ia3"])
    out = model(X1)
    with pytest.raises(pk.AdapterError, match=r"rescale what the active adapter\(s\) \['lora'\]"):
        model.merge_adapter(["ia3"])
    assert not any(layer.merged_adapters for layer in layer_stack(model.get_base_model().lin))
    model.merge_adapter()  # both: LoRA first (inside), then the scales over the sum
    torch.testing.assert_close(model(X1), out, rtol=1e-5, atol=1e-5)
    with pytest.warns(UserWarning, match="Unmerging the model first"):
        model.set_adapter(["lora", "ia3"])
    torch.testing.assert_close(model(X1), out, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_mixed_batch_rows_use_adapters_of_different_methods():
    model, _ = _one_layer_model(["lora", "loha", "ia3"])
    singles = {}
    for name in ("lora", "loha", "ia3"):
        model.set_adapter(name)
        singles[name] = model(X1[:1])
    with model.disable_adapter():
        singles["__base__"] = model(X1[:1])
    rows = ["ia3", "__base__", "lora", "loha"]
    out = model(X1[:1].repeat(4, 1), adapter_names=rows)
    for i, name in enumerate(rows):
        torch.testing.assert_close(out[i:i + 1], singles[name], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------- combining (beyond peft)
@torch.no_grad()
def test_weighted_combinations_across_stacked_layers(tmp_path):
    model = _peftkit_mixed()
    model.add_adapter("lora2", pk.LoraConfig(r=3, target_modules=["lin0", "lin1"], init_lora_weights=False))
    assert len(layer_stack(model.get_base_model().lin0)) == 4  # lora2 got its own layer over LoKr's
    model.set_adapter(["lora", "lora2"])
    both = model(X2)
    report = model.add_weighted_adapter(["lora", "lora2"], [1.0, 1.0], "cat", combination_type="cat")
    assert report.max_error == 0.0
    model.set_adapter("cat")
    torch.testing.assert_close(model(X2), both, rtol=1e-5, atol=1e-6)

    model.set_adapter(["lora", "loha"])  # LoRA + LoHa: their weight changes summed, as one LoRA adapter
    expected = model(X2)
    model.add_weighted_adapter(["lora", "loha"], [1.0, 1.0], "as_lora", combination_type="svd", svd_rank=8)
    model.set_adapter("as_lora")
    torch.testing.assert_close(model(X2), expected, rtol=1e-4, atol=1e-5)
    model.save_pretrained(tmp_path, selected_adapters=["as_lora"])
    theirs = peft.PeftModel.from_pretrained(_fresh(), str(tmp_path / "as_lora"), "as_lora")
    torch.testing.assert_close(theirs(X2), expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(pk.AdapterError, match="needs adapters of one method"):
        model.add_weighted_adapter(["lora", "loha"], [1.0, 1.0], "x", combination_type="linear")


# ---------------------------------------------------------------------------------- deleting
def test_delete_keeps_the_rest_and_falls_back_as_peft_does():
    model = _peftkit_mixed()
    with torch.no_grad():
        model.set_adapter(["lora", "loha"])
        kept = copy.deepcopy(model)
        kept.delete_adapter(["adalora", "lokr"])
        torch.testing.assert_close(kept(X2), model(X2))
    assert [type(layer).__name__ for layer in layer_stack(kept.get_base_model().lin1)] == ["LoraLinear"]
    model.set_adapter("adalora")
    model.delete_adapter("adalora")  # no active adapter left: each layer falls back to its first one
    assert model.active_adapters == ["lora", "loha", "lokr"]  # the layers' choices together, as in peft
    model.delete_adapter(["lora", "loha", "lokr"])
    assert model.active_adapters == [] and not model.peft_config
    assert type(model.get_base_model().lin0) is nn.Linear


# ---------------------------------------------------------------------------------- refusals
def test_methods_that_cannot_mix_are_refused_before_anything_changes():
    model = _fresh()
    prompt = pk.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=2)
    with pytest.raises(ValueError, match="'PROMPT_TUNING' is not compatible with the `PeftMixedModel`"):
        pk.get_peft_model(model, prompt, mixed=True)
    assert type(model.lin0) is nn.Linear
    mixed = pk.get_peft_model(model, pk.LoraConfig(target_modules=["lin0"]), mixed=True)
    with pytest.raises(ValueError, match="'PREFIX_TUNING' is not compatible"):
        mixed.add_adapter("prefix", pk.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=2))
    assert list(mixed.peft_config) == ["default"]
    with pytest.raises(ValueError, match=r"Adapter\(s\) \['nope'\] not found, available adapters: \['default'\]"):
        mixed.set_adapter(["default", "nope"])
    single = pk.get_peft_model(_fresh(), pk.LoraConfig(target_modules=["lin0"]))
    with pytest.raises(pk.AdapterError, match="mixed=True"):  # a plain PeftModel points to the mixed one
        single.add_adapter("loha", pk.LoHaConfig(target_modules=["lin0"]))


def test_dora_over_another_method_is_refused_and_rolled_back():
    model = pk.get_peft_model(_fresh(), pk.LoHaConfig(target_modules=["lin0"]), "loha", mixed=True)
    with pytest.raises(pk.AdapterError, match="uses DoRA"):
        model.add_adapter("dora", pk.LoraConfig(target_modules=["lin0", "lin1"], use_dora=True))
    assert list(model.peft_config) == ["loha"]
    assert type(model.get_base_model().lin0).__name__ == "LoHaLayer" and type(model.get_base_model().lin1) is nn.Linear
    first = pk.get_peft_model(_fresh(), pk.LoraConfig(target_modules=["lin0"], use_dora=True), "dora", mixed=True)
    first.add_adapter("loha", pk.LoHaConfig(target_modules=["lin0"]))  # DoRA innermost: its weight is the module's
    assert [type(layer).__name__ for layer in layer_stack(first.get_base_model().lin0)] == ["LoHaLayer", "LoraLinear"]


# ---------------------------------------------------------------------------------- transformers models
def test_tiny_llama_five_methods_generate_train_and_merge():
    from tiny_models import example_inputs, tiny_llama

    batch = example_inputs("llama", with_labels=False)
    base_model = tiny_llama().eval()
    with torch.no_grad():
        base_logits = base_model(**batch).logits
        base_tokens = base_model.generate(**batch, max_new_tokens=4, do_sample=False)
    torch.manual_seed(0)
    model = pk.get_peft_model(base_model, pk.LoraConfig(task_type="CAUSAL_LM", init_lora_weights=False), "lora", mixed=True)
    model.add_adapter("loha", pk.LoHaConfig(task_type="CAUSAL_LM", target_modules=["q_proj", "v_proj"], init_weights=False))
    model.add_adapter("adalora", pk.AdaLoraConfig(task_type="CAUSAL_LM", init_lora_weights=False, total_step=1))
    model.add_adapter("lokr", pk.LoKrConfig(task_type="CAUSAL_LM", target_modules="all-linear", init_weights=False))
    model.add_adapter("ia3", pk.IA3Config(task_type="CAUSAL_LM", init_ia3_weights=False))
    names = ["lora", "loha", "adalora", "lokr", "ia3"]
    model.set_adapter(names)
    q_proj = model.get_base_model().model.layers[0].self_attn.q_proj
    assert [type(layer).__name__ for layer in layer_stack(q_proj)] == ["LoKrLayer", "AdaLoraLinear", "LoHaLayer", "LoraLinear"]

    loss = model(**batch, labels=batch["input_ids"]).loss  # every active adapter trains
    loss.backward()
    for name in names:
        grads = [p.grad for n, p in model.named_parameters() if f".{name}." in n or n.endswith(f".{name}")]
        assert grads and all(g is not None and torch.isfinite(g).all() for g in grads), name
    assert all(p.grad is None for n, p in model.named_parameters() if not any(f".{x}" in n for x in names))

    model.eval()
    with torch.no_grad():
        logits = model(**batch).logits
        assert not torch.allclose(logits, base_logits, atol=1e-3)
        model.generate(**batch, max_new_tokens=4, do_sample=False)
        with model.disable_adapter():
            assert torch.equal(model.generate(**batch, max_new_tokens=4, do_sample=False), base_tokens)
        merged = model.merge_and_unload()
        torch.testing.assert_close(merged(**batch).logits, logits, rtol=1e-4, atol=1e-4)
    assert not any(isinstance(m, pk.AdapterLayer) for m in merged.modules())


@torch.no_grad()
def test_gpt2_conv1d_layers_stack_and_unsupported_ones_are_named():
    from tiny_models import example_inputs, tiny_gpt2

    batch = example_inputs("gpt2", with_labels=False)
    torch.manual_seed(0)
    model = pk.get_peft_model(tiny_gpt2().eval(), pk.LoraConfig(target_modules=["c_attn"], init_lora_weights=False),
                              "lora", mixed=True)
    model.add_adapter("ia3", pk.IA3Config(target_modules=["c_attn"], feedforward_modules=[], init_ia3_weights=False))
    model.add_adapter("adalora", pk.AdaLoraConfig(target_modules=["c_attn"], init_lora_weights=False, total_step=1))
    model.set_adapter(["lora", "ia3", "adalora"])
    logits = model(**batch).logits
    with pytest.raises(pk.TargetError, match="'transformer.h.0.attn.c_attn' is a Conv1D, which LOHA cannot adapt"):
        model.add_adapter("loha", pk.LoHaConfig(target_modules=["c_attn"]))
    assert "loha" not in model.peft_config
    merged = model.merge_and_unload()
    torch.testing.assert_close(merged(**batch).logits, logits, rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_hotswap_reaches_a_lora_adapter_under_another_method(tmp_path):
    model = _peftkit_mixed()  # lin0: LoKr over LoHa over LoRA
    torch.manual_seed(5)
    other = pk.get_peft_model(_fresh(), pk.LoraConfig(r=4, lora_alpha=8, target_modules=["lin0", "lin1"],
                                                      init_lora_weights=False))
    other.save_pretrained(tmp_path)
    pk.hotswap_adapter(model, str(tmp_path), adapter_name="lora")
    model.set_adapter("lora")
    torch.testing.assert_close(model(X2), other(X2))


def test_from_pretrained_refuses_an_unmixable_adapter_and_inference_mode_freezes(tmp_path):
    from tiny_models import tiny_llama

    prompt = pk.get_peft_model(tiny_llama(), pk.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=2))
    prompt.save_pretrained(tmp_path / "prompt")
    base = tiny_llama()
    with pytest.raises(ValueError, match="'PROMPT_TUNING' is not compatible with the `PeftMixedModel`"):
        pk.PeftMixedModel.from_pretrained(base, tmp_path / "prompt")
    assert not any(isinstance(m, pk.AdapterLayer) for m in base.modules())

    model = _peftkit_mixed()
    model.set_adapter(["lora", "loha"])
    assert all(p.requires_grad for n, p in model.named_parameters() if ".lora." in n or ".loha" in n)
    model.set_adapter(["lora", "loha"], inference_mode=True)
    assert not any(p.requires_grad for p in model.parameters())
