"""The server's parts without HTTP: the batch cache (rows joining and leaving between steps give
exactly what ``PeftModel.generate`` gives alone), token choice, text pieces and stop strings,
settings, adapter sources and request checks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

import peftkit as pk
from peftkit.errors import ConfigError
from peftkit.names import BASE_ADAPTER
from peftkit.serve.errors import ServeError
from peftkit.serve.kv import BatchCache
from peftkit.serve.protocol import ChatCompletionRequest, CompletionRequest, sampling_params
from peftkit.serve.runner import ModelRunner
from peftkit.serve.sampling import SamplingParams, next_tokens
from peftkit.serve.settings import ServeSettings, parse_size
from peftkit.serve.sources import adapter_specs, adapters_file, allowed_path, read_source, scan
from peftkit.serve.text import IncrementalDecoder, StopMatcher
from serve_helpers import make_adapter
from tiny_assets import tiny_model_dir, tiny_tokenizer

pytestmark = pytest.mark.usefixtures("torch_single_thread")
GREEDY = SamplingParams(max_tokens=1, temperature=0.0)


@pytest.fixture(scope="module")
def three_adapters(tmp_path_factory):
    """A tiny Llama with adapters a, b, c (random LoRA weights, different ranks)."""
    root = tmp_path_factory.mktemp("units")
    base_dir = tiny_model_dir(root)
    model = pk.PeftModel(AutoModelForCausalLM.from_pretrained(base_dir).eval(), None)
    for seed, name in enumerate("abc"):
        model.load_adapter(make_adapter(base_dir, root / name, seed, r=2 + 2 * seed), adapter_name=name)
    return model.eval()


def _greedy(model, prompt, adapter, n):
    out = model.generate(input_ids=torch.tensor([prompt]), adapter_names=[adapter], max_new_tokens=n, do_sample=False,
                         eos_token_id=None, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def test_rows_joining_and_leaving_between_steps_decode_as_alone(three_adapters):
    """Two requests decode 3 steps, two more join (one longer than the running ones, so the
    batch is re-padded), rows leave as they reach their lengths: each equals generate() alone."""
    model, tok = three_adapters, tiny_tokenizer()
    prompts = [tok(t)["input_ids"] for t in ["hello there", "a longer prompt than the others, by far", "x", "abcdefgh"]]
    names, lengths = ["a", "b", BASE_ADAPTER, "c"], [14, 6, 11, 9]
    expected = [_greedy(model, p, n, k) for p, n, k in zip(prompts, names, lengths)]
    runner, batch, out, rows = ModelRunner(model), BatchCache(), [[] for _ in prompts], []

    def admit(idx):
        logits, tensors = runner.prefill([prompts[i] for i in idx], [names[i] for i in idx])
        for i, token in zip(idx, next_tokens(logits, [(GREEDY, None, [])] * len(idx))):
            out[i].append(token)
        batch.add(tensors, [len(prompts[i]) for i in idx])
        rows.extend(idx)

    def step():
        logits = runner.decode(batch, [out[i][-1] for i in rows], [names[i] for i in rows])
        for i, token in zip(rows, next_tokens(logits, [(GREEDY, None, [])] * len(rows))):
            out[i].append(token)
        keep = [k for k, i in enumerate(rows) if len(out[i]) < lengths[i]]
        batch.keep(keep)
        rows[:] = [rows[k] for k in keep]

    admit([0, 2])
    for _ in range(3):
        step()
    admit([1, 3])
    while rows:
        step()
    assert out == expected
    assert len({tuple(e) for e in expected}) == 4  # the adapters really differ


def test_batch_cache_drops_padding_columns_nobody_uses():
    batch = BatchCache()
    k = torch.randn(2, 1, 40, 4)
    batch.add([(k, k.clone())], [40, 3])
    batch.keep([1])  # the long row leaves: 37 columns of pure padding
    assert batch.width == 3 and batch.mask.tolist() == [[1, 1, 1]]
    torch.testing.assert_close(batch.cache.layers[0].keys[0], k[1, :, :3])


def test_sampling_is_seeded_per_sequence_and_top_p_keeps_the_nucleus():
    logits = torch.tensor([[2.0, 1.9, -5.0, -5.0]] * 2)
    params = SamplingParams(max_tokens=1, temperature=1.0, top_p=0.5, seed=7)
    draws = {next_tokens(logits, [(params, params.generator(torch.device("cpu")), [])] * 2)[0] for _ in range(20)}
    assert draws == {0}  # token 0 alone reaches half of the mass
    wide = SamplingParams(max_tokens=1, temperature=1.0, seed=3)
    a = [next_tokens(logits[:1], [(wide, g, [])])[0] for g in [wide.generator(torch.device("cpu"))] for _ in range(30)]
    b = [next_tokens(logits[:1], [(wide, g, [])])[0] for g in [wide.generator(torch.device("cpu"))] for _ in range(30)]
    assert a == b and set(a) == {0, 1}


def test_penalties_and_logit_bias_change_the_greedy_choice():
    logits = torch.tensor([[3.0, 2.5, 0.0]])
    assert next_tokens(logits, [(SamplingParams(1, temperature=0.0, logit_bias={2: 10.0}), None, [])]) == [2]
    assert next_tokens(logits, [(SamplingParams(1, temperature=0.0, frequency_penalty=1.0), None, [0])]) == [1]


@pytest.mark.parametrize("text", ["plain ascii words", "émoji 🙂 and 中文 mixed", "\ufffd\x00 control"])
def test_incremental_decoding_sends_exactly_the_full_text(text):
    tok = tiny_tokenizer()
    ids = tok(text)["input_ids"] + [255, 254]  # end on bytes that are no complete character
    dec = IncrementalDecoder(tok)
    pieces = [dec.push(t) for t in ids] + [dec.flush()]
    assert "".join(pieces) == tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    assert not any(p.endswith("\ufffd") for p in pieces[:len(text.encode()) - 1])


def test_stop_strings_are_cut_even_across_pieces_and_never_sent():
    m = StopMatcher(["END", "\n\n"])
    sent = [m.feed(p) for p in ["Hello E", "N", "D tail"]]
    assert sent == [("Hello ", False), ("", False), ("", True)]
    m = StopMatcher(["END"])
    assert m.feed("abcE") == ("abc", False) and m.feed("x") == ("Ex", False) and m.flush() == ""
    m = StopMatcher(["END"])
    assert m.feed("xxEN") == ("xx", False) and m.flush() == "EN"


def test_settings_and_sizes_are_checked():
    assert parse_size("1GiB") == 2**30 and parse_size("1.5k") == 1500
    with pytest.raises(ConfigError, match="not a size"):
        parse_size("lots")
    with pytest.raises(ConfigError) as e:
        ServeSettings(model="m", max_batch_size=0, dtype="int3", api_keys=[""])
    assert {p for p, _ in e.value.problems} == {"max_batch_size", "dtype", "api_keys"}
    with pytest.raises(ConfigError) as e:  # counts are whole; only waits and the port may be 0
        ServeSettings(model="m", max_tokens=2.5, queue_timeout=0, request_timeout=-1, max_n=True)
    assert dict(e.value.problems) == {"max_tokens": "must be a whole number, got 2.5",
                                      "queue_timeout": "must be a number > 0, got 0",
                                      "request_timeout": "must be a number > 0, got -1",
                                      "max_n": "must be a number > 0, got True"}
    ServeSettings(model="m", port=0, watch_interval=0, shutdown_grace=0, request_timeout=0.5)


def test_adapter_sources_names_files_and_directories(tmp_path):
    assert adapter_specs(["x=runs/a", "runs/b", "runs/c/adapter"]) == {"x": "runs/a", "b": "runs/b", "c": "runs/c/adapter"}
    with pytest.raises(ConfigError, match="twice"):
        adapter_specs(["x=a", "x=b"])
    (tmp_path / "list.yaml").write_text("- one\n- two/\n")
    assert adapters_file(str(tmp_path / "list.yaml")) == {"one": str(tmp_path / "one"), "two": str(tmp_path) + "/two/"}
    (tmp_path / "bad.yaml").write_text("a: [1]\n")
    with pytest.raises(ConfigError, match="name: folder"):
        adapters_file(str(tmp_path / "bad.yaml"))
    base_dir = tiny_model_dir(tmp_path)
    watched = tmp_path / "watched"
    make_adapter(base_dir, watched / "good", 0)
    make_adapter(base_dir, watched / "bad.name", 1)  # not a valid adapter name: not served
    (watched / "empty").mkdir()
    assert scan([str(watched)]) == {"good": str(watched / "good")}
    with pytest.raises(ServeError, match="invalid") as e:
        read_source("../x", str(watched / "good"), "test")
    assert e.value.status == 400


def test_runtime_load_paths_stay_inside_the_configured_directories(tmp_path):
    root = tmp_path / "adapters"
    (root / "a").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    os.symlink(tmp_path / "outside", root / "escape")
    assert allowed_path("a", [str(root)]) == str(root / "a")
    assert allowed_path(str(root / "a"), [str(root)]) == str(root / "a")
    for path in ["../outside", str(tmp_path / "outside"), "escape", "a/../../outside"]:
        with pytest.raises(ServeError, match="outside the adapter directories") as e:
            allowed_path(path, [str(root)])
        assert e.value.status == 403
    with pytest.raises(ServeError, match="--adapter-dir") as e:
        allowed_path("a", [])
    assert e.value.status == 403


def test_request_checks_name_the_field():
    chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(ServeError, match="Unrecognized request argument supplied: temprature"):
        ChatCompletionRequest.model_validate({**chat, "temprature": 0})
    with pytest.raises(ServeError, match="tools is not supported") as e:
        ChatCompletionRequest.model_validate({**chat, "tools": [{"type": "function"}]})
    assert e.value.param == "tools"
    ChatCompletionRequest.model_validate({**chat, "user": "u1", "logprobs": False, "tools": []})  # asks for nothing
    settings = ServeSettings(model="m", max_tokens=100)
    req = CompletionRequest(model="m", prompt="x", max_tokens=101)
    with pytest.raises(ServeError, match="at most 100") as e:
        sampling_params(req, 5, settings, context=1000, default_max_tokens=16, vocab_size=10)
    assert e.value.param == "max_tokens"
    with pytest.raises(ServeError, match="context is 64 tokens") as e:
        sampling_params(CompletionRequest(model="m", prompt="x", max_tokens=10), 60, settings, 64, 16, 10)
    assert e.value.code == "context_length_exceeded"
    with pytest.raises(ServeError, match="prompt has 64 tokens"):
        sampling_params(req, 64, settings, 64, 16, 10)
    assert sampling_params(CompletionRequest(model="m", prompt="x"), 60, settings, 64, 16, 10).max_tokens == 4
    with pytest.raises(ServeError, match="logit_bias"):
        sampling_params(CompletionRequest(model="m", prompt="x", logit_bias={"99": 1}), 1, settings, 64, 16, 10)


def test_a_run_folder_serves_its_final_adapter(tmp_path):
    base_dir = tiny_model_dir(tmp_path)
    run = tmp_path / "runs" / "20260101-000000-demo-abc123"
    make_adapter(base_dir, run / "adapter", 0)
    (run / "config.yaml").write_text("model: {name: x}\n")
    (run / "run.json").write_text("{}")
    source = read_source("demo", str(run), "test")
    assert Path(source.path) == run / "adapter" and source.config.peft_type == "LORA"
