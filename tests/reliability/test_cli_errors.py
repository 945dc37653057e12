"""Every `peftkit` command given a bad input, a damaged file or a file system that says no ends in
an `error:` line that names the path or field, with exit code 2 and no traceback, and changes
nothing on disk."""

from __future__ import annotations

import io
import json
import re
import sys
from pathlib import Path

import pytest
import torch
from faults import folder_state, read_only, small_disk
from tiny_assets import tiny_model_dir, write_config
from transformers import AutoModelForCausalLM

import peftkit as pk
from peftkit.cli import main


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A tiny model folder, an adapter folder for it (no training needed) and a run config."""
    root = tmp_path_factory.mktemp("cli")
    model_dir = tiny_model_dir(root)
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    pk.get_peft_model(base, pk.LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM")).save_pretrained(root / "adapter")
    config = write_config(root, train={"max_steps": 2, "save_steps": 2}, eval={"metrics": ["loss"]})
    return root


def run_cli(args: list[str], capsys) -> str:
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    assert "Traceback" not in err
    assert re.search(r"(^|\n)error: ", err) or "problem(s)" in err, err[-2000:]
    return err


def damaged_adapter(assets: Path, tmp_path: Path, name: str, content: bytes) -> Path:
    import shutil

    folder = tmp_path / "adapter"
    shutil.copytree(assets / "adapter", folder)
    (folder / name).write_bytes(content)
    return folder


ADAPTER_DAMAGE = {
    "weights cut short": ("adapter_model.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{}", "adapter_model.safetensors"),
    "config not UTF-8": ("adapter_config.json", b"\xff\xfe", "adapter_config.json"),
    "config claims a huge rank": ("adapter_config.json", None, "would create more than"),
}


@pytest.mark.parametrize("command", ["eval", "generate", "chat", "merge"])
@pytest.mark.parametrize("label", list(ADAPTER_DAMAGE))
def test_adapter_commands_on_damaged_adapters(command, label, assets, tmp_path, capsys, monkeypatch):
    name, content, message = ADAPTER_DAMAGE[label]
    if content is None:
        data = json.loads((assets / "adapter" / name).read_text())
        content = json.dumps({**data, "r": 10**9}).encode()
    folder = damaged_adapter(assets, tmp_path, name, content)
    before = folder_state(folder)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"hello\n")))
    extra = {"eval": ["--data", assets / "eval.jsonl", "--model", assets / "tiny-llama"],
             "generate": ["--prompt", "hi", "--model", assets / "tiny-llama"], "chat": ["--model", assets / "tiny-llama"],
             "merge": ["--out", tmp_path / "merged", "--model", assets / "tiny-llama"]}[command]
    err = run_cli([command, folder, *extra], capsys)
    assert message in err
    assert folder_state(folder) == before and not (tmp_path / "merged").exists()


def test_chat_reads_piped_bytes_that_are_not_utf8(assets, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"caf\xe9 \xff\n/exit\n")))
    assert main(["chat", str(assets / "adapter"), "--model", str(assets / "tiny-llama"), "--max-new-tokens", "2"]) == 0
    assert "Traceback" not in capsys.readouterr().err


def test_merge_into_a_file_or_a_read_only_folder(assets, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    err = run_cli(["merge", assets / "adapter", "--out", tmp_path / "file", "--model", assets / "tiny-llama"], capsys)
    assert "file" in err and (tmp_path / "file").read_text() == "x"
    (tmp_path / "ro").mkdir()
    with read_only(tmp_path / "ro"):
        err = run_cli(["merge", assets / "adapter", "--out", tmp_path / "ro" / "merged", "--model",
                       assets / "tiny-llama", "--no-check"], capsys)
    assert str(tmp_path / "ro") in err and not list((tmp_path / "ro").iterdir())


def test_merge_onto_a_full_disk(assets, tmp_path, capsys):
    with small_disk(tmp_path / "disk", size_kb=64) as disk:
        err = run_cli(["merge", assets / "adapter", "--out", disk / "merged", "--model", assets / "tiny-llama",
                       "--no-check"], capsys)
        assert "No space left on device" in err and str(disk) in err
        assert not [p for p in disk.iterdir()]


def test_eval_with_a_binary_data_file(assets, tmp_path, capsys):
    (tmp_path / "bad.jsonl").write_bytes(b'{"messages": []}\n\x80\x81\n')
    err = run_cli(["eval", assets / "adapter", "--data", tmp_path / "bad.jsonl", "--model", assets / "tiny-llama"], capsys)
    assert "bad.jsonl row 2: not UTF-8" in err


def test_eval_out_blocked_by_a_file(assets, tmp_path, capsys):
    (tmp_path / "blocker").write_text("x")
    err = run_cli(["eval", assets / "adapter", "--data", assets / "eval.jsonl", "--model", assets / "tiny-llama",
                   "--out", tmp_path / "blocker" / "results.json"], capsys)
    assert "blocker" in err and (tmp_path / "blocker").read_text() == "x"


@pytest.fixture
def runs_dir(tmp_path, monkeypatch):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tracking"))
    from fake_runs import make_run

    monkeypatch.chdir(tmp_path)
    make_run(tmp_path / "runs", "20261122-100000-a-aaaaaa")
    make_run(tmp_path / "runs", "20261122-110000-b-bbbbbb")
    return tmp_path / "runs"


@pytest.mark.parametrize("command", [["report", "--out"], ["plot", "20261122-1000", "--out"],
                                     ["compare", "20261122-1000", "20261122-1100", "--out"]],
                         ids=["report", "plot", "compare"])
def test_runs_outputs_blocked_read_only_or_on_a_full_disk(command, runs_dir, tmp_path, capsys):
    (tmp_path / "blocker").write_text("x")
    before = folder_state(runs_dir)
    err = run_cli(["runs", "--dir", runs_dir, *command, tmp_path / "blocker" / "out.file"], capsys)
    assert "blocker" in err
    (tmp_path / "ro").mkdir()
    with read_only(tmp_path / "ro"):
        err = run_cli(["runs", "--dir", runs_dir, *command, tmp_path / "ro" / "out.file"], capsys)
    assert str(tmp_path / "ro") in err
    assert without_index(folder_state(runs_dir)) == without_index(before)


def without_index(state: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in state.items() if ".peftkit-index" not in k}


def test_runs_dir_that_is_a_file(tmp_path, capsys):
    (tmp_path / "runs").write_text("x")
    assert "is not a folder" in run_cli(["runs", "--dir", tmp_path / "runs", "list"], capsys)


def test_runs_on_a_read_only_runs_folder_still_list(runs_dir, capsys):
    for suffix in ("", "-wal", "-shm"):
        (runs_dir / f".peftkit-index.sqlite{suffix}").unlink(missing_ok=True)
    with read_only(runs_dir):
        assert main(["runs", "--dir", str(runs_dir), "list"]) == 0
        assert "20261122-100000-a-aaaaaa" in capsys.readouterr().out
        err = run_cli(["runs", "--dir", runs_dir, "rm", "--yes", "20261122-1000"], capsys)
        assert "Read-only file system" in err or "Permission denied" in err
    assert (runs_dir / "20261122-100000-a-aaaaaa").exists()


RESUME_DAMAGE = {
    "config.yaml alias bomb": ("config.yaml", ("a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
        f"b{i}: &b{i} [{', '.join(['*a' if i == 0 else f'*b{i - 1}'] * 9)}]\n" for i in range(8))).encode(), "expands"),
    "config.yaml not UTF-8": ("config.yaml", b"\xff", "not UTF-8"),
    "run.json not JSON": ("run.json", b"{", "not valid JSON"),
}


@pytest.mark.parametrize("label", list(RESUME_DAMAGE))
def test_resume_of_a_run_folder_with_a_damaged_file(label, runs_dir, capsys):
    run = runs_dir / "20261122-100000-a-aaaaaa"
    name, content, message = RESUME_DAMAGE[label]
    (run / name).write_bytes(content)
    before = folder_state(run)
    err = run_cli(["train", "--resume", run], capsys)
    assert name in err and message in err
    assert folder_state(run) == before


def test_inspect_with_an_invalid_regex(assets, capsys):
    err = run_cli(["inspect", assets / "tiny-llama", "--target-modules", "q_proj[", "--regex"], capsys)
    assert "target_modules" in err and "not a valid regular expression" in err
