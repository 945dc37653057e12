"""``LoraConfig`` and the ``PeftConfig`` base: defaults, validation, JSON I/O and ``peft`` interop.

The real ``peft`` package is the reference for defaults and for the ``adapter_config.json``
format: configs written by ``peft`` must load, and configs we write must load in ``peft``.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import peft
import pytest

import peftkit as pk
from peftkit import ConfigError, LoraConfig, PeftConfig

# Fields that peftkit's LoraConfig shares with peft.LoraConfig (all of ours).
SHARED_FIELDS = sorted(LoraConfig.model_fields)


def _problem_fields(err: ConfigError) -> list[str]:
    return [path for path, _ in err.problems]


def _write_config(folder: Path, data: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps(data), encoding="utf-8")
    return folder


def _peft_written(folder: Path, **kwargs) -> dict:
    """Save ``peft.LoraConfig(**kwargs)`` into ``folder``; return the JSON that peft wrote."""
    peft.LoraConfig(**kwargs).save_pretrained(str(folder))
    return json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))


def _norm(value):
    """Compare JSON values ignoring list order (peft writes some lists from sets)."""
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return sorted(value)
    return value


# ---------------------------------------------------------------------------------------------
# defaults


def test_every_field_we_share_with_peft_exists_in_peft():
    peft_fields = set(peft.LoraConfig().to_dict())
    assert set(SHARED_FIELDS) <= peft_fields, set(SHARED_FIELDS) - peft_fields


@pytest.mark.parametrize("field", SHARED_FIELDS)
def test_default_equals_peft_default(field):
    ours = LoraConfig().to_dict()[field]
    theirs = json.loads(json.dumps(peft.LoraConfig().to_dict(), default=str))[field]
    assert ours == theirs, f"{field}: peftkit default {ours!r} != peft default {theirs!r}"


def test_defaults_are_not_shared_between_instances():
    a, b = LoraConfig(), LoraConfig()
    a.rank_pattern["q_proj"] = 4
    assert b.rank_pattern == {}
    assert LoraConfig().rank_pattern == {}


def test_peft_only_keys_cover_everything_peft_writes():
    """Every key peft writes for LoRA is either a field of ours or a known peft-only key, so that
    reading a peft config never hits the 'unknown key' path for a key peft itself wrote."""
    written = set(peft.LoraConfig().to_dict()) - {"peft_type"}
    known = set(LoraConfig.model_fields) | set(LoraConfig.peft_only_keys)
    assert written <= known, written - known


# ---------------------------------------------------------------------------------------------
# validation at construction


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(r=0), "r"),
        (dict(r=-1), "r"),
        (dict(r=8.5), "r"),
        (dict(lora_dropout=1.5), "lora_dropout"),
        (dict(lora_dropout=1.0), "lora_dropout"),
        (dict(lora_dropout=-0.1), "lora_dropout"),
        (dict(bias="some"), "bias"),
        (dict(init_lora_weights="loftq"), "init_lora_weights"),
        (dict(init_lora_weights="kaiming"), "init_lora_weights"),
        (dict(rank_pattern={"q_proj": 0}), "rank_pattern"),
        (dict(rank_pattern={"q_proj": -2}), "rank_pattern"),
        (dict(target_modules=5), "target_modules"),
        (dict(target_modules=[""]), "target_modules"),
        (dict(exclude_modules=3.0), "exclude_modules"),
        (dict(layers_to_transform=[-1]), "layers_to_transform"),
        (dict(layers_to_transform=-1), "layers_to_transform"),
        (dict(layers_pattern="layers"), "layers_pattern"),
        (dict(target_modules=r".*\.q_proj", layers_to_transform=[0]), "layers_to_transform"),
        (dict(target_modules=r".*\.q_proj", layers_to_transform=0), "layers_to_transform"),  # index 0 is set
        (dict(lora_alpha=float("nan")), "lora_alpha"),
        (dict(lora_alpha=float("inf")), "lora_alpha"),
        (dict(task_type="CAUSAL"), "task_type"),
    ],
    ids=lambda v: repr(v) if isinstance(v, dict) else None,
)
def test_invalid_value_fails_at_construction_naming_the_field(kwargs, field):
    with pytest.raises(ConfigError) as info:
        LoraConfig(**kwargs)
    err = info.value
    assert isinstance(err, ValueError) and isinstance(err, pk.PeftkitError)
    assert _problem_fields(err) == [field]
    assert f"{field}:" in str(err)
    assert "LoraConfig" in str(err)


def test_message_shows_the_bad_value_and_the_rule():
    with pytest.raises(ConfigError) as info:
        LoraConfig(r=0)
    msg = str(info.value)
    assert "r:" in msg and "positive" in msg and "0" in msg


def test_alpha_pattern_values_must_be_finite_like_lora_alpha():
    # lora_alpha=nan is rejected; the same value per module through alpha_pattern must be too.
    with pytest.raises(ConfigError) as info:
        LoraConfig(alpha_pattern={"q_proj": float("nan")})
    assert _problem_fields(info.value) == ["alpha_pattern"]


def test_valid_values_are_accepted():
    cfg = LoraConfig(
        r=16,
        lora_alpha=32.5,
        lora_dropout=0.05,
        bias="lora_only",
        init_lora_weights="PiSSA_niter_4",
        target_modules=["q_proj", "v_proj"],
        exclude_modules=r".*\.0\..*",
        layers_to_transform=[0, 1],
        layers_pattern="layers",
        rank_pattern={"q_proj": 4},
        alpha_pattern={"v_proj": 8},
        use_rslora=True,
        task_type="CAUSAL_LM",
    )
    assert (cfg.r, cfg.lora_alpha, cfg.lora_dropout, cfg.bias) == (16, 32.5, 0.05, "lora_only")
    assert cfg.init_lora_weights == "pissa_niter_4"  # normalised to peft's lower-case spelling
    for init in (True, False, "gaussian", "pissa", "olora"):
        assert LoraConfig(init_lora_weights=init).init_lora_weights == init


def test_several_problems_are_reported_at_once():
    with pytest.raises(ConfigError) as info:
        LoraConfig(r=0, lora_dropout=2.0, bias="x", lora_alpha=float("nan"))
    assert set(_problem_fields(info.value)) == {"r", "lora_dropout", "bias", "lora_alpha"}
    msg = str(info.value)
    for field in ("r:", "lora_dropout:", "bias:", "lora_alpha:"):
        assert field in msg


def test_cross_field_problems_are_reported_with_field_problems():
    # One run must show every mistake: a bad rank does not hide a layers_pattern without layers.
    with pytest.raises(ConfigError) as info:
        LoraConfig(r=0, layers_pattern="layers")
    assert set(_problem_fields(info.value)) == {"r", "layers_pattern"}


def test_unknown_key_suggests_the_closest_field():
    with pytest.raises(ConfigError) as info:
        LoraConfig(lora_alhpa=16)
    assert _problem_fields(info.value) == ["lora_alhpa"]
    assert "did you mean 'lora_alpha'" in str(info.value)


def test_unknown_key_without_a_close_field_is_still_an_error():
    with pytest.raises(ConfigError) as info:
        LoraConfig(zzzz=1)
    assert _problem_fields(info.value) == ["zzzz"]
    assert "did you mean" not in str(info.value)


# ---------------------------------------------------------------------------------------------
# assignment


@pytest.mark.parametrize(
    "field, value",
    [("r", 0), ("lora_dropout", 1.0), ("bias", "some"), ("lora_alpha", float("nan")), ("target_modules", 5)],
)
def test_assignment_is_validated(field, value):
    cfg = LoraConfig(r=4, target_modules=["q_proj"])
    before = getattr(cfg, field)
    with pytest.raises(ConfigError) as info:
        setattr(cfg, field, value)
    assert _problem_fields(info.value) == [field]
    assert getattr(cfg, field) == before  # the config is left unchanged


def test_assignment_runs_cross_field_checks():
    # LoraConfig(target_modules=<regex>, layers_to_transform=[0]) is rejected at construction;
    # reaching the same state by assignment must be rejected too.
    cfg = LoraConfig(target_modules=["q_proj"], layers_to_transform=[0])
    with pytest.raises(ConfigError) as info:
        cfg.target_modules = r".*\.q_proj"
    assert "layers_to_transform" in _problem_fields(info.value)


def test_valid_assignment_is_applied():
    cfg = LoraConfig()
    cfg.r = 32
    cfg.lora_alpha = 64
    assert (cfg.r, cfg.lora_alpha) == (32, 64)


def test_set_target_modules_become_a_sorted_list():
    assert LoraConfig(target_modules={"v_proj", "q_proj", "k_proj"}).target_modules == ["k_proj", "q_proj", "v_proj"]
    cfg = LoraConfig()
    cfg.target_modules = {"v_proj", "q_proj"}
    assert cfg.target_modules == ["q_proj", "v_proj"]
    # lists keep the user's order (duplicates dropped); strings stay regexes
    assert LoraConfig(target_modules=["v_proj", "q_proj", "v_proj"]).target_modules == ["v_proj", "q_proj"]
    assert LoraConfig(target_modules=r".*\.q_proj").target_modules == r".*\.q_proj"
    assert LoraConfig(modules_to_save="lm_head").modules_to_save == ["lm_head"]


# ---------------------------------------------------------------------------------------------
# task_type


@pytest.mark.parametrize("value", ["CAUSAL_LM", peft.TaskType.CAUSAL_LM, pk.TaskType.CAUSAL_LM])
def test_task_type_accepts_strings_and_peft_members(value):
    cfg = LoraConfig(task_type=value)
    assert cfg.task_type == pk.TaskType.CAUSAL_LM
    assert cfg.to_dict()["task_type"] == "CAUSAL_LM"


def test_task_type_values_match_peft():
    assert {t.value for t in pk.TaskType} <= {t.value for t in peft.TaskType}
    for t in pk.TaskType:
        assert LoraConfig(task_type=peft.TaskType(t.value)).task_type is t


# ---------------------------------------------------------------------------------------------
# to_dict / save / load


def test_to_dict_has_peft_type_and_is_json_serialisable():
    cfg = LoraConfig(
        r=4, target_modules={"q_proj", "v_proj"}, task_type=peft.TaskType.SEQ_CLS, rank_pattern={"q_proj": 2}
    )
    data = cfg.to_dict()
    assert data["peft_type"] == "LORA"
    assert data["task_type"] == "SEQ_CLS"
    assert data["target_modules"] == ["q_proj", "v_proj"]
    assert json.loads(json.dumps(data)) == data
    assert set(data) == set(LoraConfig.model_fields) | {"peft_type"}


def test_save_and_load_round_trip(tmp_path):
    cfg = LoraConfig(
        r=4,
        lora_alpha=16,
        lora_dropout=0.1,
        target_modules=["q_proj", "v_proj"],
        layers_to_transform=[1],
        layers_pattern="layers",
        rank_pattern={"q_proj": 2},
        alpha_pattern={"v_proj": 3.5},
        modules_to_save=["lm_head"],
        init_lora_weights="gaussian",
        task_type="CAUSAL_LM",
        base_model_name_or_path="tiny/llama",
    )
    cfg.save_pretrained(tmp_path / "adapter")
    files = sorted(p.name for p in (tmp_path / "adapter").iterdir())
    assert files == ["adapter_config.json"]  # no temporary file left behind
    on_disk = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert on_disk["peft_type"] == "LORA"

    for loader in (LoraConfig, PeftConfig):
        loaded = loader.from_pretrained(tmp_path / "adapter")
        assert type(loaded) is LoraConfig
        assert loaded == cfg
        assert loaded.to_dict() == cfg.to_dict()
    # str paths work too
    assert LoraConfig.from_pretrained(str(tmp_path / "adapter")) == cfg


def test_from_pretrained_subfolder(tmp_path):
    LoraConfig(r=2).save_pretrained(tmp_path / "root" / "other")
    assert PeftConfig.from_pretrained(tmp_path / "root", subfolder="other").r == 2


def test_peft_config_dispatches_by_peft_type(tmp_path):
    folder = _write_config(tmp_path / "a", {"peft_type": "LORA", "r": 2, "target_modules": ["q"]})
    cfg = PeftConfig.from_pretrained(folder)
    assert isinstance(cfg, LoraConfig) and cfg.r == 2
    assert type(PeftConfig.from_dict({"peft_type": "LORA"})) is LoraConfig
    assert pk.get_method("LORA").config_cls is LoraConfig


def test_peft_config_without_peft_type_is_an_error():
    with pytest.raises(ConfigError) as info:
        PeftConfig.from_dict({"r": 4})
    assert _problem_fields(info.value) == ["peft_type"]


def test_lora_config_refuses_another_methods_config():
    with pytest.raises(ConfigError) as info:
        LoraConfig.from_dict({"peft_type": "IA3", "target_modules": ["k"]})
    assert _problem_fields(info.value) == ["peft_type"]
    assert "IA3" in str(info.value)


def test_unknown_peft_type_lists_known_methods(tmp_path):
    folder = _write_config(tmp_path / "a", {"peft_type": "NOT_A_METHOD", "r": 4})
    with pytest.raises(ConfigError) as info:
        PeftConfig.from_pretrained(folder)
    msg = str(info.value)
    assert "peft_type" in msg and "NOT_A_METHOD" in msg
    assert "known:" in msg and "LORA" in msg
    assert str(folder / "adapter_config.json") in msg
    with pytest.raises(ConfigError, match="did you mean 'LORA'"):
        PeftConfig.from_dict({"peft_type": "LORAA"})


def test_invalid_json_names_the_file(tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    path = folder / "adapter_config.json"
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        PeftConfig.from_pretrained(folder)
    assert str(path) in str(info.value)
    assert "JSON" in str(info.value)
    path.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(ConfigError, match="JSON object"):
        LoraConfig.from_pretrained(folder)


def test_invalid_value_in_file_names_the_field(tmp_path):
    folder = _write_config(tmp_path / "a", {"peft_type": "LORA", "r": 0})
    with pytest.raises(ConfigError) as info:
        PeftConfig.from_pretrained(folder)
    assert _problem_fields(info.value) == ["r"]


def test_missing_folder_is_file_not_found_with_a_clear_message(tmp_path):
    missing = tmp_path / "does_not_exist"
    with pytest.raises(FileNotFoundError) as info:
        PeftConfig.from_pretrained(missing)
    assert str(missing) in str(info.value)
    assert "adapter_config.json" in str(info.value)
    # a folder that exists but holds no config
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        LoraConfig.from_pretrained(tmp_path / "empty")


def test_missing_hub_name_offline_is_file_not_found():
    # not a local path, so a Hub lookup is tried; conftest.py keeps the Hub offline
    with pytest.raises(FileNotFoundError) as info:
        PeftConfig.from_pretrained("no-such-org/no-such-adapter-xyz")
    assert "no-such-org/no-such-adapter-xyz" in str(info.value)
    assert "adapter_config.json" in str(info.value)


# ---------------------------------------------------------------------------------------------
# configs written by peft


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        dict(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
        dict(
            r=4,
            lora_alpha=16,
            lora_dropout=0.1,
            target_modules=["q_proj", "v_proj", "gate_proj"],
            rank_pattern={"q_proj": 2, "model.layers.1.mlp.gate_proj": 3},
            alpha_pattern={"v_proj": 3},
            layers_to_transform=[0, 1],
            layers_pattern="layers",
            modules_to_save=["lm_head"],
            bias="lora_only",
            use_rslora=True,
            init_lora_weights="gaussian",
            exclude_modules=["k_proj"],
        ),
        dict(target_modules=r".*\.(q|v)_proj", init_lora_weights=False, task_type=peft.TaskType.SEQ_CLS),
        dict(target_modules="all-linear", fan_in_fan_out=True, bias="all", init_lora_weights="olora"),
        dict(target_modules=["c_attn"], init_lora_weights="pissa_niter_4", base_model_name_or_path="gpt2"),
    ],
    ids=["defaults", "basic", "everything", "regex_seqcls", "all_linear", "pissa"],
)
def test_reads_config_written_by_peft(tmp_path, kwargs):
    written = _peft_written(tmp_path / "peft", **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # peft's own keys at their unused values: silently dropped
        cfg = PeftConfig.from_pretrained(tmp_path / "peft")
    assert type(cfg) is LoraConfig
    ours = cfg.to_dict()
    for field in SHARED_FIELDS:
        assert _norm(ours[field]) == _norm(written[field]), field


def test_peft_reads_config_written_by_peftkit(tmp_path):
    cfg = LoraConfig(
        r=4,
        lora_alpha=16,
        target_modules=["q_proj", "v_proj"],
        rank_pattern={"q_proj": 2},
        alpha_pattern={"v_proj": 3},
        layers_to_transform=[1],
        layers_pattern="layers",
        use_rslora=True,
        task_type="CAUSAL_LM",
    )
    cfg.save_pretrained(tmp_path / "ours")
    theirs = peft.PeftConfig.from_pretrained(str(tmp_path / "ours"))
    assert isinstance(theirs, peft.LoraConfig)
    theirs_dict = json.loads(json.dumps(theirs.to_dict(), default=sorted))
    for field in SHARED_FIELDS:
        assert _norm(theirs_dict[field]) == _norm(cfg.to_dict()[field]), field


@pytest.mark.parametrize(
    "key, value",
    [
        ("use_qalora", False),
        ("loftq_config", {}),
        ("megatron_config", None),
        ("layer_replication", None),
        ("peft_version", "9.9.9"),
        ("auto_mapping", None),
        ("megatron_core", "megatron.core"),
    ],
)
def test_peft_only_key_at_unused_value_is_dropped_silently(tmp_path, key, value):
    folder = _write_config(tmp_path / "a", {"peft_type": "LORA", "r": 4, key: value})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cfg = PeftConfig.from_pretrained(folder)
    assert cfg.r == 4
    assert key not in cfg.to_dict()


@pytest.mark.parametrize(
    "key, value",
    [
        ("loftq_config", {"loftq_bits": 4}),
        ("layer_replication", [[0, 2]]),
        ("alora_invocation_tokens", [5, 6]),
        ("trainable_token_indices", [1, 2]),
        ("use_qalora", True),
    ],
)
def test_peft_only_key_at_non_default_value_raises_naming_the_key(tmp_path, key, value):
    folder = _write_config(tmp_path / "a", {"peft_type": "LORA", "r": 4, key: value})
    with pytest.raises(ConfigError) as info:
        PeftConfig.from_pretrained(folder)
    assert _problem_fields(info.value) == [key]
    assert str(folder / "adapter_config.json") in str(info.value)


def test_unimplemented_feature_in_a_config_written_by_peft_is_refused(tmp_path):
    _peft_written(tmp_path / "replicated", r=4, target_modules=["q_proj"], layer_replication=[[0, 2]])
    with pytest.raises(ConfigError) as info:
        PeftConfig.from_pretrained(tmp_path / "replicated")
    assert _problem_fields(info.value) == ["layer_replication"]


@pytest.mark.parametrize("value", [None, [], {}, False])
def test_unknown_key_with_empty_value_warns(tmp_path, value):
    folder = _write_config(tmp_path / "a", {"peft_type": "LORA", "r": 4, "some_future_option": value})
    with pytest.warns(UserWarning, match="some_future_option"):
        cfg = PeftConfig.from_pretrained(folder)
    assert cfg.r == 4


@pytest.mark.parametrize("value", [3, "x", [1], {"a": 1}, True])
def test_unknown_key_with_a_value_raises(tmp_path, value):
    folder = _write_config(tmp_path / "a", {"peft_type": "LORA", "r": 4, "some_future_option": value})
    with pytest.raises(ConfigError) as info:
        PeftConfig.from_pretrained(folder)
    assert _problem_fields(info.value) == ["some_future_option"]


def test_misspelt_key_in_file_suggests_the_field(tmp_path):
    folder = _write_config(tmp_path / "a", {"peft_type": "LORA", "lora_alhpa": 16})
    with pytest.raises(ConfigError, match="did you mean 'lora_alpha'"):
        PeftConfig.from_pretrained(folder)


def test_all_bad_keys_in_a_file_are_reported_at_once(tmp_path):
    folder = _write_config(
        tmp_path / "a", {"peft_type": "LORA", "use_qalora": True, "loftq_config": {"loftq_bits": 4}, "mystery": 1}
    )
    with pytest.raises(ConfigError) as info:
        PeftConfig.from_pretrained(folder)
    assert set(_problem_fields(info.value)) == {"use_qalora", "loftq_config", "mystery"}


def test_nan_alpha_in_file_is_refused(tmp_path):
    # json.dumps writes NaN, and json.loads reads it back: the check must still fire.
    folder = _write_config(tmp_path / "a", {"peft_type": "LORA", "lora_alpha": float("nan")})
    with pytest.raises(ConfigError) as info:
        PeftConfig.from_pretrained(folder)
    assert _problem_fields(info.value) == ["lora_alpha"]
    assert math.isnan(json.loads((folder / "adapter_config.json").read_text())["lora_alpha"])


def test_peft_style_config_helpers(tmp_path):
    """from_peft_type, from_json_file (without a stray runtime_config) and peft's task-type message."""
    import json as _json

    assert type(pk.PeftConfig.from_peft_type(peft_type="LOHA", r=4)).__name__ == "LoHaConfig"
    assert pk.LoraConfig.from_peft_type(r=2).r == 2
    config = pk.LoraConfig(r=4)
    config.save_pretrained(tmp_path)
    path = tmp_path / "adapter_config.json"
    path.write_text(_json.dumps({**_json.loads(path.read_text()), "runtime_config": {"ephemeral_gpu_offload": True}}))
    with pytest.warns(UserWarning, match="runtime_config"):
        assert pk.PeftConfig.from_json_file(path) == config.to_dict()
    with pytest.raises(pk.ConfigError, match="Invalid task type: 'nope'. Must be one of the following task types: CAUSAL_LM"):
        pk.LoraConfig(task_type="nope")


