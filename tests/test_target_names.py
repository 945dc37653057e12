"""peftkit.target_names: shortening target lists without changing what they select."""

from __future__ import annotations

import pytest
import torch.nn as nn
from tiny_models import tiny_llama

import peftkit as pk
from peftkit.target_names import condensed_targets, find_minimal_target_modules
from peftkit.targets import iter_plain_modules, name_matches


@pytest.mark.parametrize(
    "targets, others, expected",
    [
        (["bar.baz"], ["foo.bar"], {"baz"}),
        (["a.b.c", "d.e.f", "g.h.i"], ["a.b.x", "d.x.f", "x.h.i"], {"c", "e.f", "g.h.i"}),
        # a suffix must be a whole segment: "proj" does not match "time_proj"
        (["x.ff.proj", "y.time_emb_proj"], ["time_proj", "add_time_proj"], {"proj", "time_emb_proj"}),
        # every k_proj but layer 5's: each keeps its index
        ([f"layers.{i}.k_proj" for i in range(12) if i != 5], ["layers.5.k_proj"],
         {f"{i}.k_proj" for i in range(12) if i != 5}),
    ],
)
def test_minimal_names_select_exactly_the_targets(targets, others, expected):
    names = find_minimal_target_modules(targets, others)
    assert names == expected
    assert all(name_matches(t, sorted(names)) for t in targets)
    assert not any(name_matches(o, sorted(names)) for o in others)


@pytest.mark.parametrize(
    "targets, others, message",
    [
        ("foo", ["bar"], "should be a list or set"),
        ([], ["bar"], "should be a list or set"),
        (["", "foo"], ["bar"], "should not contain an empty string"),
        (["foo.bar", "spam"], ["foo.bar"], r"contain common elements.*\['foo.bar'\]"),
    ],
)
def test_bad_input_is_refused(targets, others, message):
    with pytest.raises(ValueError, match=message):
        find_minimal_target_modules(targets, others)


def test_condensing_keeps_nothing_longer_than_it_was():
    assert condensed_targets(["0.q"], ["0", "0.q", "0.k"]) is None  # "q" is no shorter a list
    assert condensed_targets([], ["a"]) is None


class Blocks(nn.Module):
    """transformer_blocks.{i}.query and single_transformer_blocks.{i}.<single_name> (21 of each)."""

    def __init__(self, single_name: str = "key", n: int = 21):
        super().__init__()
        self.transformer_blocks = nn.ModuleList([nn.ModuleDict({"query": nn.Linear(4, 4)}) for _ in range(n)])
        self.single_transformer_blocks = nn.ModuleList([nn.ModuleDict({single_name: nn.Linear(4, 4)}) for _ in range(n)])


def test_long_target_lists_are_stored_short_and_select_the_same_modules(tmp_path):
    keys = [f"transformer_blocks.{i}.query" for i in range(21)]
    model = pk.get_peft_model(Blocks(), pk.LoraConfig(target_modules=keys))
    assert model.peft_config["default"].target_modules == ["query"]
    assert model.targeted_module_names == keys
    model.save_pretrained(tmp_path)
    assert pk.PeftModel.from_pretrained(Blocks(), tmp_path).targeted_module_names == keys


def test_a_name_that_is_the_tail_of_another_module_path_is_not_shortened_into_it():
    # "transformer_blocks" ends "single_transformer_blocks": "query" (or "0.query") would take both
    keys = [f"transformer_blocks.{i}.query" for i in range(21)]
    model = pk.get_peft_model(Blocks("query"), pk.LoraConfig(target_modules=keys))
    assert model.targeted_module_names == keys
    assert sorted(model.peft_config["default"].target_modules) == sorted(keys)


def test_short_lists_are_kept_as_written():
    model = pk.get_peft_model(tiny_llama(), pk.LoraConfig(target_modules=["model.layers.0.self_attn.q_proj"]))
    assert model.peft_config["default"].target_modules == ["model.layers.0.self_attn.q_proj"]


def test_ia3_keeps_its_feedforward_modules_among_the_targets(tmp_path):
    keys = [f"transformer_blocks.{i}.query" for i in range(21)]
    model = pk.get_peft_model(Blocks(), pk.IA3Config(target_modules=keys, feedforward_modules=keys))
    model.save_pretrained(tmp_path)
    again = pk.PeftModel.from_pretrained(Blocks(), tmp_path)  # the saved config is valid  # the saved config is valid
    assert again.targeted_module_names == keys


def test_all_linear_keys_cover_every_linear_but_the_head():
    base = tiny_llama()
    model = pk.get_peft_model(base, pk.LoraConfig(target_modules="all-linear"))
    linear = [k for k, m in iter_plain_modules(base) if isinstance(getattr(m, "base_layer", m), nn.Linear)]
    assert set(model.targeted_module_names) == {k for k in linear if k != "lm_head"}
