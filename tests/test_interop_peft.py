"""Interop with the real Hugging Face ``peft`` package, in both directions.

Every checkpoint is made by one library and read by the other, on tiny random models of four
families (Llama, GPT-2 with ``Conv1D``, BERT sequence/token classifiers, T5), with LoRA weights
randomized so that ``lora_B`` is not zero. ``peft`` is the reference: we compare against what it
does, never against our own idea of the format.

  (a) peft saves    -> peftkit loads: same outputs, same adapter state dict
  (b) peftkit saves -> peft loads:    same outputs
  (c) files: adapter_config.json fields, safetensors key set, multi-adapter sub-folders
  (d) merge_and_unload() gives the same merged model outputs as peft's
  (e) mixed batches (``adapter_names=[...]``) give the same outputs as peft's
"""

from __future__ import annotations

import json
from pathlib import Path

import peft
import pytest
import torch
from peft.tuners.tuners_utils import check_target_module_exists
from safetensors.torch import load_file
from tiny_models import (
    FAMILIES,
    TASK_TYPES,
    example_inputs,
    make_model,
    model_outputs,
    randomize_lora_weights,
)

import peftkit as pk

pytestmark = [
    pytest.mark.usefixtures("torch_single_thread"),
    pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning"),
]

ATOL = RTOL = 1e-5

# case id -> (family, LoraConfig kwargs on top of r=8, lora_alpha=16, task_type=<family's>)
CASES: dict[str, tuple[str, dict]] = {
    "llama": ("llama", dict(target_modules=["q_proj", "v_proj", "gate_proj"])),
    "gpt2_conv1d": ("gpt2", dict(target_modules=["c_attn", "c_fc"], fan_in_fan_out=True)),
    "bert_seq_cls": ("bert", dict(target_modules=["query", "value"])),
    "bert_token_cls": ("bert_tok", dict(target_modules=["query", "key"], lora_dropout=0.1)),
    "t5_seq2seq": ("t5", dict(target_modules=["q", "v", "wi"])),
    "llama_all_linear": ("llama", dict(target_modules="all-linear")),
    "t5_all_linear": ("t5", dict(target_modules="all-linear", r=4)),
    "llama_rank_alpha_pattern": (
        "llama",
        dict(
            target_modules=["q_proj", "v_proj", "gate_proj"],
            rank_pattern={"q_proj": 4, "model.layers.1.mlp.gate_proj": 2},
            alpha_pattern={"v_proj": 32, "gate_proj": 4},
        ),
    ),
    "llama_rslora": ("llama", dict(target_modules=["q_proj", "o_proj"], r=16, lora_alpha=8, use_rslora=True)),
    "llama_layers_to_transform": ("llama", dict(target_modules=["q_proj", "v_proj"], layers_to_transform=[1])),
    "gpt2_layers_pattern": (
        "gpt2",
        dict(target_modules=["c_attn"], fan_in_fan_out=True, layers_to_transform=0, layers_pattern="h"),
    ),
    "llama_embedding": ("llama", dict(target_modules=["embed_tokens", "q_proj"])),
    "gpt2_bias_all": ("gpt2", dict(target_modules=["c_attn"], fan_in_fan_out=True, bias="all")),
    "bert_bias_lora_only": ("bert", dict(target_modules=["query"], bias="lora_only")),
    "llama_regex_modules_to_save": (
        "llama",
        dict(target_modules=r".*\.(k_proj|up_proj)", modules_to_save=["lm_head"]),
    ),
}

# Which parameters `randomize_lora_weights` perturbs per case ("trained" values): always the LoRA
# tensors and modules_to_save copies, plus the biases that the case's `bias=` setting saves.
_RANDOMIZE = ("lora_", "modules_to_save.")
RANDOMIZE_PATTERNS = {
    "gpt2_bias_all": _RANDOMIZE + ("bias",),
    "bert_bias_lora_only": _RANDOMIZE + ("base_layer.bias",),
}

# Config fields whose value peftkit must write exactly as peft does.
CONFIG_FIELDS = (
    "peft_type",
    "task_type",
    "r",
    "lora_alpha",
    "lora_dropout",
    "use_rslora",
    "bias",
    "fan_in_fan_out",
    "layers_to_transform",
    "layers_pattern",
    "rank_pattern",
    "alpha_pattern",
    "use_dora",
    "inference_mode",
)


def case_setup(case: str) -> tuple[str, dict]:
    family, extra = CASES[case]
    kwargs = dict(r=8, lora_alpha=16, task_type=TASK_TYPES[family])
    kwargs.update(extra)
    return family, kwargs


