"""The batched mixed-adapter path equals the per-adapter loop it replaces: outputs, gradients,
uneven and padded groups, ranks that differ, base rows, adapters absent from some layers, beam
search; and its weight stacks never go stale."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_llama

import peftkit as pk
from peftkit.kernels import multi_lora
from peftkit.methods.lora_layers import LoraLinear

ATOL = 1e-5


def adapters(configs: dict[str, dict]) -> pk.PeftModel:
    model = None
    for i, (name, kw) in enumerate(configs.items()):
        cfg = pk.LoraConfig(init_lora_weights=False, **{"target_modules": ["q_proj", "v_proj", "down_proj"], **kw})
        torch.manual_seed(i)
        if model is None:
            model = pk.get_peft_model(tiny_llama(), cfg, adapter_name=name)
        else:
            model.add_adapter(name, cfg)
    return model.eval()


@pytest.fixture
def slow_path(monkeypatch):
    """Run a model through the generic per-adapter loop instead of the batched path."""

    def run(model, *args, **kwargs):
        with monkeypatch.context() as m:
            m.setattr(multi_lora, "MAX_PADDING", -1.0)  # every plan counts as too padded
            return model(*args, **kwargs)

    return run


def used_batched_path(model, ids, names, monkeypatch) -> bool:
    calls = []
    real = multi_lora.add_mixed_lora_
    monkeypatch.setattr(multi_lora, "add_mixed_lora_", lambda *a: calls.append(1) or real(*a))
    model(input_ids=ids, adapter_names=names)
    monkeypatch.setattr(multi_lora, "add_mixed_lora_", real)
    return bool(calls)


IDS = torch.randint(3, 100, (6, 5), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("names", [
    ["a", "b", "c", "a", "b", "c"],                 # even groups
    ["a", "a", "a", "b", "__base__", "c"],          # uneven groups, a base row
    ["b", "b", "b", "b", "b", "a"],                 # padded: slot "a" carries 4 rows of padding
    ["__base__"] * 6,                               # nothing to add
])
def test_batched_equals_loop(names, slow_path, monkeypatch):
    model = adapters({"a": {}, "b": {"r": 4}, "c": {"r": 2, "lora_alpha": 7, "target_modules": ["q_proj"]}})
    with torch.no_grad():
        fast = model(input_ids=IDS, adapter_names=names).logits
        slow = slow_path(model, input_ids=IDS, adapter_names=names).logits
        torch.testing.assert_close(fast, slow, atol=ATOL, rtol=0)
        for i, name in enumerate(names):  # and each row equals running that adapter alone
            if name == "__base__":
                with model.disable_adapter():
                    alone = model(input_ids=IDS[i : i + 1]).logits
            else:
                model.set_adapter(name)
                alone = model(input_ids=IDS[i : i + 1]).logits
            torch.testing.assert_close(fast[i : i + 1], alone, atol=ATOL, rtol=0)
    assert used_batched_path(model, IDS, names, monkeypatch) == (names != ["__base__"] * 6)
    if names.count("b") == 5:  # 10 slots for 6 rows: over a lower padding limit the loop takes over
        monkeypatch.setattr(multi_lora, "MAX_PADDING", 1.5)
        assert not used_batched_path(model, IDS, names, monkeypatch)


def test_gradients_match_the_loop(slow_path):
    model = adapters({"a": {}, "b": {"r": 4}})
    model.train()
    names = ["a", "b", "a", "b", "b", "a"]
    model(input_ids=IDS, labels=IDS, adapter_names=names).loss.backward()
    fast = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    slow_path(model, input_ids=IDS, labels=IDS, adapter_names=names).loss.backward()
    slow = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert fast.keys() == slow.keys() and fast
    for n in fast:
        torch.testing.assert_close(fast[n], slow[n], atol=1e-6, rtol=1e-5)


def test_stacks_follow_weight_changes():
    model = adapters({"a": {}, "b": {}})
    names = ["a", "b"] * 3
    with torch.no_grad():
        before = model(input_ids=IDS, adapter_names=names).logits
        layer = next(m for m in model.modules() if isinstance(m, LoraLinear))
        layer.lora_B["b"].weight.mul_(3.0)  # in place, as an optimizer step or a load does
        changed = model(input_ids=IDS, adapter_names=names).logits
        assert torch.equal(changed[0], before[0]) and not torch.allclose(changed[1], before[1])
        model.delete_adapter("b")
        model.add_adapter("b", pk.LoraConfig(target_modules=["q_proj", "v_proj", "down_proj"]))  # B = 0 again
        model.set_adapter("a")
        with model.disable_adapter():
            base = model(input_ids=IDS).logits
        fresh = model(input_ids=IDS, adapter_names=names).logits
        torch.testing.assert_close(fresh[1::2], base[1::2], atol=ATOL, rtol=0)


def test_beam_search_expands_rows():
    model = adapters({"a": {}, "b": {}})
    prompt = IDS[:2, :3]
    out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), adapter_names=["a", "b"],
                         max_new_tokens=3, num_beams=2, do_sample=False, pad_token_id=0)
    for i, name in enumerate(["a", "b"]):
        model.set_adapter(name)
        alone = model.generate(input_ids=prompt[i : i + 1], attention_mask=torch.ones_like(prompt[i : i + 1]),
                               max_new_tokens=3, num_beams=2, do_sample=False, pad_token_id=0)
        assert torch.equal(out[i : i + 1], alone)


def test_row_plan_layout():
    plan = multi_lora.row_plan(("x", "__base__", "y", "x", "z"), ("x", "y"), torch.device("cpu"))
    assert plan.names == ("x", "y") and plan.per_slot == 2 and plan.real_rows == 3
    assert plan.gather.tolist() == [0, 3, 2, 2]
    assert plan.keep.tolist() == [[1.0, 1.0], [1.0, 0.0]] and plan.padding == 4 / 3
    even = multi_lora.row_plan(("x", "y", "y", "x"), ("x", "y"), torch.device("cpu"))
    assert even.keep is None and even.gather.tolist() == [0, 3, 1, 2]
    # a slot no row uses (None: its adapter left the batch) is all padding and costs no padding share
    spare = multi_lora.row_plan(("y", "x"), ("x", None, "y"), torch.device("cpu"))
    assert spare.names == ("x", None, "y") and spare.gather.tolist() == [1, 0, 0]
    assert spare.keep.tolist() == [[1.0], [0.0], [1.0]] and spare.padding == 1.0
    assert multi_lora.adapters_in_rows(("b", "__base__", "a", "b"), frozenset({"a", "b"})) == (("b", "a"), 4 / 3)


def test_stacks_follow_a_fused_optimizer_step():
    """Fused AdamW updates weights without bumping Tensor._version; the cache still notices."""
    model = adapters({"a": {}, "b": {}})
    names = ["a", "b"] * 3
    with torch.no_grad():
        before = model(input_ids=IDS, adapter_names=names).logits  # fills the caches
    model.set_adapter("b")
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=0.1, fused=True)
    versions = [p._version for p in params]
    model(input_ids=IDS, labels=IDS).loss.backward()
    optimizer.step()
    assert [p._version for p in params] == versions  # why a version-keyed cache alone is not enough
    model.eval()
    with torch.no_grad():
        after = model(input_ids=IDS, adapter_names=names).logits
        model.set_adapter("b")
        alone = model(input_ids=IDS[1:2]).logits
    assert torch.equal(after[0], before[0])  # adapter "a" did not train
    torch.testing.assert_close(after[1:2], alone, atol=ATOL, rtol=0)
    assert not torch.allclose(after[1], before[1])


def stacked(slots, a_stack, b_stack, weights: dict) -> None:
    """Every named slot holds its adapter's A and scaling * B, zero-padded to the stack's rank."""
    assert a_stack.shape[0] == b_stack.shape[0] == len(slots)
    for k, name in enumerate(slots):
        if name is None:
            continue
        a, b, s = weights[name]
        r = a.shape[0]
        assert torch.equal(a_stack[k, :, :r], a.T) and not a_stack[k, :, r:].any()  # stored transposed
        assert torch.equal(b_stack[k, :r], (b * s).T) and not b_stack[k, r:].any()


def test_a_changing_mix_writes_only_the_adapters_that_join(monkeypatch):
    """A server's batch changes its mix at every step: joining adapters are copied into a slot
    each, leaving ones free theirs, and the others are not copied again."""
    gen = torch.Generator().manual_seed(0)
    weights = {f"a{i}": (torch.randn(4 + i % 3, 8, generator=gen), torch.randn(6, 4 + i % 3, generator=gen), 0.5 + i)
               for i in range(12)}
    stacks = multi_lora.StackCache()
    writes = []
    real = multi_lora.StackCache._write
    monkeypatch.setattr(multi_lora.StackCache, "_write", lambda self, k, name, w: writes.append(name) or real(self, k, name, w))

    def get(*names):
        writes.clear()
        with torch.inference_mode():
            slots, a_stack, b_stack = stacks.get(names, [weights[n] for n in names])
        assert {n for n in slots if n is not None} == set(names)
        stacked(slots, a_stack, b_stack, weights)
        return slots

    get(*[f"a{i}" for i in range(8)])
    assert len(writes) == 8
    slots = get(*[f"a{i}" for i in range(1, 9)])          # a0 leaves, a8 joins: one copy
    assert writes == ["a8"] and slots.count(None) == 1   # a0's slot rides along as padding
    get("a9")                                             # a prefill beside the batch: one copy, nothing evicted
    assert writes == ["a9"]
    slots = get(*[f"a{i}" for i in range(2, 10)])
    assert writes == [] and slots.count(None) == 2
    slots = get(*[f"a{i}" for i in range(2, 7)])          # half leave: the last slots move into the gaps
    assert writes == [] and len(slots) == 5 and None not in slots
    weights["a3"][1].mul_(2.0)                            # changed in place: rewritten
    get("a2", "a3", "a4")
    assert writes == ["a3"]
    slots, a_stack, _ = stacks.get(("a2",), [weights["a2"]])  # outside inference mode: fresh, correct stacks
    stacked(slots, a_stack, _, weights)


def test_mixes_that_change_every_forward_equal_the_loop(slow_path):
    model = adapters({"a": {}, "b": {"r": 4}, "c": {"r": 2, "target_modules": ["q_proj"]}, "d": {}})
    gen = torch.Generator().manual_seed(1)
    pool = ["a", "b", "c", "d", "__base__"]
    with torch.inference_mode():
        for _ in range(12):
            rows = torch.randint(1, 7, (1,), generator=gen).item()
            names = [pool[i] for i in torch.randint(0, len(pool), (rows,), generator=gen).tolist()]
            fast = model(input_ids=IDS[:rows], adapter_names=names).logits
            slow = slow_path(model, input_ids=IDS[:rows], adapter_names=names).logits
            torch.testing.assert_close(fast, slow, atol=ATOL, rtol=0)


def test_stacks_saved_for_backward_are_never_overwritten(slow_path):
    """Frozen adapters, an input that needs gradients: two mixed forwards before one backward."""
    model = adapters({"a": {}, "b": {}, "c": {}})
    for p in model.parameters():
        p.requires_grad_(False)
    embeds = model.get_input_embeddings()(IDS).detach().requires_grad_(True)
    first = model(inputs_embeds=embeds, adapter_names=["a", "b"] * 3).logits.sum()
    model(inputs_embeds=embeds, adapter_names=["c", "b"] * 3).logits.sum()
    (fast,) = torch.autograd.grad(first, embeds)
    slow_out = slow_path(model, inputs_embeds=embeds, adapter_names=["a", "b"] * 3).logits.sum()
    (slow,) = torch.autograd.grad(slow_out, embeds)
    torch.testing.assert_close(fast, slow, atol=1e-4, rtol=1e-3)  # a sum over all logits: float32 order


def test_training_after_inference_mode_with_the_same_rows():
    """Row plans are cached; one made under torch.inference_mode (generate, the server) holds
    inference tensors, which autograd cannot save: training with the same rows afterwards works."""
    multi_lora._row_plan.cache_clear()
    model = adapters({"a": {}, "b": {"r": 4}})
    names = ["a", "b", "a", "b", "b", "a"]
    with torch.inference_mode():
        model(input_ids=IDS, adapter_names=names)
    model.train()
    model(input_ids=IDS, labels=IDS, adapter_names=names).loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_" in n and p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
