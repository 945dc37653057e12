"""bench/serve.py (B8) still runs: both servers on a tiny model, answers compared request by
request, and its table printed. Timings are printed, never asserted."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

pytest.importorskip("peft")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
bench = importlib.import_module("serve")

from tiny_assets import tiny_model_dir, tiny_tokenizer  # noqa: E402

pytestmark = [pytest.mark.usefixtures("torch_single_thread"), pytest.mark.filterwarnings("ignore::FutureWarning")]


def test_bench_serves_the_same_answers_as_peft_and_prints_its_table(tmp_path, capsys):
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir(tmp_path)).eval()
    load = bench.Load(requests=6, concurrency=3, max_tokens=4)
    results = bench.benchmark(base, tiny_tokenizer(), [1, 3], [3], load, tmp_path / "adapters")
    assert [(r.server, r.adapters) for r in results] == [("peftkit serve", 1), ("peftkit serve", 3), ("naive peft", 3)]
    assert all(r.tokens == load.requests * load.max_tokens and len(r.latencies) == load.requests for r in results)
    equal, compared = bench.same_answers(results)
    assert compared == 6 and equal == compared  # every (prompt, adapter) that both served
    # adapters answer differently, so the check compares something
    assert results[0].answers[(1, "a0")] != results[1].answers[(1, "a1")]
    bench.print_table(results, load)
    out = capsys.readouterr().out
    assert "check: 6/6 answers equal" in out
    rows = [line.split() for line in out.splitlines() if line.startswith(("peftkit serve", "naive peft"))]
    assert [row[2] for row in rows] == ["1", "3", "3"] and "nan" not in out.lower()
    assert rows[0][8:10] == ["1.00", "1.00"] and all(r.cpu_seconds > 0 for r in results)
