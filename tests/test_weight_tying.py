"""``LoraConfig.ensure_weight_tying`` (peftkit.weight_tying, peftkit.methods.lora_tying) on a tiny
Llama whose LM head shares the input embedding's table (``tie_word_embeddings=True``): which modules
are tied, the shared adapter, merging once, peft's warnings, and checkpoints in both directions
with the real ``peft``."""

from __future__ import annotations

import json
import warnings

import peft
import pytest
import torch
from safetensors.torch import load_file
from tiny_models import example_inputs, make_model, model_outputs, randomize_lora_weights

import peftkit as pk
from peftkit.methods.lora_layers import LoraEmbedding, LoraLinear
from peftkit.modules_to_save import ModulesToSaveWrapper
from peftkit.weight_tying import TiedWeight, tied_module_names

pytestmark = [
    pytest.mark.usefixtures("torch_single_thread"),
    pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning"),
    pytest.mark.filterwarnings("ignore:Setting `save_embedding_layers`:UserWarning"),
]

ATOL = 1e-5


def tied_llama(**overrides):
    return make_model("llama", tie_word_embeddings=True, **overrides)


def lora(**kwargs):
    return dict(r=4, lora_alpha=8, init_lora_weights=False, ensure_weight_tying=True, **kwargs)


# route id -> LoraConfig kwargs: the embedding or the head, named in target_modules or modules_to_save
ROUTES = {
    "target_embedding": dict(target_modules=["q_proj", "embed_tokens"]),
    "target_head": dict(target_modules=["q_proj", "lm_head"]),
    "target_regex": dict(target_modules=r".*(q_proj|embed_tokens)"),
    "saved_embedding": dict(target_modules=["q_proj"], modules_to_save=["embed_tokens"]),
    "saved_head": dict(target_modules=["q_proj"], modules_to_save=["lm_head"]),
}


def test_tied_module_names_follow_the_shared_weight_and_the_config():
    assert tied_module_names(tied_llama()) == ["lm_head"]
    assert tied_module_names(make_model("llama")) == []  # untied: its own head
    model = tied_llama()
    model.config.tie_word_embeddings = False  # shared by chance, not tied (peft #2944)
    assert tied_module_names(model) == []


@pytest.mark.parametrize("route", ["target_embedding", "target_head", "target_regex"])
def test_target_route_shares_the_embedding_adapter(route):
    model = pk.get_peft_model(tied_llama(), pk.LoraConfig(**lora(**ROUTES[route])))
    embed, head = model.base_model.model.model.embed_tokens, model.base_model.model.lm_head
    assert isinstance(embed, LoraEmbedding) and isinstance(head, LoraLinear)
    assert isinstance(head.lora_A["default"], TiedWeight)
    # peft's layout: the head's A is the embedding's B transposed and the head's B the embedding's A
    assert head.lora_A["default"].weight.data_ptr() == embed.lora_embedding_B["default"].data_ptr()
    assert head.lora_B["default"].weight.data_ptr() == embed.lora_embedding_A["default"].data_ptr()
    assert torch.equal(head.lora_B["default"].weight, embed.lora_embedding_A["default"].T)
    # one parameter: the head's use of the adapter trains the embedding's tensors
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert not any("lm_head" in n for n in trainable)
    model.train()
    model(**example_inputs("llama")).loss.backward()
    grad_b = embed.lora_embedding_B["default"].grad
    assert grad_b is not None and grad_b.abs().sum() > 0  # the embedding lookup alone gives B a gradient too
    grad_a = embed.lora_embedding_A["default"].grad
    unused_tokens = grad_a.abs().sum(0) == 0
    assert not unused_tokens.all()