def randomize(model, case: str | None, seed: int) -> None:
    randomize_lora_weights(model, seed=seed, patterns=RANDOMIZE_PATTERNS.get(case, _RANDOMIZE))


def adapter_dir(root: Path, adapter_name: str = "default") -> Path:
    """Where peft's save_pretrained puts an adapter: the root for "default", else a sub-folder."""
    return root if adapter_name == "default" else root / adapter_name


def assert_outputs_close(got: dict, want: dict, what: str = "") -> None:
    assert got.keys() == want.keys(), what
    for key in want:
        torch.testing.assert_close(
            got[key], want[key], atol=ATOL, rtol=RTOL, msg=lambda m, key=key: f"{what} {key}: {m}"
        )


def assert_outputs_differ(a: dict, b: dict) -> None:
    """Guard against vacuous comparisons: the adapter must visibly change the model."""
    assert not torch.allclose(a["logits"], b["logits"], atol=1e-4), "adapter has no effect on the outputs"


def assert_state_dicts_equal(got: dict, want: dict, what: str = "") -> None:
    assert sorted(got) == sorted(want), (
        f"{what}: key sets differ: only in got {sorted(set(got) - set(want))}, "
        f"only in want {sorted(set(want) - set(got))}"
    )
    for key in want:
        assert got[key].shape == want[key].shape, f"{what}: {key}: {tuple(got[key].shape)} != {tuple(want[key].shape)}"
        assert torch.equal(got[key].detach().cpu(), want[key].detach().cpu()), f"{what}: {key}: values differ"


def adapted_by_peft(config, module_keys) -> list[str]:
    """The modules that peft's own matching rules adapt under ``config``."""
    return [key for key in module_keys if check_target_module_exists(config, key)]


def base_outputs(family: str, inputs: dict) -> dict:
    return model_outputs(make_model(family), inputs)


def trainable_numels(model) -> tuple[int, int]:
    params = [p for p in model.parameters() if p.requires_grad]
    return len(params), sum(p.numel() for p in params)


# ---------------------------------------------------------------------------------------------
# sanity of the fixtures themselves


def test_tiny_models_are_deterministic():
    for family in FAMILIES:
        a, b = make_model(family), make_model(family)
        assert not a.training and next(a.parameters()).dtype == torch.float32
        for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
            assert torch.equal(x, y), f"{family}: {name} differs between two factory calls"


# peft's save_embedding_layers="auto" writes the whole embedding table when an embedding is
# targeted; peftkit writes it only when asked (README: it is needed only after a vocabulary
# resize). These cases compare with the table asked for; test_embedding_table_is_opt_in covers the default.
SAVES_EMBEDDING_TABLE = {"llama_embedding"}


def test_auto_embedding_choice_is_peft_s(tmp_path):
    """save_embedding_layers="auto", asked for, decides as peft's default does: an adapted
    embed_tokens writes the table, with peft's warning, and the file has peft's keys."""
    family, kwargs = case_setup("llama_embedding")
    model = pk.get_peft_model(make_model(family), pk.LoraConfig(**kwargs))
    with pytest.warns(UserWarning, match="Setting `save_embedding_layers` to `True` as embedding layers found"):
        model.save_pretrained(tmp_path / "pk", save_embedding_layers="auto")
    peft.get_peft_model(make_model(family), peft.LoraConfig(**kwargs)).save_pretrained(tmp_path / "peft")
    keys = [set(load_file(tmp_path / lib / "adapter_model.safetensors")) for lib in ("pk", "peft")]
    assert keys[0] == keys[1] and any(k.endswith("embed_tokens.base_layer.weight") for k in keys[0])
    family, kwargs = case_setup("llama")  # nothing adapted is an embedding, the vocabulary unchanged
    plain = pk.get_peft_model(make_model(family), pk.LoraConfig(**kwargs))
    assert not any(k.endswith("base_layer.weight") for k in pk.get_peft_model_state_dict(plain, save_embedding_layers="auto"))


def test_embedding_table_is_opt_in(tmp_path):
    family, kwargs = case_setup("llama_embedding")
    model = pk.get_peft_model(make_model(family), pk.LoraConfig(**kwargs))
    randomize(model, "llama_embedding", seed=3)
    model.save_pretrained(tmp_path)
    keys = load_file(tmp_path / "adapter_model.safetensors").keys()
    assert not any(k.endswith("base_layer.weight") for k in keys)
    # without the table the file still loads in peft with the same outputs
    inputs = example_inputs(family)
    ref = peft.PeftModel.from_pretrained(make_model(family), tmp_path)
    assert_outputs_close(model_outputs(ref, inputs), model_outputs(model, inputs), "peft loading peftkit's small file")


