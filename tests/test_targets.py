"""``peftkit.targets``: which modules an adapter adapts.

The rules are ``peft``'s: names match a key exactly or as a ``"." + name`` tail, a regex must
match the whole key, ``"all-linear"`` takes every ``nn.Linear`` / GPT-2 ``Conv1D`` except the
output head, ``exclude_modules`` and ``modules_to_save`` remove keys, ``layers_to_transform``
keeps some blocks. Every selection is also compared against what the real ``peft`` adapts.
"""

from __future__ import annotations

import warnings

import peft
import pytest
import torch.nn as nn
from tiny_models import (
    tiny_bert_classifier,
    tiny_bert_token_classifier,
    tiny_gpt2,
    tiny_llama,
)

import peftkit as pk
from peftkit import LoraConfig, TargetError
from peftkit.targets import (
    DEFAULT_TARGETS,
    check_target_module_exists,
    find_targets,
    is_target,
    layer_index,
    name_matches,
    pattern_value,
    resolve_target_modules,
)

pytestmark = pytest.mark.usefixtures("torch_single_thread")

LLAMA_PROJ = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def llama4():
    return tiny_llama(num_hidden_layers=4)


def _proj_key(layer: int, name: str) -> str:
    part = "self_attn" if name in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
    return f"model.layers.{layer}.{part}.{name}"


def peft_adapted(model: nn.Module, **kwargs) -> set[str]:
    """Keys of the modules that the real ``peft`` wraps with LoRA for ``LoraConfig(**kwargs)``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wrapped = peft.get_peft_model(model, peft.LoraConfig(**kwargs))
    base = wrapped.get_base_model()
    return {name for name, module in base.named_modules() if hasattr(module, "lora_A")}


def ours_adapted(model: nn.Module, **kwargs) -> set[str]:
    """Keys of the modules that peftkit's ``get_peft_model`` wraps for ``LoraConfig(**kwargs)``."""
    wrapped = pk.get_peft_model(model, LoraConfig(**kwargs))
    base = wrapped.get_base_model()
    return {name for name, module in base.named_modules() if isinstance(module, pk.AdapterLayer)}


