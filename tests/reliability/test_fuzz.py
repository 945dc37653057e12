"""Fuzzing the two parsers that take files from strangers: ``adapter_config.json`` (read, validated,
and built onto a model) and the run YAML (read, overridden, validated). Whatever the input (random
bytes, random JSON/YAML shapes, valid files with one value replaced, alias-heavy YAML), the only
failure allowed is a peftkit error, and every example must finish within a deadline (a watchdog
alarm turns a hang into a failure).

Examples per test: ``PEFTKIT_FUZZ_EXAMPLES`` (default 60, derandomized so `make test` is
repeatable); setting it (e.g. ``PEFTKIT_FUZZ_EXAMPLES=5000``) also draws fresh random examples.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from toy_models import TOYS

import peftkit as pk
from peftkit.config import PeftConfig
from peftkit.errors import PeftkitError
from peftkit.train.config import load_run_config, validate_file

EXAMPLES = int(os.environ.get("PEFTKIT_FUZZ_EXAMPLES", "60"))
WATCHDOG_S = 10  # one example taking this long is a hang
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize="PEFTKIT_FUZZ_EXAMPLES" not in os.environ,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large, HealthCheck.filter_too_much])
LINEAR = TOYS[0]


@contextlib.contextmanager
def watchdog(seconds: float = WATCHDOG_S):
    def hung(signum, frame):
        raise TimeoutError(f"one fuzz example ran for more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# ----------------------------------------------------------------------------- values
FIELDS = sorted({*pk.LoraConfig.model_fields, *pk.AdaLoraConfig.model_fields, *pk.IA3Config.model_fields,
                 *pk.PromptTuningConfig.model_fields, *pk.VeraConfig.model_fields, *pk.LoKrConfig.model_fields,
                 "peft_type", "peft_version", "auto_mapping", "use_qalora"})
PEFT_TYPES = ["LORA", "ADALORA", "IA3", "VERA", "LOHA", "LOKR", "PROMPT_TUNING", "P_TUNING", "PREFIX_TUNING",
              "LN_TUNING", "BOTTLENECK", "BITFIT", "lora", "EVIL", ""]
MODULE_NAMES = ["lin1", "lin2", "lin.*", "lin[", "(", ".*", "all-linear", "", "\x00", "a" * 300, "(a*)*b"]
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70), st.sampled_from([0, 1, 2, 8, 10**9]),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40), st.sampled_from(PEFT_TYPES + MODULE_NAMES))
json_values = st.recursive(
    scalars, lambda inner: st.one_of(st.lists(inner, max_size=5),
                                     st.dictionaries(st.one_of(st.sampled_from(FIELDS + MODULE_NAMES), st.text(max_size=10)),
                                                     inner, max_size=5)), max_leaves=25)


def valid_configs() -> list[dict]:
    configs = [pk.LoraConfig(target_modules=["lin1"], rank_pattern={"lin1": 4}), pk.LoraConfig(target_modules="lin.*"),
               pk.AdaLoraConfig(total_step=10, target_modules=["lin1"]), pk.IA3Config(target_modules=["lin1", "lin2"],
                                                                                      feedforward_modules=["lin2"]),
               pk.LoHaConfig(target_modules=["lin1"]), pk.LoKrConfig(target_modules=["lin2"]),
               pk.VeraConfig(r=4, target_modules=["lin1"]), pk.BitFitConfig(target_modules=["lin1"])]
    return [c.to_dict() for c in configs]


@st.composite
def mutated_config(draw) -> dict:
    data = dict(draw(st.sampled_from(valid_configs())))
    for _ in range(draw(st.integers(1, 3))):
        action = draw(st.sampled_from(["set", "drop", "add"]))
        key = draw(st.sampled_from(sorted(data))) if action != "add" else draw(st.sampled_from(FIELDS))
        if action == "drop":
            data.pop(key, None)
        else:
            data[key] = draw(json_values)
    return data


@st.composite
def plausible_config(draw) -> dict:
    """A valid config with fields replaced by values of the type they have (ints of every size,
    module names and regexes, pattern mappings): inputs that pass parsing and reach the model."""
    data = dict(draw(st.sampled_from(valid_configs())))
    for key in draw(st.lists(st.sampled_from(sorted(data)), min_size=1, max_size=4, unique=True)):
        old = data[key]
        names = st.sampled_from(MODULE_NAMES + ["lin1", "lin2", "lin1", "lin2"])
        if isinstance(old, bool):
            value = draw(st.booleans())
        elif isinstance(old, int):
            value = draw(st.one_of(st.integers(-3, 64), st.sampled_from([0, 10**4, 10**7, 2**31, 2**63])))
        elif isinstance(old, float):
            value = draw(st.one_of(st.floats(-1e3, 1e3), st.sampled_from([0.0, 0.999, 1.0, float("nan")])))
        elif isinstance(old, dict):
            value = draw(st.dictionaries(names, st.one_of(st.integers(-2, 10**6), st.floats(-10, 10)), max_size=3))
        elif isinstance(old, list):
            value = draw(st.lists(names, max_size=3))
        else:
            value = draw(st.one_of(st.none(), names, st.lists(names, max_size=3), st.integers(-1, 3),
                                   st.sampled_from(["none", "all", "lora_only", "gaussian", "pissa", "CAUSAL_LM"])))
        data[key] = value
    return data


config_documents = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v, allow_nan=True).encode()),
    mutated_config().map(lambda d: json.dumps(d, allow_nan=True).encode()),
    plausible_config().map(lambda d: json.dumps(d, allow_nan=True).encode()),
    st.builds(lambda depth: b"[" * depth + b"]" * depth, st.integers(0, 200_000)),
    st.builds(lambda digits: b'{"peft_type": "LORA", "r": ' + b"9" * digits + b"}", st.integers(1, 20_000)),
)


@pytest.fixture(scope="module")
def adapter_folder(tmp_path_factory) -> Path:
    """A valid LoRA adapter for the toy model; each example replaces its config."""
    folder = tmp_path_factory.mktemp("fuzz") / "adapter"
    pk.get_peft_model(LINEAR.model(), pk.LoraConfig(target_modules=LINEAR.targets)).save_pretrained(folder)
    return folder


@pytest.mark.filterwarnings("ignore::UserWarning")
@FUZZ
@given(document=config_documents)
def test_fuzz_adapter_config_parsing(document, adapter_folder):
    (adapter_folder / "adapter_config.json").write_bytes(document)
    with watchdog():
        try:
            config = PeftConfig.from_pretrained(adapter_folder)
        except PeftkitError:
            return
    assert isinstance(config, PeftConfig)


@pytest.mark.filterwarnings("ignore::UserWarning")  # unknown keys at empty values are ignored with a warning
@FUZZ
@given(data=st.one_of(mutated_config(), plausible_config()))
def test_fuzz_adapter_loading_onto_a_model(data, adapter_folder):
    """The whole load: config, layers built under the size limit, the file's header checked against them."""
    (adapter_folder / "adapter_config.json").write_text(json.dumps(data, allow_nan=True))
    model = pk.get_peft_model(LINEAR.model(), pk.LoraConfig(target_modules=LINEAR.targets))
    with watchdog():
        try:
            model.load_adapter(adapter_folder, adapter_name="fuzzed")
        except PeftkitError:
            assert model.peft_config.keys() == {"default"}  # nothing half-added
            return
    assert "fuzzed" in model.peft_config


