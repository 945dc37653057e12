"""DoRA's maths and the adapter-layer contract for every layer type LoRA supports (Linear,
Embedding, Conv1d, Conv2d, GPT-2 Conv1D): identity at init, merge/unmerge, disabling, save/load,
training (magnitude included), mixed batches; the norm identity and its cache."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from toy_models import TOYS, Toy

import peftkit as pk
from peftkit.methods.dora import NormCache, row_norms, row_norms_reference
from peftkit.methods.lora_layers import LoraLayer, LoraLinear

pytestmark = pytest.mark.usefixtures("torch_single_thread")  # tiny ops: no thread pool

ATOL = 1e-5


def dora(toy: Toy, **kw) -> pk.LoraConfig:
    return pk.LoraConfig(**{"r": 4, "lora_alpha": 8, "target_modules": toy.targets, "use_dora": True, **kw})


def random_dora(toy: Toy, seed: int = 0, name: str = "default", model=None, **kw) -> pk.PeftModel:
    """A DoRA adapter as after training: random A and B, magnitudes moved off the initial norms."""
    torch.manual_seed(100 + seed)
    cfg = dora(toy, init_lora_weights=False, **kw)
    if model is None:
        model = pk.get_peft_model(toy.model(), cfg, adapter_name=name)
    else:
        model.add_adapter(name, cfg)
    with torch.no_grad():
        for key, p in model.named_parameters():
            if f"lora_magnitude_vector.{name}." in key:
                p.mul_(1 + 0.3 * torch.randn(p.shape))
    return model


@pytest.fixture(params=TOYS, ids=[t.name for t in TOYS])
def toy(request) -> Toy:
    return request.param


# ------------------------------------------------------------------------------------- the norm
@pytest.mark.parametrize("b_std", [1e-3, 3e-2, 1.0])
def test_norm_identity_matches_the_materialised_norm(b_std):
    """Realistic scales (Kaiming-like W and A, B from barely trained to large), float32."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(96, 256, generator=g) / 16
    a = torch.randn(16, 256, generator=g) / 16
    b = torch.randn(96, 16, generator=g) * b_std
    exact = torch.linalg.norm((w.double() + 2.0 * b.double() @ a.double()), dim=1)
    for norms in (row_norms(w, a, b, 2.0), row_norms_reference(w, a, b, 2.0)):
        assert norms.dtype == torch.float32
        torch.testing.assert_close(norms.double(), exact, atol=0, rtol=2e-6)


def test_norm_identity_runs_in_float32_for_bf16_weights():
    g = torch.Generator().manual_seed(1)
    w = (torch.randn(64, 128, generator=g) / 11).bfloat16()
    a, b = torch.randn(8, 128, generator=g) / 11, torch.randn(64, 8, generator=g) * 0.05
    exact = torch.linalg.norm(w.double() + 0.5 * b.double() @ a.double(), dim=1)
    norms = row_norms(w, a, b, 0.5)
    assert norms.dtype == torch.float32
    torch.testing.assert_close(norms.double(), exact, atol=0, rtol=2e-6)


def test_norm_cache_follows_the_base_weight_and_reuses_only_for_inference():
    cache, g = NormCache(), torch.Generator().manual_seed(2)
    w, a, b = torch.randn(6, 5, generator=g), torch.randn(2, 5, generator=g), torch.randn(6, 2, generator=g)
    first = cache.norm("x", w, a, b, 1.0)
    with torch.no_grad():
        w.mul_(2)  # an in-place change bumps the version: the cached ||W||^2 is stale
        assert cache.norm("x", w, a, b, 1.0) is cache.norm("x", w, a, b, 1.0)  # no grad: reused
    torch.testing.assert_close(cache.norm("x", w, a, b, 1.0), row_norms_reference(w, a, b, 1.0))
    assert not cache.full  # a forward with gradients enabled clears the inference cache
    assert not torch.allclose(first, cache.norm("x", w, a, b, 1.0))


# ------------------------------------------------------------------------------------- contract
def test_identity_at_init(toy):
    x = toy.inputs()
    expected = toy.model()(x)
    for init in (True, "gaussian"):
        model = pk.get_peft_model(toy.model(), dora(toy, init_lora_weights=init))
        torch.testing.assert_close(model(x), expected, atol=0, rtol=0)
        model.train()
        torch.testing.assert_close(model(x), expected, atol=0, rtol=0)


def test_adapter_changes_output_and_disabled_equals_base(toy):
    x = toy.inputs()
    expected = toy.model()(x)
    model = random_dora(toy)
    assert not torch.allclose(model(x), expected, atol=1e-3)
    with model.disable_adapter():
        torch.testing.assert_close(model(x), expected, atol=0, rtol=0)


def test_identity_norm_path_equals_materialised_path(toy, monkeypatch):
    x = toy.inputs()
    model = random_dora(toy)
    fast = model(x)
    monkeypatch.setattr(LoraLayer, "dora_norm_by_identity", False)
    torch.testing.assert_close(model(x), fast, atol=ATOL, rtol=0)


def test_merged_equals_unmerged_and_unmerge_restores(toy):
    x = toy.inputs()
    model = random_dora(toy)
    unmerged = model(x)
    before = {k: v.clone() for k, v in model.get_base_model().state_dict().items() if "lora_" not in k}
    model.merge_adapter()
    torch.testing.assert_close(model(x), unmerged, atol=ATOL, rtol=0)
    model.unmerge_adapter()
    after = model.get_base_model().state_dict()
    for k in before:
        torch.testing.assert_close(after[k], before[k], atol=ATOL, rtol=0)
    torch.testing.assert_close(model(x), unmerged, atol=ATOL, rtol=0)
    merged = model.merge_and_unload(safe_merge=True)
    assert not any(isinstance(m, pk.AdapterLayer) for m in merged.modules())
    torch.testing.assert_close(merged(x), unmerged, atol=ATOL, rtol=0)