# ---------------------------------------------------------------------------------------------
# (a) peft -> peftkit


@pytest.mark.parametrize("case", CASES)
def test_peft_checkpoint_loads_in_peftkit(case, tmp_path):
    family, kwargs = case_setup(case)
    inputs = example_inputs(family)
    ref = peft.get_peft_model(make_model(family), peft.LoraConfig(**kwargs)).eval()
    randomize(ref, case, seed=1)
    ref.save_pretrained(tmp_path)
    want = model_outputs(ref, inputs)
    assert_outputs_differ(want, base_outputs(family, inputs))

    model = pk.PeftModel.from_pretrained(make_model(family), tmp_path)
    assert_outputs_close(model_outputs(model, inputs), want, f"{case}: peftkit loading peft's checkpoint")

    saved = load_file(tmp_path / "adapter_model.safetensors")
    with_table = case in SAVES_EMBEDDING_TABLE
    got = pk.get_peft_model_state_dict(model, save_embedding_layers=with_table)
    assert_state_dicts_equal(got, saved, f"{case}: peftkit state dict vs file")
    # Loaded for inference, nothing is trainable. (peft 0.21 leaves the biases of bias="all" /
    # "lora_only" trainable here, a quirk not worth copying; is_trainable=True is compared below.)
    assert trainable_numels(model) == (0, 0), f"{case}: trainable after from_pretrained(is_trainable=False)"


def test_loaded_adapter_is_in_eval_mode_like_peft(tmp_path):
    """peft's from_pretrained/load_adapter (is_trainable=False) end with model.eval(), so an adapter
    with lora_dropout > 0 is deterministic right after loading."""
    family, kwargs = case_setup("bert_token_cls")  # lora_dropout=0.1
    ref = peft.get_peft_model(make_model(family), peft.LoraConfig(**kwargs))
    ref.save_pretrained(tmp_path)
    for lib in (peft, pk):
        model = lib.PeftModel.from_pretrained(make_model(family), tmp_path)
        training = [name for name, m in model.named_modules() if m.training]
        assert not training, f"{lib.__name__}: in training mode after from_pretrained: {training[:6]}"
        model.train()
        model.load_adapter(tmp_path, adapter_name="other")
        training = [name for name, m in model.named_modules() if m.training]
        assert not training, f"{lib.__name__}: in training mode after load_adapter: {training[:6]}"


@pytest.mark.parametrize(
    "case", ["llama", "gpt2_bias_all", "bert_seq_cls", "t5_seq2seq", "llama_embedding", "llama_regex_modules_to_save"]
)
def test_is_trainable_matches_peft(case, tmp_path):
    family, kwargs = case_setup(case)
    ref = peft.get_peft_model(make_model(family), peft.LoraConfig(**kwargs))
    ref.save_pretrained(tmp_path)
    want = trainable_numels(peft.PeftModel.from_pretrained(make_model(family), tmp_path, is_trainable=True))
    assert want == trainable_numels(ref)
    got = trainable_numels(pk.PeftModel.from_pretrained(make_model(family), tmp_path, is_trainable=True))
    assert got == want, f"{case}: (tensors, elements) trainable in peftkit {got} vs peft {want}"


# ---------------------------------------------------------------------------------------------
# (b) peftkit -> peft


@pytest.mark.parametrize("case", CASES)
def test_peftkit_checkpoint_loads_in_peft(case, tmp_path):
    family, kwargs = case_setup(case)
    inputs = example_inputs(family)
    model = pk.get_peft_model(make_model(family), pk.LoraConfig(**kwargs)).eval()
    randomize(model, case, seed=2)
    model.save_pretrained(tmp_path)
    want = model_outputs(model, inputs)
    assert_outputs_differ(want, base_outputs(family, inputs))

    ref = peft.PeftModel.from_pretrained(make_model(family), tmp_path)
    assert_outputs_close(model_outputs(ref, inputs), want, f"{case}: peft loading peftkit's checkpoint")
    # peft loaded every tensor of the file (the key set itself is compared in test_saved_files_match_peft)
    saved = load_file(tmp_path / "adapter_model.safetensors")
    loaded = peft.get_peft_model_state_dict(ref)
    assert not set(saved) - set(loaded), f"{case}: file keys peft did not load: {sorted(set(saved) - set(loaded))}"
    assert_state_dicts_equal({k: loaded[k] for k in saved}, saved, f"{case}: peft state dict vs file")