class Toy(nn.Module):
    """A model with no ``config``: one block stack, a name that is a word inside other names."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.ModuleDict({"q_proj": nn.Linear(4, 4), "proj": nn.Linear(4, 4), "norm": nn.LayerNorm(4)})
            for _ in range(2)
        )
        self.head = nn.Linear(4, 2)


# ---------------------------------------------------------------------------------------------
# name rules


@pytest.mark.parametrize(
    "key, names, expected",
    [
        ("model.layers.0.self_attn.q_proj", ["q_proj"], True),  # ".suffix" tail
        ("q_proj", ["q_proj"], True),  # exact key
        ("model.layers.0.self_attn.q_proj", ["self_attn.q_proj"], True),  # multi-segment tail
        ("model.layers.0.self_attn.q_proj", ["model.layers.0.self_attn.q_proj"], True),
        ("model.layers.0.self_attn.q_proj", ["proj"], False),  # partial word
        ("model.layers.0.self_attn.q_proj", ["_proj"], False),
        ("model.layers.0.self_attn.q_proj", ["q_pro"], False),  # prefix of the last word
        ("model.layers.0.self_attn.q_proj", ["attn.q_proj"], False),  # partial word mid-key
        ("model.layers.0.self_attn.q_proj", ["k_proj", "v_proj"], False),
        ("model.layers.0.self_attn.q_proj", ["k_proj", "q_proj"], True),
        ("model.layers.0.self_attn.q_proj", [], False),
    ],
)
def test_name_rules(key, names, expected):
    assert name_matches(key, names) is expected


@pytest.mark.parametrize(
    "key, regex, expected",
    [
        ("model.layers.0.self_attn.q_proj", r".*\.q_proj", True),
        ("model.layers.0.self_attn.q_proj", r"q_proj", False),  # must match the whole key
        ("model.layers.0.self_attn.q_proj", r".*q_pro", False),  # no prefix match
        ("model.layers.0.self_attn.q_proj", r"model\.layers\.[01]\..*_proj", True),
        ("model.layers.2.self_attn.q_proj", r"model\.layers\.[01]\..*_proj", False),
        ("model.layers.0.self_attn.q_proj", r".*\.(k|v)_proj", False),
    ],
)
def test_regex_is_a_full_match(key, regex, expected):
    assert name_matches(key, regex) is expected


def test_partial_word_does_not_match_in_a_model():
    keys = find_targets(Toy(), LoraConfig(target_modules=["proj"]))
    assert keys == ["blocks.0.proj", "blocks.1.proj"]  # not blocks.*.q_proj
    keys = find_targets(llama4(), LoraConfig(target_modules=["self_attn.q_proj"]))
    assert keys == [_proj_key(i, "q_proj") for i in range(4)]


def test_find_targets_returns_model_order():
    keys = find_targets(tiny_llama(), LoraConfig(target_modules=["v_proj", "q_proj"]))
    assert keys == [_proj_key(0, "q_proj"), _proj_key(0, "v_proj"), _proj_key(1, "q_proj"), _proj_key(1, "v_proj")]


def test_regex_targets_in_a_model():
    keys = find_targets(llama4(), LoraConfig(target_modules=r".*\.[12]\.self_attn\.(q|k)_proj"))
    assert keys == [_proj_key(1, "q_proj"), _proj_key(1, "k_proj"), _proj_key(2, "q_proj"), _proj_key(2, "k_proj")]


# ---------------------------------------------------------------------------------------------
# all-linear


def test_all_linear_on_llama_takes_every_projection_but_not_lm_head():
    keys = find_targets(llama4(), LoraConfig(target_modules="all-linear", task_type="CAUSAL_LM"))
    assert sorted(keys) == sorted(_proj_key(i, n) for i in range(4) for n in LLAMA_PROJ)
    assert "lm_head" not in keys
    assert not any("embed_tokens" in k or "norm" in k for k in keys)


def test_all_linear_is_case_insensitive():
    model = tiny_llama()
    assert find_targets(model, LoraConfig(target_modules="ALL-LINEAR")) == find_targets(
        model, LoraConfig(target_modules="all-linear")
    )


def test_all_linear_on_gpt2_takes_conv1d_but_not_lm_head():
    model = tiny_gpt2()
    keys = find_targets(model, LoraConfig(target_modules="all-linear"))
    expected = {
        f"transformer.h.{i}.{name}" for i in range(2) for name in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    }
    assert set(keys) == expected and len(keys) == len(expected)
    assert "lm_head" not in keys
    assert all(type(model.get_submodule(k)).__name__ == "Conv1D" for k in keys)


def test_all_linear_on_bert_seq_cls_skips_the_classifier():
    keys = find_targets(tiny_bert_classifier(), LoraConfig(target_modules="all-linear", task_type="SEQ_CLS"))
    assert "classifier" not in keys
    assert "bert.pooler.dense" in keys
    assert "bert.encoder.layer.1.attention.self.query" in keys
    assert len(keys) == 2 * 6 + 1  # q, k, v, attn out, intermediate, output per layer + pooler


def test_all_linear_on_bert_token_cls_skips_the_classifier():
    keys = find_targets(tiny_bert_token_classifier(), LoraConfig(target_modules="all-linear", task_type="TOKEN_CLS"))
    assert "classifier" not in keys
    assert len(keys) == 2 * 6


def test_all_linear_on_a_toy_module():
    keys = find_targets(Toy(), LoraConfig(target_modules="all-linear"))
    assert keys == ["blocks.0.q_proj", "blocks.0.proj", "blocks.1.q_proj", "blocks.1.proj", "head"]


# ---------------------------------------------------------------------------------------------
# exclude_modules


def test_exclude_modules_as_list():
    cfg = LoraConfig(target_modules=["q_proj", "k_proj", "v_proj"], exclude_modules=["k_proj"])
    keys = find_targets(llama4(), cfg)
    assert keys == [_proj_key(i, n) for i in range(4) for n in ("q_proj", "v_proj")]


def test_exclude_modules_list_uses_name_rules():
    # "proj" is not a word of "q_proj": excluding it removes nothing (and says so, as peft does)
    cfg = LoraConfig(target_modules=["q_proj"], exclude_modules=["proj"])
    with pytest.warns(pk.PeftWarning, match="no modules were excluded"):
        assert len(find_targets(llama4(), cfg)) == 4
    cfg = LoraConfig(target_modules=["q_proj"], exclude_modules=["model.layers.2.self_attn.q_proj"])
    assert find_targets(llama4(), cfg) == [_proj_key(i, "q_proj") for i in (0, 1, 3)]


def test_exclude_modules_as_regex():
    cfg = LoraConfig(target_modules="all-linear", exclude_modules=r".*\.layers\.[01]\..*|.*\.mlp\..*")
    keys = find_targets(llama4(), cfg)
    assert sorted(keys) == sorted(_proj_key(i, n) for i in (2, 3) for n in LLAMA_PROJ[:4])


def test_exclude_everything_is_a_target_error_that_mentions_exclude():
    cfg = LoraConfig(target_modules=["q_proj"], exclude_modules=["q_proj"])
    with pytest.raises(TargetError, match="exclude_modules"):
        find_targets(tiny_llama(), cfg)


# ---------------------------------------------------------------------------------------------
# layers_to_transform / layers_pattern


@pytest.mark.parametrize("layers_pattern", [None, "layers", ["h", "layers"]])
@pytest.mark.parametrize("layers, expected", [(1, [1]), ([0, 3], [0, 3]), ([2], [2])])
def test_layers_to_transform(layers, expected, layers_pattern):
    cfg = LoraConfig(target_modules=["q_proj", "v_proj"], layers_to_transform=layers, layers_pattern=layers_pattern)
    keys = find_targets(llama4(), cfg)
    assert keys == [_proj_key(i, n) for i in expected for n in ("q_proj", "v_proj")]


def test_layers_pattern_that_names_no_block_matches_nothing():
    cfg = LoraConfig(target_modules=["q_proj"], layers_to_transform=[0], layers_pattern="blocks")
    with pytest.raises(TargetError, match="layers_to_transform"):
        find_targets(llama4(), cfg)


def test_layers_to_transform_out_of_range_matches_nothing():
    cfg = LoraConfig(target_modules=["q_proj"], layers_to_transform=[7])
    with pytest.raises(TargetError, match=r"layers_to_transform=\[7\]"):
        find_targets(llama4(), cfg)


def test_layers_to_transform_on_gpt2_with_pattern():
    cfg = LoraConfig(target_modules=["c_attn", "c_fc"], layers_to_transform=1, layers_pattern="h")
    assert find_targets(tiny_gpt2(), cfg) == ["transformer.h.1.attn.c_attn", "transformer.h.1.mlp.c_fc"]


def test_modules_outside_the_block_stack_are_dropped_by_layer_filters():
    # lm_head has no layer index: with layers_to_transform set it is never selected
    cfg = LoraConfig(target_modules=["q_proj", "lm_head"], layers_to_transform=[0])
    assert find_targets(tiny_llama(), cfg) == [_proj_key(0, "q_proj")]


@pytest.mark.parametrize(
    "key, pattern, expected",
    [
        ("model.layers.3.mlp.up_proj", None, 3),
        ("model.layers.3.mlp.up_proj", "layers", 3),
        ("model.layers.3.mlp.up_proj", ["h", "layers"], 3),
        ("transformer.h.1.attn.c_attn", "h", 1),
        ("model.layers.1.mlp.experts.0.w1", None, 1),  # the block, not the expert
        ("model.layers.1.mlp.experts.0.w1", "layers", 1),
        ("lm_head", None, None),
        ("model.layers.3.mlp.up_proj", "h", None),
    ],
)
def test_layer_index(key, pattern, expected):
    assert layer_index(key, pattern) == expected


# ---------------------------------------------------------------------------------------------
# rank_pattern / alpha_pattern


@pytest.mark.parametrize(
    "key, expected",
    [
        ("model.layers.0.self_attn.q_proj", 2),  # tail name
        ("model.layers.1.mlp.gate_proj", 5),  # full key
        ("model.layers.0.mlp.gate_proj", 8),  # full key of another layer does not apply
        ("model.layers.3.self_attn.k_proj", 6),  # regex over the tail
        ("model.layers.0.self_attn.v_proj", 8),  # default
        ("model.layers.0.self_attn.xq_proj", 8),  # "q_proj" is not a word of "xq_proj"
    ],
)
def test_pattern_value(key, expected):
    patterns = {"q_proj": 2, "model.layers.1.mlp.gate_proj": 5, r"layers\.[23]\.self_attn\.k_proj": 6}
    assert pattern_value(patterns, key, 8) == expected


def test_pattern_value_first_match_wins():
    assert pattern_value({"q_proj": 2, r".*_proj": 3}, "model.layers.0.self_attn.q_proj", 8) == 2
    assert pattern_value({r".*_proj": 3, "q_proj": 2}, "model.layers.0.self_attn.q_proj", 8) == 3


PATTERN_CONFIG = dict(
    r=8,
    lora_alpha=16,
    target_modules=["q_proj", "v_proj", "gate_proj"],
    rank_pattern={"q_proj": 4, "model.layers.1.mlp.gate_proj": 2},
    alpha_pattern={"v_proj": 32, r"layers\.[23]\.mlp\.gate_proj": 4},
)


def _ranks_and_scalings(model: nn.Module, adapter: str = "default") -> dict[str, tuple[int, float]]:
    return {
        name: (module.r[adapter], module.scaling[adapter])
        for name, module in model.named_modules()
        if hasattr(module, "lora_A") and isinstance(getattr(module, "r", None), dict)
    }


def test_rank_and_alpha_pattern_end_to_end():
    model = pk.get_peft_model(llama4(), LoraConfig(**PATTERN_CONFIG))
    got = _ranks_and_scalings(model.get_base_model())
    assert got[_proj_key(0, "q_proj")] == (4, 16 / 4)
    assert got[_proj_key(0, "v_proj")] == (8, 32 / 8)
    assert got[_proj_key(0, "gate_proj")] == (8, 16 / 8)
    assert got[_proj_key(1, "gate_proj")] == (2, 16 / 2)
    assert got[_proj_key(2, "gate_proj")] == (8, 4 / 8)
    assert got[_proj_key(3, "gate_proj")] == (8, 4 / 8)
    layer = model.get_base_model().get_submodule(_proj_key(0, "q_proj"))
    assert layer.lora_A["default"].weight.shape == (4, 32)
    assert layer.lora_B["default"].weight.shape == (32, 4)


@pytest.mark.parametrize("use_rslora", [False, True])
def test_rank_and_alpha_pattern_match_peft(use_rslora):
    kwargs = dict(PATTERN_CONFIG, use_rslora=use_rslora)
    ours = _ranks_and_scalings(pk.get_peft_model(llama4(), LoraConfig(**kwargs)).get_base_model())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs_model = peft.get_peft_model(llama4(), peft.LoraConfig(**kwargs)).get_base_model()
    theirs = _ranks_and_scalings(theirs_model)
    assert set(ours) == set(theirs) and len(ours) == 12
    for key in theirs:
        assert ours[key][0] == theirs[key][0], key
        assert ours[key][1] == pytest.approx(theirs[key][1]), key


# ---------------------------------------------------------------------------------------------
# defaults when target_modules is None


@pytest.mark.parametrize(
    "factory, expected",
    [
        (tiny_llama, [_proj_key(i, n) for i in range(2) for n in ("q_proj", "v_proj")]),
        (tiny_gpt2, ["transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn"]),
        (
            tiny_bert_classifier,
            [f"bert.encoder.layer.{i}.attention.self.{n}" for i in range(2) for n in ("query", "value")],
        ),
    ],
    ids=["llama", "gpt2", "bert"],
)
def test_default_targets_when_unset(factory, expected):
    model = factory()
    cfg = LoraConfig()
    assert resolve_target_modules(model, cfg) == DEFAULT_TARGETS[model.config.model_type]
    assert find_targets(model, cfg) == expected


@pytest.mark.parametrize("model_type", ["llama", "gpt2", "bert", "t5"])
def test_default_targets_equal_peft(model_type):
    from peft.utils.constants import (
        TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_DEFAULTS,
    )

    assert DEFAULT_TARGETS[model_type] == PEFT_DEFAULTS[model_type]


def test_unknown_model_type_without_targets_is_a_clear_error():
    model = tiny_llama()
    model.config.model_type = "no-such-architecture"
    with pytest.raises(TargetError) as info:
        find_targets(model, LoraConfig())
    msg = str(info.value)
    assert "no-such-architecture" in msg and "target_modules" in msg and "all-linear" in msg


def test_plain_module_without_targets_is_a_clear_error():
    with pytest.raises(TargetError, match="target_modules"):
        find_targets(Toy(), LoraConfig())
    with pytest.raises(TargetError, match="target_modules"):
        pk.get_peft_model(Toy(), LoraConfig())


# ---------------------------------------------------------------------------------------------
# modules_to_save


def test_modules_to_save_are_never_targets():
    cfg = LoraConfig(target_modules=["q_proj", "lm_head"], modules_to_save=["lm_head"])
    keys = find_targets(tiny_llama(), cfg)
    assert "lm_head" not in keys and keys == [_proj_key(0, "q_proj"), _proj_key(1, "q_proj")]
    # a saved module's children are not targets either
    cfg = LoraConfig(target_modules=["q_proj", "v_proj"], modules_to_save=["model.layers.0.self_attn"])
    assert find_targets(tiny_llama(), cfg) == [_proj_key(1, "q_proj"), _proj_key(1, "v_proj")]
    assert not is_target("lm_head", LoraConfig(modules_to_save=["lm_head"]), ["lm_head"])


def test_modules_to_save_with_all_linear_end_to_end():
    model = pk.get_peft_model(tiny_llama(), LoraConfig(target_modules="all-linear", modules_to_save=["lm_head"]))
    base = model.get_base_model()
    assert isinstance(base.lm_head, pk.ModulesToSaveWrapper)
    assert ours_adapted_names(base) == {_proj_key(i, n) for i in range(2) for n in LLAMA_PROJ}


def ours_adapted_names(base: nn.Module) -> set[str]:
    return {name for name, module in base.named_modules() if isinstance(module, pk.AdapterLayer)}


def test_task_head_is_saved_not_adapted():
    model = pk.get_peft_model(
        tiny_bert_classifier(), LoraConfig(target_modules=["dense", "classifier"], task_type="SEQ_CLS")
    )
    base = model.get_base_model()
    assert isinstance(base.classifier, pk.ModulesToSaveWrapper)
    assert "classifier" not in ours_adapted_names(base)


def test_adapter_internals_are_not_targets_again():
    model = pk.get_peft_model(tiny_llama(), LoraConfig(target_modules="all-linear"))
    keys = find_targets(model.get_base_model(), LoraConfig(target_modules="all-linear"))
    assert len(keys) == 14
    assert not any("lora_" in k or "base_layer" in k for k in keys)


# ---------------------------------------------------------------------------------------------
# nothing matched


def test_nothing_matched_lists_module_names():
    with pytest.raises(TargetError) as info:
        find_targets(tiny_llama(), LoraConfig(target_modules=["query", "value"]))
    msg = str(info.value)
    assert "['query', 'value']" in msg and "LlamaForCausalLM" in msg
    for leaf in ("q_proj", "k_proj", "gate_proj"):
        assert leaf in msg
    assert "all-linear" in msg


def test_nothing_matched_through_get_peft_model_leaves_model_untouched():
    base = tiny_llama()
    with pytest.raises(TargetError, match="matched no module"):
        pk.get_peft_model(base, LoraConfig(target_modules=["proj"]))
    assert not any(isinstance(m, pk.AdapterLayer) for m in base.modules())


def test_target_error_is_a_value_error():
    with pytest.raises(ValueError):
        find_targets(Toy(), LoraConfig(target_modules=r"nothing"))


# ---------------------------------------------------------------------------------------------
# parity with peft: the same modules are adapted

PARITY_CASES = {
    "llama_names": (llama4, dict(target_modules=["q_proj", "v_proj"])),
    "llama_default": (llama4, dict()),
    "llama_all_linear": (llama4, dict(target_modules="all-linear", task_type="CAUSAL_LM")),
    "llama_full_key": (llama4, dict(target_modules=["model.layers.2.self_attn.q_proj", "mlp.up_proj"])),
    "llama_regex": (llama4, dict(target_modules=r".*\.[12]\.self_attn\.(q|k)_proj")),
    "llama_exclude_list": (llama4, dict(target_modules=["q_proj", "k_proj", "o_proj"], exclude_modules=["k_proj"])),
    "llama_exclude_regex": (llama4, dict(target_modules="all-linear", exclude_modules=r".*layers\.[01]\..*")),
    "llama_layers_int": (llama4, dict(target_modules=["q_proj", "v_proj"], layers_to_transform=1)),
    "llama_layers_list": (llama4, dict(target_modules=["q_proj", "v_proj"], layers_to_transform=[0, 3])),
    "llama_layers_pattern": (
        llama4,
        dict(target_modules=["q_proj", "down_proj"], layers_to_transform=[0, 3], layers_pattern="layers"),
    ),
    "llama_modules_to_save": (llama4, dict(target_modules=["q_proj", "lm_head"], modules_to_save=["lm_head"])),
    "gpt2_all_linear": (tiny_gpt2, dict(target_modules="all-linear")),
    "gpt2_default": (tiny_gpt2, dict()),
    "gpt2_c_proj": (tiny_gpt2, dict(target_modules=["c_proj"])),
    "gpt2_layers_pattern": (tiny_gpt2, dict(target_modules=["c_attn"], layers_to_transform=0, layers_pattern="h")),
    "bert_all_linear_seq_cls": (tiny_bert_classifier, dict(target_modules="all-linear", task_type="SEQ_CLS")),
    "bert_default_seq_cls": (tiny_bert_classifier, dict(task_type="SEQ_CLS")),
    "bert_dense_classifier": (tiny_bert_classifier, dict(target_modules=["dense", "classifier"], task_type="SEQ_CLS")),
    "bert_all_linear_no_task": (tiny_bert_classifier, dict(target_modules="all-linear")),
}


@pytest.mark.parametrize("case", list(PARITY_CASES))
def test_adapted_modules_equal_peft(case):
    factory, kwargs = PARITY_CASES[case]
    theirs = peft_adapted(factory(), **kwargs)
    assert theirs, "peft adapted nothing: the case is wrong"
    assert ours_adapted(factory(), **kwargs) == theirs
    if not kwargs.get("task_type"):  # without a task head, find_targets alone agrees too
        assert set(find_targets(factory(), LoraConfig(**kwargs))) == theirs


def test_empty_layers_to_transform_means_every_layer_as_in_peft():
    # peft treats layers_to_transform=[] like None ("no layer filter").
    kwargs = dict(target_modules=["q_proj"], layers_to_transform=[])
    theirs = peft_adapted(llama4(), **kwargs)
    assert theirs == {_proj_key(i, "q_proj") for i in range(4)}
    assert set(find_targets(llama4(), LoraConfig(**kwargs))) == theirs


def test_pattern_keys_that_select_no_adapted_module_warn():
    """A typo in rank_pattern / alpha_pattern would silently train with the default rank: peft's
    RuntimeWarning names exactly the keys that matched nothing, for every adapter added."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # keys that match stay silent
        model = pk.get_peft_model(tiny_llama(), LoraConfig(target_modules=["q_proj", "v_proj"], rank_pattern={"q_proj": 2}))
    with pytest.warns(RuntimeWarning) as record:
        model.add_adapter("other", LoraConfig(target_modules=["q_proj"], rank_pattern={"q_proj": 2, "v_prj": 4},
                                              alpha_pattern={"typo": 3}))
    messages = sorted(str(w.message) for w in record if "did not match any targeted module" in str(w.message))
    assert len(messages) == 2
    assert messages[0].startswith("The following alpha_pattern keys did not match any targeted module and were ignored: ['typo']")
    assert messages[1].startswith("The following rank_pattern keys did not match any targeted module and were ignored: ['v_prj']")