def test_two_active_adapters_merge_like_they_run(toy):
    """A LoRA and a DoRA adapter active together: each DoRA norm comes from the unmerged weight,
    whatever was merged before (as peft), so merging in any order gives the unmerged outputs."""
    x = toy.inputs()
    model = random_dora(toy, seed=0, name="d")
    torch.manual_seed(7)
    model.add_adapter("l", pk.LoraConfig(r=2, target_modules=toy.targets, init_lora_weights=False))
    random_dora(toy, seed=1, name="d2", model=model)
    model.set_adapter(["l", "d", "d2"])
    unmerged = model(x)
    model.merge_adapter(["l"])
    model.merge_adapter(["d", "d2"])  # norms taken after taking "l" out again
    torch.testing.assert_close(model(x), unmerged, atol=ATOL, rtol=0)
    model.unmerge_adapter()
    torch.testing.assert_close(model(x), unmerged, atol=ATOL, rtol=0)


def test_save_load_round_trip_is_exact(toy, tmp_path):
    x = toy.inputs()
    model = random_dora(toy)
    expected = model(x)
    model.save_pretrained(tmp_path)
    loaded = pk.PeftModel.from_pretrained(toy.model(), tmp_path)
    assert loaded.peft_config["default"].use_dora
    assert torch.equal(loaded(x), expected)
    saved = pk.get_peft_model_state_dict(model)
    assert sum(k.endswith(".lora_magnitude_vector") for k in saved) == len(toy.targets)
    for key, tensor in pk.get_peft_model_state_dict(loaded).items():
        assert torch.equal(tensor, saved[key])


def test_only_adapter_parameters_train_magnitude_included(toy):
    x = toy.inputs()
    model = random_dora(toy)
    model.train()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all("lora_" in n for n in trainable)
    assert sum("lora_magnitude_vector" in n for n in trainable) == len(toy.targets)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(x).float().pow(2).mean().backward()
    opt.step()
    for n, p in model.named_parameters():
        assert (not torch.equal(p, before[n])) == (n in trainable), n


def test_mixed_batch_equals_per_row_runs(toy):
    """peft refuses adapter_names= with DoRA; here DoRA, LoRA and base rows mix in one batch."""
    x = toy.inputs(batch=5)
    model = random_dora(toy, seed=0, name="a")
    random_dora(toy, seed=1, name="b", model=model)
    torch.manual_seed(3)
    model.add_adapter("plain", pk.LoraConfig(r=2, target_modules=toy.targets, init_lora_weights=False))
    names = ["a", "b", "__base__", "plain", "a"]
    mixed = model(x, adapter_names=names)
    for i, name in enumerate(names):
        if name == "__base__":
            with model.disable_adapter():
                row = model(x[i : i + 1])
        else:
            model.set_adapter(name)
            row = model(x[i : i + 1])
        torch.testing.assert_close(mixed[i : i + 1], row, atol=ATOL, rtol=0)


def test_training_after_inference_never_uses_a_stale_norm(toy):
    """A fused optimizer does not bump tensor versions; the norm cached during a no-grad
    evaluation must still not survive into the next evaluation."""
    x = toy.inputs()
    model = random_dora(toy)
    with torch.no_grad():
        model(x)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.05, fused=True)
    model(x).float().pow(2).mean().backward()
    opt.step()
    model.eval()
    with torch.no_grad():
        after = model(x)
    fresh = pk.get_peft_model(toy.model(), dora(toy))
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(after, fresh(x), atol=0, rtol=0)


def test_delete_and_re_add_a_dora_adapter(toy):
    x = toy.inputs()
    model = random_dora(toy, name="a")
    random_dora(toy, seed=1, name="b", model=model)
    model.set_adapter("b")
    want = model(x)
    model.delete_adapter("a")
    assert all("a" not in layer.lora_magnitude_vector for layer in model.get_base_model().modules()
               if isinstance(layer, LoraLayer))
    torch.testing.assert_close(model(x), want, atol=0, rtol=0)


# ------------------------------------------------------------------------------------- refusals
class _NoDoraLayer(LoraLinear):
    supports_dora = False


def test_layer_without_dora_is_refused_with_its_name():
    from peftkit.errors import TargetError

    base = nn.Linear(4, 4)
    with pytest.raises(TargetError, match=r"Linear does not support DoRA \(yet\), please set use_dora to False.*'proj'.*exclude_modules"):
        _NoDoraLayer(base, "default", pk.LoraConfig(target_modules=["proj"], use_dora=True), "proj")
    layer = _NoDoraLayer(base, "default", pk.LoraConfig(target_modules=["proj"]), "proj")
    with pytest.raises(TargetError):
        layer.add_adapter("other", pk.LoraConfig(target_modules=["proj"], use_dora=True), "proj")
    assert layer.adapter_names == ["default"] and "other" not in layer.r  # unchanged


def test_use_dora_reads_from_a_peft_config():
    cfg = pk.PeftConfig.from_dict({"peft_type": "LORA", "r": 4, "target_modules": ["q"], "use_dora": True})
    assert isinstance(cfg, pk.LoraConfig) and cfg.use_dora and cfg.to_dict()["use_dora"] is True