# ---------------------------------------------------------------------------------------------
# (c) the files


def _save_both(case: str, root: Path, adapter_name: str = "default") -> tuple[Path, Path]:
    """Save the same config once with peftkit and once with peft; return both adapter folders."""
    family, kwargs = case_setup(case)
    pk_model = pk.get_peft_model(make_model(family), pk.LoraConfig(**kwargs), adapter_name=adapter_name)
    pk_model.save_pretrained(root / "peftkit", save_embedding_layers=case in SAVES_EMBEDDING_TABLE)
    ref = peft.get_peft_model(make_model(family), peft.LoraConfig(**kwargs), adapter_name=adapter_name)
    ref.save_pretrained(root / "peft")
    return adapter_dir(root / "peftkit", adapter_name), adapter_dir(root / "peft", adapter_name)


@pytest.mark.parametrize("case", CASES)
def test_saved_files_match_peft(case, tmp_path):
    pk_dir, peft_dir = _save_both(case, tmp_path)

    # adapter_config.json: peft reads it, as a LoraConfig with the same settings
    got, want = peft.PeftConfig.from_pretrained(pk_dir), peft.PeftConfig.from_pretrained(peft_dir)
    assert type(got) is type(want) is peft.LoraConfig
    for field in CONFIG_FIELDS:
        assert getattr(got, field) == getattr(want, field), f"{case}: adapter_config.json field {field!r}"
    # target_modules may be spelled differently (peft itself writes full paths or short names for
    # "all-linear" depending on the count); what must agree is the set of modules peft adapts.
    base_keys = [key for key, _ in make_model(CASES[case][0]).named_modules()]
    assert adapted_by_peft(got, base_keys) == adapted_by_peft(want, base_keys), f"{case}: target_modules"
    assert set(got.modules_to_save or ()) == set(want.modules_to_save or ()), f"{case}: modules_to_save"
    pk_json = json.loads((pk_dir / "adapter_config.json").read_text())
    peft_json = json.loads((peft_dir / "adapter_config.json").read_text())
    unknown = set(pk_json) - set(peft_json)
    assert not unknown, f"{case}: adapter_config.json keys peft does not write: {sorted(unknown)}"

    # adapter_model.safetensors: same keys, shapes and dtypes; no adapter name in any key
    got_sd = load_file(pk_dir / "adapter_model.safetensors")
    want_sd = load_file(peft_dir / "adapter_model.safetensors")
    assert sorted(got_sd) == sorted(want_sd), (
        f"{case}: only in peftkit {sorted(set(got_sd) - set(want_sd))}, only in peft {sorted(set(want_sd) - set(got_sd))}"
    )
    for key in want_sd:
        assert (got_sd[key].shape, got_sd[key].dtype) == (want_sd[key].shape, want_sd[key].dtype), key
        assert "default" not in key.split("."), key


def test_keys_never_contain_adapter_name(tmp_path):
    """A non-default adapter goes to `<dir>/<name>/` and its name is stripped from every key."""
    pk_dir, peft_dir = _save_both("bert_seq_cls", tmp_path, adapter_name="my_adapter")
    assert not (tmp_path / "peftkit" / "adapter_config.json").exists()
    got_sd = load_file(pk_dir / "adapter_model.safetensors")
    assert sorted(got_sd) == sorted(load_file(peft_dir / "adapter_model.safetensors"))
    assert not [k for k in got_sd if "my_adapter" in k]


def test_second_adapter_in_subfolder_loads_in_peft(tmp_path):
    family, kwargs = case_setup("llama")
    inputs = example_inputs(family)
    model = pk.get_peft_model(make_model(family), pk.LoraConfig(**kwargs))
    model.add_adapter("other", pk.LoraConfig(r=4, lora_alpha=8, target_modules=["k_proj", "down_proj"],
                                             task_type="CAUSAL_LM"))
    model.eval()
    randomize(model, None, seed=3)
    model.save_pretrained(tmp_path)
    for folder in (tmp_path, tmp_path / "other"):
        assert (folder / "adapter_config.json").is_file() and (folder / "adapter_model.safetensors").is_file()
    model.set_adapter("other")
    want_other = model_outputs(model, inputs)
    model.set_adapter("default")
    want_default = model_outputs(model, inputs)
    assert_outputs_differ(want_other, want_default)

    ref = peft.PeftModel.from_pretrained(make_model(family), tmp_path / "other", adapter_name="other")
    assert peft.PeftConfig.from_pretrained(tmp_path / "other").r == 4
    assert_outputs_close(model_outputs(ref, inputs), want_other, "adapter 'other' from the sub-folder")
    ref.load_adapter(tmp_path, adapter_name="default")
    ref.set_adapter("default")
    assert_outputs_close(model_outputs(ref, inputs), want_default, "adapter 'default' from the root")

    # selected_adapters: only that adapter is written, still in its sub-folder
    model.save_pretrained(tmp_path / "only", selected_adapters=["other"])
    only = tmp_path / "only"
    assert (only / "other" / "adapter_model.safetensors").is_file()
    assert not (only / "adapter_model.safetensors").exists() and not (only / "adapter_config.json").exists()


