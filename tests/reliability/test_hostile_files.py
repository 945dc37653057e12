"""Adapter folders that are damaged or built to do harm: truncated or lying safetensors headers,
wrong dtypes and shapes, configs that claim huge sizes, deep or oversized JSON, pickles. Each is
refused with a peftkit error naming the file, before any tensor data is read where the header
already tells, and the model it was loaded onto is left as it was. Nothing is ever unpickled."""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

import pytest
import torch
from faults import PickleBomb, assert_model_unchanged, model_state, safetensors_bytes
from safetensors.torch import save_file
from toy_models import TOYS

import peftkit as pk

LINEAR = TOYS[0]
WEIGHTS, CONFIG = "adapter_model.safetensors", "adapter_config.json"


def saved_adapter(folder: Path) -> Path:
    pk.get_peft_model(LINEAR.model(), pk.LoraConfig(target_modules=LINEAR.targets, init_lora_weights=False)).save_pretrained(folder)
    return folder


def header_of(folder: Path) -> tuple[dict, bytes]:
    raw = (folder / WEIGHTS).read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + length]), raw[8 + length:]


def load_onto_existing(folder: Path, error: type, match: str) -> None:
    """load_adapter onto a model that already has an adapter: the error, and nothing changed."""
    model = pk.get_peft_model(LINEAR.model(), pk.LoraConfig(target_modules=LINEAR.targets))
    before = model_state(model)
    with pytest.raises(error, match=match):
        model.load_adapter(folder, adapter_name="incoming")
    assert_model_unchanged(model, before)


def first_key(header: dict) -> str:
    return next(k for k in header if k != "__metadata__")


# name -> function(header, data) -> bytes of the damaged file, and the message expected
def _set_entry(field, value):
    def damage(header, data):
        header[first_key(header)][field] = value
        return safetensors_bytes(header, data)
    return damage


SAFETENSORS_DAMAGE = {
    "truncated in the data": (lambda h, d: safetensors_bytes(h, d)[:-100], "outside the file"),
    "truncated in the header": (lambda h, d: safetensors_bytes(h, d)[:50], "truncated or not a safetensors"),
    "too short for a header": (lambda h, d: b"\x01\x02\x03", "too short"),
    "empty file": (lambda h, d: b"", "too short"),
    "header length past the end": (lambda h, d: safetensors_bytes(h, d, length=10**6), "claims 1,000,000 bytes"),
    "header length 2**63": (lambda h, d: safetensors_bytes(h, d, length=2**63), "truncated or not a safetensors"),
    "header not JSON": (lambda h, d: struct.pack("<Q", 8) + b"{not js}" + d, "not valid JSON"),
    "header a JSON list": (lambda h, d: struct.pack("<Q", 8) + b"[1,2,3] " + d, "not a JSON object"),
    "header not UTF-8": (lambda h, d: struct.pack("<Q", 8) + b"\xff\xfe\xfd\xfc{}  " + d, "not UTF-8"),
    "unknown dtype": (_set_entry("dtype", "F128"), "unknown dtype 'F128'"),
    "negative dimension": (_set_entry("shape", [-8, 8]), "non-negative integers"),
    "shape of strings": (_set_entry("shape", ["8", 8]), "non-negative integers"),
    "offsets past the data": (_set_entry("data_offsets", [0, 10**9]), "outside the file"),
    "offsets reversed": (_set_entry("data_offsets", [256, 0]), "outside the file"),
    "offsets of three": (_set_entry("data_offsets", [0, 128, 256]), "two integers"),
    "shape lies (huge)": (_set_entry("shape", [10**9, 10**9]), "needs 4,000,000,000,000,000,000 bytes"),
    "entry not an object": (lambda h, d: safetensors_bytes({**h, first_key(h): [1]}, d), "not an object"),
}


@pytest.mark.parametrize("label", list(SAFETENSORS_DAMAGE))
def test_damaged_safetensors_are_refused_before_reading_tensors(label, tmp_path):
    folder = saved_adapter(tmp_path / "a")
    damage, message = SAFETENSORS_DAMAGE[label]
    (folder / WEIGHTS).write_bytes(damage(*header_of(folder)))
    load_onto_existing(folder, pk.CheckpointError, f"{WEIGHTS} is not a readable safetensors file.*{message}")


