"""The `peftkit` command (inspect); runs in-process on the bundled MiniLM (22M parameters, loads in ~1 s)."""

from __future__ import annotations

import subprocess
import sys

from peftkit.cli import main


def test_inspect_lists_module_types(capsys):
    assert main(["inspect", "minilm-l6", "--task-type", "FEATURE_EXTRACTION"]) == 0
    out = capsys.readouterr().out
    assert "BertModel: 22,713,216 parameters" in out and "Linear" in out and "query" in out


def test_inspect_with_targets_counts_trainable(capsys):
    assert main(["inspect", "minilm-l6", "--task-type", "FEATURE_EXTRACTION", "--target-modules", "query", "value", "--r", "8"]) == 0
    out = capsys.readouterr().out
    assert "adapts encoder.layer.0.attention.self.query" in out
    # 6 layers x 2 modules x r * (384 + 384)
    assert "12 modules; LoRA r=8: 73,728 trainable" in out


def test_inspect_bad_target_exits_2_with_names(capsys):
    assert main(["inspect", "minilm-l6", "--task-type", "FEATURE_EXTRACTION", "--target-modules", "nope"]) == 2
    err = capsys.readouterr().err
    assert "matched no module" in err and "query" in err


def test_console_script_help():
    out = subprocess.run([sys.executable, "-m", "peftkit.cli", "--help"], capture_output=True, text=True, check=True).stdout
    assert "inspect" in out
