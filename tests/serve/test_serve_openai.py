"""The official ``openai`` client against a live server on 127.0.0.1: models, chat and text
completions (plain and streamed), every answer equal to ``PeftModel.generate`` with that adapter
alone, sampling options, and the errors OpenAI's client turns into its exception classes."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from peftkit.serve.settings import ServeSettings
from serve_helpers import LiveServer, Reference, chat_ids, make_adapter, model_dir

MESSAGES = [{"role": "user", "content": "Hello"}]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("openai")
    base = model_dir(root)
    adapters = {name: make_adapter(base, root / "adapters" / name, seed) for seed, name in enumerate("ab")}
    settings = ServeSettings(model=str(base), served_model_name="tiny", adapters={k: str(v) for k, v in adapters.items()},
                             threads=1, max_tokens=64, max_body_bytes=20_000, max_n=4)
    with LiveServer(settings) as server:
        yield server, Reference(base), {**adapters, "tiny": None}


def test_models_lists_the_base_model_and_every_adapter(setup):
    server, _, _ = setup
    models = server.client().models.list().data
    assert [(m.id, getattr(m, "parent", None)) for m in models] == [("tiny", None), ("a", "tiny"), ("b", "tiny")]
    assert server.client().models.retrieve("a").id == "a"
    with pytest.raises(openai.NotFoundError):
        server.client().models.retrieve("nope")


@pytest.mark.parametrize("model", ["a", "b", "tiny"])
def test_chat_answers_equal_generate_with_that_adapter_alone(setup, model):
    server, ref, paths = setup
    reply = server.client().chat.completions.create(model=model, messages=MESSAGES, max_tokens=12, temperature=0)
    assert reply.choices[0].message.content == ref.answer(paths[model], chat_ids(MESSAGES), 12)
    assert reply.choices[0].finish_reason == ("length" if reply.usage.completion_tokens == 12 else "stop")
    assert reply.usage.prompt_tokens == len(chat_ids(MESSAGES)) and reply.model == model


def test_streamed_chat_and_completion_equal_the_whole_answers(setup):
    server, ref, paths = setup
    client = server.client()
    chunks = list(client.chat.completions.create(model="a", messages=MESSAGES, max_tokens=10, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == ref.answer(paths["a"], chat_ids(MESSAGES), 10)
    assert chunks[-1].choices == [] and 0 < chunks[-1].usage.completion_tokens <= 10
    finish = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
    assert finish == ("length" if chunks[-1].usage.completion_tokens == 10 else "stop")
    whole = client.completions.create(model="b", prompt="abc", max_tokens=8, temperature=0)
    streamed = client.completions.create(model="b", prompt="abc", max_tokens=8, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == whole.choices[0].text
    assert whole.choices[0].text == ref.answer(paths["b"], ref.tok("abc")["input_ids"], 8)


def test_completions_take_several_prompts_token_ids_echo_and_n(setup):
    server, ref, paths = setup
    client = server.client()
    tok = ref.tok
    reply = client.completions.create(model="a", prompt=["abc", "hello"], max_tokens=5, temperature=0, n=2)
    texts = [c.text for c in sorted(reply.choices, key=lambda c: c.index)]
    expected = [ref.answer(paths["a"], tok(p)["input_ids"], 5) for p in ["abc", "hello"]]
    assert texts == [expected[0], expected[0], expected[1], expected[1]]
    assert reply.usage.prompt_tokens == len(tok("abc")["input_ids"]) + len(tok("hello")["input_ids"])
    ids = client.completions.create(model="a", prompt=tok("abc")["input_ids"], max_tokens=5, temperature=0)
    assert ids.choices[0].text == expected[0]
    echoed = client.completions.create(model="a", prompt="abc", max_tokens=5, temperature=0, echo=True)
    assert echoed.choices[0].text == "abc" + expected[0]


def test_a_seed_repeats_a_sampled_answer(setup):
    server, _, _ = setup
    client = server.client()
    ask = dict(model="b", messages=MESSAGES, max_tokens=12, temperature=1.5, top_p=0.95, n=2)
    first = client.chat.completions.create(seed=11, **ask)
    again = client.chat.completions.create(seed=11, **ask)
    other = client.chat.completions.create(seed=12, **ask)
    texts = [c.message.content for c in first.choices]
    assert texts == [c.message.content for c in again.choices]
    assert texts != [c.message.content for c in other.choices]
    assert texts[0] != texts[1]  # each choice samples on its own


def test_stop_strings_end_the_answer_before_them(setup):
    server, ref, paths = setup
    full = ref.answer(paths["a"], chat_ids(MESSAGES), 20)
    cut = next(i for i in range(3, len(full)) if full[i].isprintable() and full[i] not in full[:i])
    reply = server.client().chat.completions.create(model="a", messages=MESSAGES, max_tokens=20, temperature=0,
                                                    stop=["\x00never", full[cut]])
    assert reply.choices[0].message.content == full[:cut] and reply.choices[0].finish_reason == "stop"
    streamed = server.client().chat.completions.create(model="a", messages=MESSAGES, max_tokens=20, temperature=0,
                                                       stop=full[cut], stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == full[:cut]


def test_errors_come_in_openais_shape(setup):
    server, _, _ = setup
    client = server.client()
    with pytest.raises(openai.NotFoundError, match="does not exist") as e:
        client.chat.completions.create(model="nope", messages=MESSAGES)
    assert e.value.body["code"] == "model_not_found" and e.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError, match="invalid") as e:
        client.chat.completions.create(model="../../etc/passwd", messages=MESSAGES)  # the one naming rule
    assert e.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError, match="at most 64") as e:
        client.chat.completions.create(model="a", messages=MESSAGES, max_tokens=65)
    with pytest.raises(openai.BadRequestError, match="prompt has 300 tokens") as e:
        client.completions.create(model="a", prompt="x" * 300, max_tokens=5)
    assert e.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError, match="tools is not supported"):
        client.chat.completions.create(model="a", messages=MESSAGES, tools=[{"type": "function", "function": {"name": "f"}}])
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.chat.completions.create(model="a", messages=MESSAGES, temperature=3)
    with pytest.raises(openai.BadRequestError, match="n is 5"):
        client.chat.completions.create(model="a", messages=MESSAGES, n=5)
    with server.http() as http:
        bad = http.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
        assert bad.status_code == 400 and "not valid JSON" in bad.json()["error"]["message"]
        huge = http.post("/v1/completions", json={"model": "a", "prompt": "x" * 30_000})
        assert huge.status_code == 413 and huge.json()["error"]["code"] == "body_too_large"

        def chunks():
            yield b'{"model": "a", "prompt": "'
            for _ in range(30):
                yield b"x" * 1000
            yield b'"}'
        streamed = http.post("/v1/completions", content=chunks())  # no Content-Length: counted as it arrives
        assert streamed.status_code == 413


def test_health_and_metrics(setup):
    server, _, _ = setup
    server.client().chat.completions.create(model="a", messages=MESSAGES, max_tokens=3)
    with server.http() as http:
        health = http.get("/health").json()
        assert health["status"] == "ok" and health["model"] == "tiny" and health["adapters"] == 2
        text = http.get("/metrics").text
    for series in ['peftkit_serve_requests_total{endpoint="chatcmpl",model="a",status="200"}',
                   'peftkit_serve_requests_total{endpoint="chatcmpl",model="unknown",status="404"}',
                   "peftkit_serve_generated_tokens_total", "peftkit_serve_batch_size_bucket",
                   'peftkit_serve_adapter_loads_total{adapter="a"}', "peftkit_serve_tokens_per_second",
                   "peftkit_serve_queue_length", "peftkit_serve_time_to_first_token_seconds_bucket"]:
        assert series in text, series


def test_api_keys_guard_everything_but_health(tmp_path):
    base = model_dir(tmp_path)
    with LiveServer(ServeSettings(model=str(base), api_keys=["sk-one", "sk-two"], threads=1)) as server:
        with pytest.raises(openai.AuthenticationError) as e:
            server.client(api_key="sk-wrong").models.list()
        assert e.value.body["code"] == "invalid_api_key"
        assert server.client(api_key="sk-two").models.list().data[0].id == str(base)
        with server.http() as http:
            assert http.get("/health").status_code == 200
            assert http.get("/metrics").status_code == 401
            assert http.get("/metrics", headers={"Authorization": "Bearer sk-one"}).status_code == 200
            body = http.post("/v1/completions", json={"model": str(base), "prompt": "x"}).json()
            assert json.dumps(body).count("invalid_api_key") == 1