# ---------------------------------------------------------------------------------------------
# (d) merge_and_unload


@pytest.mark.parametrize("case", CASES)
def test_merge_and_unload_matches_peft(case, tmp_path):
    family, kwargs = case_setup(case)
    inputs = example_inputs(family)
    ref = peft.get_peft_model(make_model(family), peft.LoraConfig(**kwargs)).eval()
    randomize(ref, case, seed=4)
    ref.save_pretrained(tmp_path)
    unmerged = model_outputs(ref, inputs)
    want = model_outputs(ref.merge_and_unload(), inputs)
    assert_outputs_close(want, unmerged, "peft merged vs unmerged (sanity)")

    merged = pk.PeftModel.from_pretrained(make_model(family), tmp_path).merge_and_unload()
    assert type(merged) is type(make_model(family))
    leftovers = [n for n, _ in merged.named_modules() if "lora_" in n or n.endswith("base_layer")]
    assert not leftovers, f"adapter modules left after merge_and_unload: {leftovers[:5]}"
    assert_outputs_close(model_outputs(merged, inputs), want, f"{case}: peftkit merged vs peft merged")


# ---------------------------------------------------------------------------------------------
# (e) mixed batches


MIXED_SECOND_TARGETS = {"llama": ["q_proj", "up_proj"], "gpt2": ["c_attn"], "bert": ["query", "key"], "t5": ["q", "o"]}
MIXED_CASES = {"llama": "llama", "gpt2": "gpt2_conv1d", "bert": "bert_seq_cls", "t5": "t5_seq2seq"}
ROW_ADAPTERS = ["first", "second", "__base__", "second"]


@pytest.mark.parametrize("direction", ["peft_to_peftkit", "peftkit_to_peft"])
@pytest.mark.parametrize("family", list(MIXED_CASES))
def test_mixed_batch_matches_peft(family, direction, tmp_path):
    _, kwargs_a = case_setup(MIXED_CASES[family])
    kwargs_b = dict(kwargs_a, r=4, lora_alpha=4, target_modules=MIXED_SECOND_TARGETS[family])
    inputs = example_inputs(family, batch_size=len(ROW_ADAPTERS))
    writer, reader = (peft, pk) if direction == "peft_to_peftkit" else (pk, peft)

    source = writer.get_peft_model(make_model(family), writer.LoraConfig(**kwargs_a), adapter_name="first")
    source.add_adapter("second", writer.LoraConfig(**kwargs_b))
    source.eval()
    randomize(source, None, seed=5)
    source.save_pretrained(tmp_path)  # -> tmp_path/first, tmp_path/second

    loaded = reader.PeftModel.from_pretrained(make_model(family), tmp_path / "first", adapter_name="first")
    loaded.load_adapter(tmp_path / "second", adapter_name="second")
    ref, model = (source, loaded) if direction == "peft_to_peftkit" else (loaded, source)

    want = model_outputs(ref, inputs, adapter_names=ROW_ADAPTERS)
    got = model_outputs(model, inputs, adapter_names=ROW_ADAPTERS)
    assert_outputs_close(got, want, f"{family}: mixed batch {ROW_ADAPTERS}")

    # the rows really differ: each row matches its own adapter run alone, and not the others
    ref.set_adapter("first")
    only_a = model_outputs(ref, inputs)
    ref.set_adapter("second")
    only_b = model_outputs(ref, inputs)
    torch.testing.assert_close(want["logits"][0], only_a["logits"][0], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(want["logits"][1], only_b["logits"][1], atol=ATOL, rtol=RTOL)
    assert not torch.allclose(only_a["logits"][1], only_b["logits"][1], atol=1e-4)
