"""The README's code blocks run as written: the Python blocks verbatim on the bundled SmolLM2 (in a
scratch folder, one namespace, in order), the command-line block on the tiny local model with the
run folder it creates in place of `runs/<id>`, and the serving blocks against a live `peftkit serve`
of the tiny model and a run trained on it (the address it prints in place of port 8000). The docs
site's home page shows the same quick start."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import threading
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


def is_client_block(block: str) -> bool:
    """A block that talks to a running `peftkit serve` (run by the serving test, not the others)."""
    return "from openai import" in block


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
    blocks = [b for b in code_blocks(ROOT / "README.md", "python") if not is_client_block(b)]
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


README_URL = "http://127.0.0.1:8000/v1"
SERVE_TIMEOUT = 120  # seconds the server may take to start, answer and stop before it is killed


def readme_serve_command() -> list[str]:
    """The README's `peftkit serve ...` line as an argument list, comment dropped."""
    (line,) = [line for b in code_blocks(ROOT / "README.md", "bash") for line in b.splitlines()
               if line.startswith("peftkit serve ")]
    assert README_URL in line  # the address the client block uses is the one the command promises
    return shlex.split(line, comments=True)[1:]


@pytest.mark.slow  # trains a tiny run, then starts a server process (~20-30 s on 2 shared cores)
def test_client_block_runs_against_a_live_peftkit_serve(tmp_path, monkeypatch, capsys):
    """The README's serve line with the tiny model in place of SmolLM2 and a tiny run in place of
    `runs/<id>`, started as a process on a free port of 127.0.0.1; the client block runs verbatim
    but for that port; SIGTERM then stops the server (killed if it outlives SERVE_TIMEOUT)."""
    for module in ("fastapi", "uvicorn", "prometheus_client", "openai"):
        pytest.importorskip(module)
    (block,) = [b for b in code_blocks(ROOT / "README.md", "python") if is_client_block(b)]
    monkeypatch.chdir(tmp_path)
    assert main(["train", str(write_config(tmp_path, output={"dir": "runs"})), "train.max_steps=2"]) == 0
    (run,) = [p for p in (tmp_path / "runs").iterdir() if (p / "adapter").is_dir()]
    model = str(tmp_path / "tiny-llama")
    args = [model if a == "smollm2-135m-instruct" else a.replace("runs/<id>", str(run)) for a in readme_serve_command()]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "peftkit.cli", *args, "--port", "0", "--threads", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    watchdog = threading.Timer(SERVE_TIMEOUT, proc.kill)
    watchdog.start()
    try:
        line = proc.stdout.readline()  # "peftkit serve: MODEL with 1 adapter(s) on http://127.0.0.1:PORT/v1"
        assert "with 1 adapter(s) on http://127.0.0.1:" in line, (line, "" if proc.poll() is None else proc.stderr.read())
        namespace: dict = {"__name__": "readme"}
        exec(compile(block.replace(README_URL, line.split()[-1]), "README.md", "exec"), namespace)  # noqa: S102
        reply = namespace["reply"]
        assert reply.model == "contacts" and reply.choices[0].finish_reason in ("stop", "length")
        assert capsys.readouterr().out.endswith(reply.choices[0].message.content + "\n")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Traceback" not in proc.stderr.read()