def test_layer_selection_errors_carry_peft_sentences_and_the_fix():
    # Code written against peft matches peft's sentences; ours add which field and how to fix it.
    with pytest.raises(ConfigError, match="`layers_pattern` cannot be used when `target_modules` is a str.") as info:
        LoraConfig(target_modules=".*foo", layers_pattern=["bar"])
    assert "put the layer index in the regex" in str(info.value)
    with pytest.raises(ConfigError, match="When `layers_pattern` is specified, `layers_to_transform` must also be"):
        LoraConfig(target_modules=["q"], layers_pattern="layers")


def test_values_of_the_wrong_type_are_also_a_type_error():
    """peft raises TypeError for some wrongly typed values; a ConfigTypeError is both kinds."""
    with pytest.raises(TypeError, match="`target_parameters` must be a list of strings or None") as caught:
        pk.LoraConfig(target_parameters="linear.weight")
    assert isinstance(caught.value, pk.ConfigError)
    with pytest.raises(pk.ConfigError) as caught:  # a bad value, not a bad type: a ValueError only
        pk.LoraConfig(r=-1)
    assert not isinstance(caught.value, TypeError)


@pytest.mark.parametrize("name, value", [
    ("LoraConfig", "LORA"), ("AdaLoraConfig", "ADALORA"), ("IA3Config", "IA3"), ("LoHaConfig", "LOHA"),
    ("LoKrConfig", "LOKR"), ("VeraConfig", "VERA"), ("LNTuningConfig", "LN_TUNING"),
    ("PromptTuningConfig", "PROMPT_TUNING"), ("PromptEncoderConfig", "P_TUNING"), ("PrefixTuningConfig", "PREFIX_TUNING"),
])
def test_peft_type_is_peft_s_enum_member(name, value):
    """Code written for peft reads config.peft_type.value (peft's model-card code does)."""
    peft_type = getattr(pk, name).peft_type
    assert isinstance(peft_type, pk.PeftType) and peft_type.value == value == peft_type
