"""The adapter-layer contract, run for every layer type LoRA supports (Linear, Embedding, Conv1d,
Conv2d, GPT-2 Conv1D): identity at init, merge/unmerge, disabling, save/load, training, mixed batches."""

from __future__ import annotations

import pytest
import torch
from toy_models import TOYS, Toy

import peftkit as pk

ATOL = 1e-5


def lora(toy: Toy, **kw) -> pk.LoraConfig:
    return pk.LoraConfig(**{"r": 4, "lora_alpha": 8, "target_modules": toy.targets, **kw})


def random_adapter(toy: Toy, seed: int = 0, name: str = "default", model=None, **kw) -> pk.PeftModel:
    """An adapter with non-trivial values (init_lora_weights=False), as after training."""
    torch.manual_seed(100 + seed)
    cfg = lora(toy, init_lora_weights=False, **kw)
    if model is None:
        return pk.get_peft_model(toy.model(), cfg, adapter_name=name)
    model.add_adapter(name, cfg)
    return model


def base_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k.replace(".base_layer", ""): v.clone() for k, v in model.state_dict().items() if "lora_" not in k}


@pytest.fixture(params=TOYS, ids=[t.name for t in TOYS])
def toy(request) -> Toy:
    return request.param


def test_identity_at_init(toy):
    x = toy.inputs()
    expected = toy.model()(x)
    for init in (True, "gaussian"):
        model = pk.get_peft_model(toy.model(), lora(toy, init_lora_weights=init))
        torch.testing.assert_close(model(x), expected, atol=0, rtol=0)


def test_adapter_changes_output_and_disabled_equals_base(toy):
    x = toy.inputs()
    expected = toy.model()(x)
    model = random_adapter(toy)
    assert not torch.allclose(model(x), expected, atol=1e-3)
    with model.disable_adapter():
        torch.testing.assert_close(model(x), expected, atol=0, rtol=0)
    assert not torch.allclose(model(x), expected, atol=1e-3)  # enabled again on exit


def test_merged_equals_unmerged_and_unmerge_restores(toy):
    x = toy.inputs()
    model = random_adapter(toy)
    unmerged = model(x)
    before = base_weights(model.get_base_model())
    model.merge_adapter()
    torch.testing.assert_close(model(x), unmerged, atol=ATOL, rtol=0)
    model.merge_adapter()  # merging twice is harmless
    torch.testing.assert_close(model(x), unmerged, atol=ATOL, rtol=0)
    model.unmerge_adapter()
    after = base_weights(model.get_base_model())
    for k in before:
        torch.testing.assert_close(after[k], before[k], atol=ATOL, rtol=0)
    torch.testing.assert_close(model(x), unmerged, atol=ATOL, rtol=0)


def test_merge_and_unload_returns_plain_model(toy):
    x = toy.inputs()
    model = random_adapter(toy)
    expected = model(x)
    plain = model.merge_and_unload()
    assert not any(isinstance(m, pk.AdapterLayer) for m in plain.modules())
    assert type(plain) is type(toy.model())
    torch.testing.assert_close(plain(x), expected, atol=ATOL, rtol=0)


def test_unload_restores_base_outputs(toy):
    x = toy.inputs()
    model = random_adapter(toy)
    plain = model.unload()
    torch.testing.assert_close(plain(x), toy.model()(x), atol=0, rtol=0)


def test_save_load_round_trip_is_exact(toy, tmp_path):
    x = toy.inputs()
    model = random_adapter(toy)
    expected = model(x)
    model.save_pretrained(tmp_path)
    loaded = pk.PeftModel.from_pretrained(toy.model(), tmp_path)
    assert torch.equal(loaded(x), expected)
    saved = pk.get_peft_model_state_dict(model)
    for key, tensor in pk.get_peft_model_state_dict(loaded).items():
        assert torch.equal(tensor, saved[key])


def test_only_adapter_parameters_train(toy):
    x = toy.inputs()
    model = random_adapter(toy)
    model.train()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    out = model(x)
    out.float().pow(2).mean().backward()
    assert all(p.grad is None for n, p in model.named_parameters() if n not in trainable)
    opt.step()
    for n, p in model.named_parameters():
        changed = not torch.equal(p, before[n])
        assert changed == (n in trainable), n


def test_mixed_batch_equals_per_row_runs(toy):
    x = toy.inputs(batch=5)
    model = random_adapter(toy, seed=0, name="a")
    random_adapter(toy, seed=1, name="b", model=model)
    names = ["a", "b", "__base__", "b", "a"]
    mixed = model(x, adapter_names=names)
    for i, name in enumerate(names):
        if name == "__base__":
            with model.disable_adapter():
                row = model(x[i : i + 1])
        else:
            model.set_adapter(name)
            row = model(x[i : i + 1])
        torch.testing.assert_close(mixed[i : i + 1], row, atol=ATOL, rtol=0)


def test_mixed_batch_gradients_reach_each_rows_adapter(toy):
    x = toy.inputs(batch=2)
    model = random_adapter(toy, seed=0, name="a")
    random_adapter(toy, seed=1, name="b", model=model)
    model.set_adapter(["a", "b"])  # both trainable
    model(x, adapter_names=["a", "__base__"]).float().sum().backward()
    grads = {n: p.grad for n, p in model.named_parameters() if "lora_" in n}
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if ".a." in n or n.endswith(".a"))
    assert all(g is None or g.abs().sum() == 0 for n, g in grads.items() if ".b." in n or n.endswith(".b"))


def test_two_active_adapters_sum(toy):
    # checked on the first adapted layer, which reads the model input: deltas add up per layer
    x = toy.inputs()
    model = random_adapter(toy, seed=0, name="a")
    random_adapter(toy, seed=1, name="b", model=model)
    layer = model.get_base_model().get_submodule(toy.targets[0])
    base = layer.base_layer(x)
    delta_a = layer(x) - base
    model.set_adapter("b")
    delta_b = layer(x) - base
    model.set_adapter(["a", "b"])
    torch.testing.assert_close(layer(x), base + delta_a + delta_b, atol=ATOL, rtol=0)
