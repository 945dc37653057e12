"""The side-by-side benchmarks (bench/) still run: each one's correctness check against `peft` and
its table, on a two-layer model, so a change in peftkit or peft that breaks them shows here rather
than on the next (rare) benchmark session. Timings are printed, never asserted."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
common = importlib.import_module("common")
run_script = importlib.import_module("run")

pytestmark = [
    pytest.mark.usefixtures("torch_single_thread"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]

# the row labels each benchmark prints, so a table that loses a row fails
EXPECTED_ROWS = {
    "b1": ["peft dropout=0.0", "peftkit dropout=0.0", "peft dropout=0.05", "peftkit dropout=0.05"],
    "b3": ["one", "mixed 4", "mixed 32"],
    "b4": ["prefill", "decode"],
    "b5": ["load adapter", "set_adapter x2", "merge+unmerge", "hotswap"],
    "b6": ["peftkit dropout=0.05, peft's dropout"],
    "b8": ["float32", "bfloat16", "nf4", "bnb int8", "torchao int8"],
}
# optional packages a benchmark needs: it is skipped where they are not installed (make test-oldest)
NEEDS = {"b8": ("bitsandbytes", "torchao")}


def tiny_setup() -> "common.Setup":
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=128, max_position_embeddings=128)
    ids = torch.randint(0, cfg.vocab_size, (2, 16))
    return common.Setup(LlamaForCausalLM(cfg), ids, torch.device("cpu"), torch.float32)


def test_every_benchmark_is_listed():
    assert set(run_script.BENCHMARKS) == set(EXPECTED_ROWS)


@pytest.mark.parametrize("name", sorted(EXPECTED_ROWS))
def test_benchmark_checks_and_prints_its_table(name, capsys):
    for package in NEEDS.get(name, ()):
        pytest.importorskip(package)
    importlib.import_module(run_script.BENCHMARKS[name]).run(tiny_setup(), 0, 1)
    out = capsys.readouterr().out
    for row in EXPECTED_ROWS[name]:
        assert any(line.strip().startswith(row) for line in out.splitlines()), (row, out)
    assert "nan" not in out.lower()


@pytest.mark.slow  # builds a 4-layer model of SmolLM2's shape (28M parameters) and runs two DPO trainers
def test_b7_dpo_reference_memory_runs_for_peft_and_peftkit(tmp_path):
    """B7's measurement in this process (its table runs each variant in a fresh one): with peft
    and with peftkit the DPO trainer holds the policy alone, no reference copy."""
    b7 = importlib.import_module("trl_dpo_memory")
    b7.save_model(str(tmp_path), quick=True)
    rows = [b7.measure(variant, str(tmp_path), steps=1) for variant in ("peft", "peftkit")]
    assert [row["reference"] for row in rows] == ["NoneType", "NoneType"]
    assert rows[0]["held_mb"] == pytest.approx(rows[1]["held_mb"])