WELL_FORMED_BUT_WRONG = {
    "wrong shape": ({"base_model.model.lin1.lora_A.weight": torch.zeros(3, 8)}, "has shape \\(3, 8\\) in the checkpoint"),
    "integer weights": ({"base_model.model.lin1.lora_A.weight": torch.zeros(8, 8, dtype=torch.int32)}, "stored as I32"),
    "bool weights": ({"base_model.model.lin1.lora_A.weight": torch.zeros(8, 8, dtype=torch.bool)}, "stored as BOOL"),
    "unknown tensor": ({"base_model.model.evil.lora_A.weight": torch.zeros(8, 8)}, "no matching module"),
    "missing tensor": ({"base_model.model.lin1.lora_A.weight": None}, "lacks 1 adapter tensor"),
}


@pytest.mark.parametrize("label", list(WELL_FORMED_BUT_WRONG))
def test_well_formed_files_that_do_not_fit_are_refused_from_the_header(label, tmp_path, monkeypatch):
    folder = saved_adapter(tmp_path / "a")
    change, message = WELL_FORMED_BUT_WRONG[label]
    from safetensors.torch import load_file

    tensors = load_file(folder / WEIGHTS)
    for key, value in change.items():
        tensors.pop(key) if value is None else tensors.update({key: value})
    save_file(tensors, folder / WEIGHTS)
    read = []
    import peftkit.checkpoint as ckpt

    monkeypatch.setattr(ckpt, "load_file", lambda *a, **k: read.append(a) or load_file(*a, **k))
    load_onto_existing(folder, pk.CheckpointError, message)
    assert not read  # decided from the header: no tensor data was read


def test_float64_weights_still_load(tmp_path):
    folder = saved_adapter(tmp_path / "a")
    from safetensors.torch import load_file

    save_file({k: v.double() for k, v in load_file(folder / WEIGHTS).items()}, folder / WEIGHTS)
    model = pk.PeftModel.from_pretrained(LINEAR.model(), folder)
    assert model.get_base_model().lin1.lora_A["default"].weight.dtype == torch.float32


HUGE_CLAIMS = {
    "rank 10**9": {"r": 10**9},
    "rank 10**6": {"r": 10**6},
    "rank_pattern 10**8": {"rank_pattern": {"lin1": 10**8}},
}


@pytest.mark.parametrize("label", list(HUGE_CLAIMS))
def test_configs_claiming_huge_sizes_fail_before_allocating(label, tmp_path):
    folder = saved_adapter(tmp_path / "a")
    data = json.loads((folder / CONFIG).read_text())
    (folder / CONFIG).write_text(json.dumps({**data, **HUGE_CLAIMS[label]}))
    load_onto_existing(folder, pk.CheckpointError, f"{WEIGHTS}: adapter 'incoming' would create more than")


@pytest.mark.parametrize("config", [
    pk.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4),
    pk.VeraConfig(r=8, target_modules=["q_proj"], save_projection=False),
    pk.LoHaConfig(r=4, target_modules=["q_proj"]),
    pk.BottleneckConfig(bottleneck_size=4),
], ids=["prompt_tuning", "vera", "loha", "bottleneck"])
def test_huge_claims_are_caught_for_every_method(config, tmp_path, tiny_llama):
    """The limit sits where tensors are created, so it needs no knowledge of the method's fields."""
    pk.get_peft_model(tiny_llama(), config).save_pretrained(tmp_path / "a")
    data = json.loads((tmp_path / "a" / CONFIG).read_text())
    field = next(f for f in ("num_virtual_tokens", "r", "bottleneck_size") if f in data and data[f])
    (tmp_path / "a" / CONFIG).write_text(json.dumps({**data, field: 10**7}))
    base = tiny_llama()
    before = model_state(base)
    with pytest.raises(pk.CheckpointError, match="would create more than"):
        pk.PeftModel.from_pretrained(base, tmp_path / "a")
    assert_model_unchanged(base, before)


CONFIG_DAMAGE = {
    "not UTF-8": (b"\xff\xfe{}", pk.ConfigError, "not UTF-8"),
    "not JSON": (b"{ not json", pk.ConfigError, "not valid JSON"),
    "deeply nested": (b"[" * 100_000 + b"]" * 100_000, pk.ConfigError, "nested too deeply"),
    "5000-digit rank": (b'{"peft_type": "LORA", "r": 1' + b"0" * 5000 + b"}", pk.ConfigError, "not usable JSON"),
    "a JSON list": (b"[]", pk.ConfigError, "expected a JSON object"),
    "no peft_type": (b'{"r": 8}', pk.ConfigError, "peft_type: missing"),
    "unknown method": (b'{"peft_type": "EVIL"}', pk.PeftkitError, "EVIL"),
    "negative rank": (b'{"peft_type": "LORA", "r": -1, "target_modules": ["lin1"]}', pk.ConfigError, "r: must be a positive"),
    "bad regex": (b'{"peft_type": "LORA", "target_modules": "lin[1"}', pk.ConfigError, "target_modules: 'lin\\[1' is not a valid regular"),
    "bad rank_pattern key": (b'{"peft_type": "LORA", "target_modules": ["lin1"], "rank_pattern": {"(": 2}}', pk.ConfigError,
                             "rank_pattern: '\\(' is not a valid regular"),
}