# ----------------------------------------------------------------------------- run YAML
VALID_RUN = {
    "model": {"name": "MODEL"}, "adapter": {"method": "lora", "r": 4, "target_modules": "all-linear"},
    "data": {"train": "train.jsonl", "format": "chat"}, "train": {"max_steps": 2, "lr": 1e-3},
    "eval": {"metrics": ["loss"]}, "output": {"dir": "runs"},
}
RUN_KEYS = ["model", "adapter", "data", "train", "eval", "output", "tracking", "name", "method", "r", "lr", "dir",
            "format", "train", "metrics", "max_steps", "task", "backends", "from", "dtype", "batch_size"]
yaml_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=30),
                         st.sampled_from(["lora", "LORA", "chat", "sft", "dpo", "loss", "all-linear", "runs", "..", "/"]))
yaml_values = st.recursive(yaml_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(RUN_KEYS), inner, max_size=4)), max_leaves=20)


@st.composite
def mutated_run(draw) -> str:
    data = json.loads(json.dumps(VALID_RUN))
    for _ in range(draw(st.integers(1, 3))):
        section = draw(st.sampled_from(RUN_KEYS[:7]))
        if draw(st.booleans()) and isinstance(data.get(section), dict):
            data[section][draw(st.sampled_from(RUN_KEYS))] = draw(yaml_values)
        else:
            data[section] = draw(yaml_values)
    return yaml.safe_dump(data)


@st.composite
def alias_heavy(draw) -> str:
    """Anchors and aliases nested at random: the shape alias bombs have."""
    levels, width = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    lines = ["a0: &a0 [x, y]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels)]
    if draw(st.booleans()):
        lines.append(f"model: {{name: *a{levels - 1}}}")
    if draw(st.booleans()):
        lines.append("self: &s [*s]")
    return "\n".join(lines) + "\n"


run_documents = st.one_of(
    st.binary(max_size=300).map(lambda b: b.decode("latin-1")),
    st.text(max_size=300),
    yaml_values.map(yaml.safe_dump),
    mutated_run(),
    alias_heavy(),
    st.builds(lambda depth: "x: " + "[" * depth + "]" * depth, st.integers(0, 5000)),
)


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fuzzrun")
    (folder / "train.jsonl").write_text('{"messages": [{"role": "user", "content": "a"}]}\n')
    return folder


@FUZZ
@given(document=run_documents, overrides=st.lists(st.text(max_size=30), max_size=2))
def test_fuzz_run_config_parsing(document, overrides, run_folder, monkeypatch):
    monkeypatch.chdir(run_folder)
    path = run_folder / "run.yaml"
    path.write_bytes(document.encode("utf-8", "surrogatepass") if isinstance(document, str) else document)
    with watchdog():
        problems = validate_file(path, overrides)
        assert all(isinstance(p, str) and isinstance(m, str) and len(m) < 5000 for p, m in problems), problems
        try:
            load_run_config(path, overrides)
        except PeftkitError:
            assert problems
            return
    assert not problems