@pytest.mark.parametrize("route", list(ROUTES))
def test_merge_adds_the_shared_delta_once_and_stays_tied(route):
    model = pk.get_peft_model(tied_llama(), pk.LoraConfig(**lora(**ROUTES[route])))
    randomize_lora_weights(model)
    inputs = example_inputs("llama")
    before = model_outputs(model, inputs)["logits"]
    base_weight = model.base_model.model.model.embed_tokens.weight.detach().clone()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "merging unties it": the tie is kept on purpose
        model.merge_adapter()
    assert torch.allclose(model_outputs(model, inputs)["logits"], before, atol=ATOL)
    model.unmerge_adapter()
    assert torch.allclose(model.base_model.model.model.embed_tokens.weight, base_weight, atol=ATOL)
    merged = model.merge_and_unload()
    assert merged.lm_head.weight is merged.model.embed_tokens.weight
    assert merged.config.tie_word_embeddings is True
    assert torch.allclose(model_outputs(merged, inputs)["logits"], before, atol=ATOL)


@pytest.mark.parametrize("route", ["saved_embedding", "saved_head"])
def test_saved_modules_route_shares_one_trained_table(route):
    model = pk.get_peft_model(tied_llama(), pk.LoraConfig(**lora(**ROUTES[route])))
    embed, head = model.base_model.model.model.embed_tokens, model.base_model.model.lm_head
    assert isinstance(embed, ModulesToSaveWrapper) and isinstance(head, ModulesToSaveWrapper)
    assert head.modules_to_save["default"].weight is embed.modules_to_save["default"].weight
    assert head.original_module.weight is embed.original_module.weight


def test_without_ensure_weight_tying_peft_warns_and_nothing_is_tied():
    config = pk.LoraConfig(r=4, target_modules=["q_proj", "lm_head"])
    with pytest.warns(UserWarning, match="`ensure_weight_tying` is not set to True"):
        model = pk.get_peft_model(tied_llama(), config)
    assert isinstance(model.base_model.model.model.embed_tokens, torch.nn.Embedding)
    assert not isinstance(model.base_model.model.lm_head.lora_A["default"], TiedWeight)


@pytest.mark.parametrize("model_fn, kwargs, message", [
    (lambda: make_model("llama"), dict(target_modules=["q_proj", "lm_head"]), "no tied modules were found in the model"),
    (tied_llama, dict(target_modules=["q_proj"]), "no tied modules are added"),
    (tied_llama, dict(target_modules="all-linear"), "no tied modules are added"),
    # peft's rule, kept so that a config ties the same way in both libraries: a regex names the
    # embedding when it matches the bare name "embed_tokens" or "lm_head", and this one does not
    (tied_llama, dict(target_modules=r".*\.(q_proj|embed_tokens)"), "no tied modules are added"),
])
def test_ensure_weight_tying_with_nothing_to_tie_warns(model_fn, kwargs, message):
    with pytest.warns(UserWarning, match=message):
        model = pk.get_peft_model(model_fn(), pk.LoraConfig(r=4, ensure_weight_tying=True, **kwargs))
    assert not any(isinstance(m, TiedWeight) for m in model.modules())


def test_methods_that_cannot_tie_say_so():
    with pytest.warns(UserWarning, match="no implementation exists to tie the adapters"):
        pk.get_peft_model(tied_llama(), pk.LoHaConfig(target_modules=["q_proj", "lm_head"]))


def test_dora_cannot_be_tied():
    with pytest.raises(pk.errors.TargetError, match="DoRA adapters cannot be tied"):
        pk.get_peft_model(tied_llama(), pk.LoraConfig(**lora(target_modules=["embed_tokens"], use_dora=True)))


def test_delete_adapter_leaves_the_model_as_it_was():
    model = pk.get_peft_model(tied_llama(), pk.LoraConfig(**lora(target_modules=["embed_tokens"])))
    model.add_adapter("other", pk.LoraConfig(**lora(target_modules=["lm_head"])))
    model.delete_adapter("default")
    head = model.base_model.model.lm_head
    assert set(head.tied_layers) == {"other"} and set(head.lora_A) == {"other"}
    plain = model.unload()
    assert plain.lm_head.weight is plain.model.embed_tokens.weight


# ------------------------------------------------------------------------------ files and real peft