@pytest.mark.parametrize("label", list(CONFIG_DAMAGE))
def test_damaged_adapter_configs_name_the_file(label, tmp_path):
    folder = saved_adapter(tmp_path / "a")
    content, error, message = CONFIG_DAMAGE[label]
    (folder / CONFIG).write_bytes(content)
    load_onto_existing(folder, error, message)
    with pytest.raises(pk.PeftkitError, match=CONFIG):
        pk.PeftModel.from_pretrained(LINEAR.model(), folder)


def test_an_oversized_config_file_is_not_read(tmp_path):
    folder = saved_adapter(tmp_path / "a")
    with open(folder / CONFIG, "r+b") as f:  # sparse: 65 MiB that cost no disk
        f.truncate(65 << 20)
    load_onto_existing(folder, pk.ConfigError, "larger than the 67,108,864-byte limit")


MISSING = {
    "no folder": lambda f: f.rename(f.with_name("gone")),
    "no config": lambda f: (f / CONFIG).unlink(),
    "no weights": lambda f: (f / WEIGHTS).unlink(),
    "weights is a folder": lambda f: ((f / WEIGHTS).unlink(), (f / WEIGHTS).mkdir()),
}


@pytest.mark.parametrize("label", list(MISSING))
def test_missing_pieces_are_peftkit_errors_and_file_not_found_errors(label, tmp_path):
    folder = saved_adapter(tmp_path / "a")
    MISSING[label](folder)
    with pytest.raises(pk.AdapterNotFoundError, match="does not exist") as err:
        pk.PeftModel.from_pretrained(LINEAR.model(), folder)
    assert isinstance(err.value, FileNotFoundError) and isinstance(err.value, ValueError)
    load_onto_existing(folder, FileNotFoundError, "does not exist")


@pytest.mark.parametrize("subfolder", ["../../etc", "/etc"])
def test_subfolder_cannot_leave_the_adapter_folder(subfolder, tmp_path):
    folder = saved_adapter(tmp_path / "a")
    with pytest.raises(pk.PathError, match="outside"):
        pk.PeftModel.from_pretrained(LINEAR.model(), folder, subfolder=subfolder)


@pytest.mark.parametrize("location", [None, 5, "", "bad\x00path"])
def test_adapter_locations_of_the_wrong_kind(location):
    with pytest.raises(pk.AdapterNotFoundError, match="folder path or a Hub id"):
        pk.PeftModel.from_pretrained(LINEAR.model(), location)


PICKLE_NAMES = ["adapter_model.bin", "pytorch_model.bin", "optimizer.pt", "training_args.bin", "rng_state.pth"]


def plant_pickles(folder: Path, marker: Path) -> None:
    for name in PICKLE_NAMES:
        with open(folder / name, "wb") as f:
            pickle.dump(PickleBomb(marker), f)


def test_a_pickle_only_adapter_is_refused_and_never_unpickled(tmp_path):
    folder = saved_adapter(tmp_path / "a")
    (folder / WEIGHTS).unlink()
    marker = tmp_path / "UNPICKLED"
    plant_pickles(folder, marker)
    with pytest.raises(pk.CheckpointError, match="pickle file, which peftkit never loads"):
        pk.PeftModel.from_pretrained(LINEAR.model(), folder)
    assert not marker.exists()
    pickle.loads(pickle.dumps(PickleBomb(marker)))  # the bomb works: unpickling it makes the marker
    assert marker.exists()


def test_pickles_beside_safetensors_are_ignored_everywhere(tmp_path, monkeypatch):
    """Loading, loading again via the CLI's adapter finder, and resuming read safetensors only; any
    unpickling would have to go through these functions, which fail the test."""
    folder = saved_adapter(tmp_path / "a")
    marker = tmp_path / "UNPICKLED"
    plant_pickles(folder, marker)

    def refuse(*args, **kwargs):
        raise AssertionError("something was unpickled")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    model = pk.PeftModel.from_pretrained(LINEAR.model(), folder)
    model.load_adapter(folder, adapter_name="again")
    from peftkit.train.commands import locate

    assert locate(str(folder)).adapter_dir == str(folder)
    assert not marker.exists()
