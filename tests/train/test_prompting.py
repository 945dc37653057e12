"""`generate` and `chat` on a run folder frame prompts as the run's training rows were: the same chat
template, the system prompt the rows share, the data format (prompt.json beside the adapter; derived
from config.yaml and the data for older runs), each overridable."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
from tiny_assets import the_run, write_config, write_jsonl

from peftkit.cli import main
from peftkit.models import load_tokenizer
from peftkit.train import commands
from peftkit.train.prompting import STYLE_FILE, PromptStyle, read_style, shared_system_prompt

SYSTEM = "Shout it."


def rows(n, offset=0, system=SYSTEM):
    head = [{"role": "system", "content": system}] if system else []
    return [{"messages": head + [{"role": "user", "content": f"Echo {i}"}, {"role": "assistant", "content": f"{i}!"}]}
            for i in range(offset, offset + n)]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("prompting")
    config = write_config(root, train={"max_steps": 3, "eval_steps": 3, "save_steps": 3, "max_seq_len": 128})
    write_jsonl(root / "train.jsonl", rows(12))
    write_jsonl(root / "eval.jsonl", rows(3, offset=100))
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["train", str(config)]) == 0
    return the_run(root)


def test_shared_system_prompt():
    assert shared_system_prompt(rows(3)) == SYSTEM
    assert shared_system_prompt(rows(2) + rows(1, system="other")) is None  # several: none is the run's
    assert shared_system_prompt(rows(2) + rows(1, system=None)) is None
    assert shared_system_prompt([]) is None


def test_the_run_saves_its_prompt_style_beside_the_adapter(run):
    saved = json.loads((run / "adapter" / STYLE_FILE).read_text())
    tok = load_tokenizer(str(run.parent.parent / "tiny-llama"))
    assert saved == {"format": "chat", "system": SYSTEM, "chat_template": tok.chat_template}


def test_generate_renders_the_prompt_exactly_as_evaluation_in_training_did(run, capsys):
    predictions = json.loads((run / "eval_predictions.json").read_text())
    tok = load_tokenizer(str(run.parent.parent / "tiny-llama"))
    style = commands.prompt_style(str(run))
    assert "using the run's system prompt" in capsys.readouterr().err  # the user is told, and how to change it
    assert commands.chat_prompt(tok, style.messages("Echo 100"), style.chat_template) == predictions[0]["prompt"]
    # end to end: the same greedy answer as the run's own evaluation of that row
    assert main(["generate", str(run), "--prompt", "Echo 100", "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out.splitlines()[1] == predictions[0]["prediction"].strip()


def _prompts_sent(monkeypatch) -> list[str]:
    sent: list[str] = []

    def fake_complete(model, tokenizer, prompts, *args, **kwargs):
        sent.extend(prompts)
        return ["ok"] * len(prompts)

    monkeypatch.setattr(commands, "complete", fake_complete)
    return sent


@pytest.mark.parametrize("flags, system_in_prompt", [([], SYSTEM), (["--system", "Be brief."], "Be brief."),
                                                      (["--no-system"], None)])
def test_generate_and_chat_use_the_run_system_prompt_unless_told_otherwise(run, monkeypatch, flags, system_in_prompt):
    sent = _prompts_sent(monkeypatch)
    assert main(["generate", str(run), "--prompt", "Echo 7", *flags]) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO("Echo 8\n"))
    assert main(["chat", str(run), *flags]) == 0
    assert len(sent) == 2
    for prompt in sent:
        assert "<|im_start|>user\nEcho" in prompt and prompt.endswith("<|im_start|>assistant\n")
        assert (f"<|im_start|>system\n{system_in_prompt}<|im_end|>" in prompt) if system_in_prompt else "system" not in prompt


def test_raw_sends_the_prompt_as_it_is(run, monkeypatch):
    sent = _prompts_sent(monkeypatch)
    assert main(["generate", str(run), "--prompt", "Echo 7", "--raw"]) == 0
    assert sent == ["Echo 7"]


def test_a_run_without_prompt_json_gets_its_style_from_config_and_data(run, tmp_path):
    (run / "adapter" / STYLE_FILE).rename(tmp_path / STYLE_FILE)  # as a run from before the file existed
    try:
        style = read_style(str(run / "adapter"), str(run))
    finally:
        (tmp_path / STYLE_FILE).rename(run / "adapter" / STYLE_FILE)
    assert style == PromptStyle(format="chat", system=SYSTEM, chat_template=None)  # the tokenizer's template then


def test_a_damaged_prompt_json_is_an_error_naming_it_and_the_fix(tmp_path, capsys):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / STYLE_FILE).write_text('{"format": 3}')
    with pytest.raises(commands.CommandError, match=r"prompt\.json: must be a JSON object .* delete it"):
        read_style(str(adapter), None)


def test_a_text_run_is_prompted_raw():
    style = PromptStyle(format="text")
    assert not style.templated and PromptStyle(format="prompt_completion").templated