@pytest.mark.parametrize("route", list(ROUTES))
def test_peft_saves_peftkit_loads(route, tmp_path):
    inputs = example_inputs("llama")
    theirs = peft.get_peft_model(tied_llama(), peft.LoraConfig(**lora(**ROUTES[route])))
    randomize_lora_weights(theirs)
    expected = model_outputs(theirs, inputs)
    theirs.save_pretrained(tmp_path)
    ours = pk.PeftModel.from_pretrained(tied_llama(), tmp_path)
    got = model_outputs(ours, inputs)
    assert torch.allclose(got["logits"], expected["logits"], atol=ATOL)
    # the keys peftkit writes are peft's (peft adds the base embedding tables on its own "auto" rule)
    ours.save_pretrained(tmp_path / "again")
    theirs_keys = {k for k in load_file(tmp_path / "adapter_model.safetensors") if not k.endswith("base_layer.weight")}
    assert set(load_file(tmp_path / "again" / "adapter_model.safetensors")) == theirs_keys


@pytest.mark.parametrize("route", list(ROUTES))
def test_peftkit_saves_peft_loads(route, tmp_path):
    inputs = example_inputs("llama")
    ours = pk.get_peft_model(tied_llama(), pk.LoraConfig(**lora(**ROUTES[route])))
    randomize_lora_weights(ours)
    expected = model_outputs(ours, inputs)
    ours.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["ensure_weight_tying"] is True
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        theirs = peft.PeftModel.from_pretrained(tied_llama(), tmp_path)
    assert not [w for w in caught if "missing" in str(w.message).lower()]
    assert torch.allclose(model_outputs(theirs, inputs)["logits"], expected["logits"], atol=ATOL)
    head = theirs.base_model.model.lm_head
    if hasattr(head, "lora_A"):  # peft tied it again on loading
        embed = theirs.base_model.model.model.embed_tokens
        assert head.lora_A["default"].weight.data_ptr() == embed.lora_embedding_B["default"].data_ptr()


def test_config_field_round_trip(tmp_path):
    pk.LoraConfig(target_modules=["q_proj"], ensure_weight_tying=True).save_pretrained(tmp_path)
    assert pk.PeftConfig.from_pretrained(tmp_path).ensure_weight_tying is True
    assert pk.LoraConfig().ensure_weight_tying is False


@pytest.mark.parametrize("kwargs", [dict(target_modules=["q", "lm_head"]), dict(target_modules=["q"], modules_to_save=["lm_head"])],
                         ids=["target_modules", "modules_to_save"])
def test_encoder_decoder_ties_every_copy_and_round_trips(kwargs, tmp_path):
    # T5 with tie_word_embeddings=True: shared, both stacks' embed_tokens and lm_head hold one table.
    # (peft 0.21.2 itself breaks here: its modules_to_save route gives the embeddings nn.Linear copies,
    # and its target route saves target_modules={"q", "shared"}, which it does not tie again on loading.)
    assert tied_module_names(make_model("t5", tie_word_embeddings=True)) == ["decoder.embed_tokens", "encoder.embed_tokens", "lm_head"]
    inputs = example_inputs("t5")
    model = pk.get_peft_model(make_model("t5", tie_word_embeddings=True), pk.LoraConfig(**lora(**kwargs)))
    randomize_lora_weights(model)
    expected = model_outputs(model, inputs)["logits"]
    inner = model.base_model.model
    if "modules_to_save" in kwargs:
        tables = [m.modules_to_save["default"].weight for m in (inner.shared, inner.encoder.embed_tokens, inner.lm_head)]
        assert all(t is tables[0] for t in tables)
    else:
        assert inner.encoder.embed_tokens.lora_embedding_A["default"] is inner.shared.lora_embedding_A["default"]
        assert inner.lm_head.lora_B["default"].weight.data_ptr() == inner.shared.lora_embedding_A["default"].data_ptr()
    model.save_pretrained(tmp_path)
    for low_cpu_mem_usage in (False, True):
        loaded = pk.PeftModel.from_pretrained(make_model("t5", tie_word_embeddings=True), tmp_path,
                                              low_cpu_mem_usage=low_cpu_mem_usage)
        assert torch.allclose(model_outputs(loaded, inputs)["logits"], expected, atol=ATOL)
    merged = model.merge_and_unload()
    assert merged.lm_head.weight is merged.shared.weight
    assert torch.allclose(model_outputs(merged, inputs)["logits"], expected, atol=1e-4)