# ---------------------------------------------------------------------------------------------
# nothing adapted: peft's NoMatchingPeftModuleError and sentence per case, compared with peft


class ThreeLayers(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin0 = nn.Linear(4, 4)
        self.relu = nn.ReLU()
        self.lin1 = nn.Linear(4, 2)

    def forward(self, x):
        return self.lin1(self.relu(self.lin0(x)))


NO_MATCH_CASES = {
    "unmatched": (dict(target_modules=["nope"]), "Target modules .* not found in the base model"),
    "all_excluded": (dict(target_modules=["lin0", "lin1", "relu"], exclude_modules=["lin0", "lin1", "relu"]),
                     "All modules were excluded"),
    "excluded_and_unmatched": (dict(target_modules=["lin0", "nope"], exclude_modules=["lin0"]),
                               "No modules were targeted for adaptation"),
    "only_modules_to_save": (dict(target_modules=["lin0"], modules_to_save=["lin0"]),
                             "No modules were targeted for adaptation"),
}


@pytest.mark.parametrize("case", list(NO_MATCH_CASES))
def test_nothing_adapted_raises_peft_error_and_sentence(case):
    kwargs, sentence = NO_MATCH_CASES[case]
    with pytest.raises(pk.NoMatchingPeftModuleError, match=sentence) as ours:
        pk.get_peft_model(ThreeLayers(), LoraConfig(**kwargs))
    assert isinstance(ours.value, TargetError) and isinstance(ours.value, ValueError)
    assert "Its leaf module names include: lin0, lin1, relu" in str(ours.value)  # peftkit's detail follows
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(peft.NoMatchingPeftModuleError, match=sentence):
            peft.get_peft_model(ThreeLayers(), peft.LoraConfig(**kwargs))


def test_second_adapter_matching_nothing_raises_and_leaves_the_first():
    model = pk.get_peft_model(ThreeLayers(), LoraConfig(target_modules=["lin0"]))
    with pytest.raises(pk.NoMatchingPeftModuleError, match="No modules were targeted for adaptation"):
        model.add_adapter("other", LoraConfig(target_modules=["nope"], modules_to_save=["lin1"]))
    assert list(model.peft_config) == ["default"]
    assert not isinstance(model.get_base_model().lin1, pk.ModulesToSaveWrapper)


def test_exclude_modules_that_exclude_nothing_warn_as_peft():
    sentence = r"You have passed exclude_modules=.* but no modules were excluded"
    with pytest.warns(UserWarning, match=sentence):
        pk.get_peft_model(ThreeLayers(), LoraConfig(target_modules=["lin1"], exclude_modules=["nope"]))
    with pytest.warns(UserWarning, match=sentence):
        peft.get_peft_model(ThreeLayers(), peft.LoraConfig(target_modules=["lin1"], exclude_modules=["nope"]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an exclusion that removes a module stays silent
        pk.get_peft_model(ThreeLayers(), LoraConfig(target_modules=["lin0", "lin1"], exclude_modules=["lin0"]))


def test_include_all_linear_layers_expands_in_place_like_peft():
    from peft.tuners.tuners_utils import _maybe_include_all_linear_layers

    from peftkit.targets import include_all_linear_layers

    config = LoraConfig(target_modules="ALL-LINEAR")
    assert include_all_linear_layers(config, tiny_llama()) is config
    theirs = _maybe_include_all_linear_layers(peft.LoraConfig(target_modules="all-linear"), tiny_llama())
    assert set(config.target_modules) == set(theirs.target_modules)
    assert "lm_head" not in config.target_modules
    names = LoraConfig(target_modules=["q_proj"])
    assert include_all_linear_layers(names, tiny_llama()).target_modules == ["q_proj"]


@pytest.mark.parametrize("layers_pattern", ["", []])
def test_empty_layers_pattern_means_no_pattern_as_in_peft(layers_pattern):
    config = LoraConfig(target_modules=["baz"], layers_to_transform=[1], layers_pattern=layers_pattern)
    assert check_target_module_exists(config, "foo.whatever.1.baz")
    assert not check_target_module_exists(config.model_copy(update={"layers_to_transform": [0]}),
                                                     "foo.whatever.1.baz")
    theirs = peft.LoraConfig(target_modules=["baz"], layers_to_transform=[1], layers_pattern=layers_pattern)
    assert bool(peft.tuners.tuners_utils.check_target_module_exists(theirs, "foo.whatever.1.baz"))


def test_targeted_module_names_once_each_in_the_order_adapters_added_them():
    ours = pk.get_peft_model(ThreeLayers(), LoraConfig(target_modules=["lin1"]))
    ours.add_adapter("other", LoraConfig(target_modules=["lin0", "lin1"]))
    theirs = peft.get_peft_model(ThreeLayers(), peft.LoraConfig(target_modules=["lin1"]))
    theirs.add_adapter("other", peft.LoraConfig(target_modules=["lin0", "lin1"]))
    assert ours.targeted_module_names == ours.base_model.targeted_module_names == ["lin1", "lin0"]
    assert theirs.base_model.targeted_module_names == ["lin1", "lin0"]


def test_default_target_modules_read_as_peft_reads_them(monkeypatch):
    """model_type from config.to_dict(), a str default kept as a regex, peft's sentence without one."""
    from unittest.mock import MagicMock

    import pytest
    import torch.nn as nn

    import peftkit as pk
    from peftkit.targets import DEFAULT_TARGETS

    class Mlp(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin0, self.lin1 = nn.Linear(4, 4), nn.Linear(4, 4)

    model = Mlp()
    model.config = MagicMock()
    model.config.to_dict.return_value = {"model_type": "foobar"}
    with pytest.raises(ValueError, match="Please specify `target_modules`"):
        pk.get_peft_model(model, pk.LoraConfig())
    monkeypatch.setitem(DEFAULT_TARGETS, "foobar", "lin0")
    peft_model = pk.get_peft_model(model, pk.LoraConfig())
    assert peft_model.targeted_module_names == ["lin0"]
    assert peft_model.peft_config["default"].target_modules == "lin0"
