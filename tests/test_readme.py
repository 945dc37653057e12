"""The README's code blocks run as written: the Python blocks verbatim on the bundled SmolLM2 (in a
scratch folder, one namespace, in order), the command-line block on the tiny local model with the
run folder it creates in place of `runs/<id>`. The docs site's home page shows the same blocks."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml
from train.tiny_assets import write_config

from peftkit.cli import main

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def code_blocks(path: Path, language: str) -> list[str]:
    """The fenced blocks of one language in a Markdown file, in order."""
    return [body for lang, body in FENCE.findall(path.read_text()) if lang == language]


def quick_start_blocks(path: Path) -> list[str]:
    """Python and bash blocks between the '## Quick start' heading and the next '## ' heading."""
    text = path.read_text()
    section = text[text.index("## Quick start"):]
    section = section[:section.index("\n## ", 1)]
    return [body for lang, body in FENCE.findall(section) if lang in ("python", "bash")]


def test_the_docs_home_page_shows_the_readme_quick_start():
    assert quick_start_blocks(ROOT / "docs" / "index.md") == quick_start_blocks(ROOT / "README.md")


@pytest.mark.slow  # loads the bundled SmolLM2 twice (~40 s on 2 cores)
def test_python_blocks_run_verbatim(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    namespace: dict = {"__name__": "readme"}
    blocks = code_blocks(ROOT / "README.md", "python")
    assert len(blocks) >= 2
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - the README is ours
    # what the comments promise
    assert (tmp_path / "out" / "adapter" / "adapter_model.safetensors").is_file()
    assert namespace["out"].logits.shape[0] == 3
    assert not hasattr(namespace["merged"], "peft_config")


def readme_commands() -> list[list[str]]:
    """The README's `peftkit ...` command lines as argument lists, comments dropped."""
    (block,) = [b for b in code_blocks(ROOT / "README.md", "bash") if "peftkit train" in b]
    commands = [shlex.split(line, comments=True) for line in block.splitlines()]
    assert all(words[0] == "peftkit" for words in commands), commands
    return [words[1:] for words in commands]


def test_command_line_block_runs_on_the_tiny_model(tmp_path, monkeypatch, capsys, torch_single_thread):
    """Each line with the quick-start config swapped for the tiny model's (same sections and task)."""
    quickstart = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())
    tiny = write_config(tmp_path, output={"dir": "runs"})
    assert set(yaml.safe_load(tiny.read_text())) == set(quickstart)
    monkeypatch.chdir(tmp_path)
    run = None
    for args in readme_commands():
        args = [str(tiny) if a == "examples/quickstart.yaml" else a for a in args]
        if "runs/<id>" in args:
            (run,) = [p for p in (tmp_path / "runs").iterdir() if p.is_dir() and (p / "adapter").is_dir()]
            args = [str(run) if a == "runs/<id>" else a for a in args]
        assert main(args) == 0, (args, capsys.readouterr().err[-2000:])
    assert (tmp_path / "out" / "merged" / "config.json").is_file()
    assert run.name in capsys.readouterr().out  # `runs list` shows the run
