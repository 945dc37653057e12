"""Adapters at runtime: vLLM's load/unload routes (only from configured directories, names
checked), unloading while a request uses the adapter, LRU eviction within a budget (requests
wait for memory that running requests hold), bad adapter files, watched directories."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

import peftkit as pk
from peftkit.errors import ConfigError
from peftkit.serve.server import build_context
from peftkit.serve.settings import ServeSettings
from serve_helpers import LiveServer, Reference, make_adapter, model_dir, paused, sample, slow_steps, wait_until

ASK = dict(prompt="hello", max_tokens=6, temperature=0, extra_body={"ignore_eos": True})


def _answer(server, model: str) -> str:
    return server.client().completions.create(model=model, **ASK).choices[0].text


def _expected(ref: Reference, path) -> str:
    return ref.answer(path, ref.tok("hello")["input_ids"], 6, ignore_eos=True)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    base = model_dir(root)
    paths = {name: make_adapter(base, root / "made" / name, seed + 1) for seed, name in enumerate("abc")}
    return root, base, paths, Reference(base)


def test_load_and_unload_routes(assets, tmp_path):
    root, base, paths, ref = assets
    store = tmp_path / "store"
    shutil.copytree(paths["a"], store / "nested" / "x")  # not a direct sub-folder: served only when loaded
    with LiveServer(ServeSettings(model=str(base), adapter_dirs=[str(store)], threads=1)) as server, server.http() as http:
        ok = http.post("/v1/load_lora_adapter", json={"lora_name": "x1", "lora_path": "nested/x"})
        assert ok.status_code == 200 and "x1" in ok.text
        assert "x1" in [m.id for m in server.client().models.list().data]
        assert _answer(server, "x1") == _expected(ref, paths["a"])
        refusals = {
            "outside": ({"lora_name": "y", "lora_path": str(paths["b"])}, 403, "outside the adapter directories"),
            "escape": ({"lora_name": "y", "lora_path": "../../made/b"}, 403, "outside the adapter directories"),
            "name": ({"lora_name": "../y", "lora_path": "nested/x"}, 400, "invalid"),
            "twice": ({"lora_name": "x1", "lora_path": "nested/x"}, 400, "already served"),
            "missing": ({"lora_name": "y", "lora_path": "nope"}, 400, "no such run or adapter folder"),
            "fields": ({"lora_name": "y"}, 400, "lora_path"),
        }
        for case, (body, status, text) in refusals.items():
            r = http.post("/v1/load_lora_adapter", json=body)
            assert (r.status_code, text in r.json()["error"]["message"]) == (status, True), (case, r.text)
        assert http.post("/v1/unload_lora_adapter", json={"lora_name": "x1"}).status_code == 200
        assert http.post("/v1/unload_lora_adapter", json={"lora_name": "x1"}).status_code == 404
        with pytest.raises(openai.NotFoundError):
            _answer(server, "x1")
        wait_until(lambda: "x1" not in server.ctx.store.resident())
    with LiveServer(ServeSettings(model=str(base), threads=1)) as server, server.http() as http:
        r = http.post("/v1/load_lora_adapter", json={"lora_name": "y", "lora_path": str(paths["a"])})
        assert r.status_code == 403 and "--adapter-dir" in r.json()["error"]["message"]


def test_unloading_an_adapter_while_a_request_uses_it(assets):
    root, base, paths, ref = assets
    settings = ServeSettings(model=str(base), adapters={"a": str(paths["a"])}, threads=1)
    with LiveServer(settings) as server, server.http() as http:
        with slow_steps(server, 0.01):
            stream = iter(server.client().completions.create(model="a", prompt="hello", max_tokens=60, temperature=0,
                                                             stream=True, extra_body={"ignore_eos": True}))
            text = next(stream).choices[0].text
            assert http.post("/v1/unload_lora_adapter", json={"lora_name": "a"}).status_code == 200
            assert [m.id for m in server.client().models.list().data] == [str(base)]
            with pytest.raises(openai.NotFoundError):
                _answer(server, "a")
            assert "a" in server.ctx.store.resident()  # still held by the running request
            text += "".join(c.choices[0].text for c in stream)
        assert text == ref.answer(paths["a"], ref.tok("hello")["input_ids"], 60, ignore_eos=True)
        wait_until(lambda: "a" not in server.ctx.store.resident())
        assert sample(server, "peftkit_serve_adapter_evictions_total", {"adapter": "a"}) == 1
        assert _answer(server, str(base)) == _expected(ref, None)


def test_least_recently_used_adapters_make_room_and_requests_wait_for_memory(assets):
    root, base, paths, ref = assets
    settings = ServeSettings(model=str(base), adapters={k: str(v) for k, v in paths.items()}, max_loaded_adapters=2,
                             threads=1)
    with LiveServer(settings) as server:
        assert set(server.ctx.store.resident()) == {"b", "c"}  # loaded at start up to the limit: a made room for c
        for name in ["a", "b", "a", "c"]:
            assert _answer(server, name) == _expected(ref, paths[name])
        # b, c | a: b out | b: c out | a: used again | c: b (least recently used) out
        assert set(server.ctx.store.resident()) == {"a", "c"}
        evictions = [sample(server, "peftkit_serve_adapter_evictions_total", {"adapter": n}) for n in "abc"]
        assert evictions == [1, 2, 1] and sample(server, "peftkit_serve_adapter_loads_total", {"adapter": "a"}) == 2
        with ThreadPoolExecutor(3) as pool, slow_steps(server, 0.005):
            with paused(server, expect_waiting=3):  # three adapters wanted at once, two fit: one waits its turn
                futures = {name: pool.submit(_answer, server, name) for name in "abc"}
            assert {n: f.result(timeout=60) for n, f in futures.items()} == {n: _expected(ref, p) for n, p in paths.items()}
        assert len(server.ctx.store.resident()) <= 2


def test_a_bad_adapter_file_fails_its_requests_only(assets, tmp_path):
    root, base, paths, ref = assets
    broken = shutil.copytree(paths["b"], tmp_path / "broken")
    (broken / "adapter_model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    settings = ServeSettings(model=str(base), adapters={"a": str(paths["a"]), "broken": str(broken)}, threads=1,
                             adapter_memory=10 * 2**20)
    with LiveServer(settings) as server:
        with ThreadPoolExecutor(4) as pool:
            with paused(server, expect_waiting=4):
                futures = [pool.submit(_answer, server, name) for name in ["a", "broken", "a", "broken"]]
            outcomes = [_outcome(f) for f in futures]
        assert outcomes[0] == outcomes[2] == _expected(ref, paths["a"])
        assert isinstance(outcomes[1], openai.BadRequestError) and isinstance(outcomes[3], openai.BadRequestError)
        assert outcomes[1].body["code"] == "adapter_load_failed" and "adapter_model.safetensors" in outcomes[1].message
        assert sample(server, "peftkit_serve_adapter_load_failures_total", {"adapter": "broken"}) >= 1
        shutil.copy(paths["b"] / "adapter_model.safetensors", broken / "adapter_model.safetensors")  # fixed on disk
        assert _answer(server, "broken") == _expected(ref, paths["b"])
        assert server.http().get("/health").json()["status"] == "ok"


def _outcome(future):
    try:
        return future.result(timeout=60)
    except openai.APIStatusError as e:
        return e


def test_an_adapter_for_another_base_model_or_over_the_budget_is_refused(assets, tmp_path):
    root, base, paths, ref = assets
    from transformers import LlamaConfig, LlamaForCausalLM

    narrow = LlamaForCausalLM(LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                                          num_key_value_heads=1, vocab_size=300))
    pk.get_peft_model(narrow, pk.LoraConfig(r=2, target_modules="all-linear")).save_pretrained(tmp_path / "narrow")
    big = make_adapter(base, tmp_path / "big", 0, r=64)
    settings = ServeSettings(model=str(base), threads=1, adapter_memory=40_000,
                             adapters={"narrow": str(tmp_path / "narrow"), "big": str(big), "a": str(paths["a"])})
    with LiveServer(settings) as server:
        with pytest.raises(openai.BadRequestError, match="has shape") as e:
            _answer(server, "narrow")
        assert e.value.body["code"] == "adapter_load_failed"
        with pytest.raises(openai.BadRequestError, match="more than the whole adapter memory budget") as e:
            _answer(server, "big")
        assert e.value.body["code"] == "adapter_too_large"
        assert _answer(server, "a") == _expected(ref, paths["a"])


def test_watched_directories_serve_new_folders_and_drop_removed_ones(assets, tmp_path):
    root, base, paths, ref = assets
    watched = tmp_path / "watched"
    shutil.copytree(paths["a"], watched / "first")
    with LiveServer(ServeSettings(model=str(base), adapter_dirs=[str(watched)], watch_interval=0.05, threads=1)) as server:
        assert [m.id for m in server.client().models.list().data][1:] == ["first"]
        shutil.copytree(paths["b"], watched / "second")
        assert _answer(server, "second") == _expected(ref, paths["b"])  # a miss rescans at once
        shutil.rmtree(watched / "first")
        wait_until(lambda: "first" not in [m.id for m in server.client().models.list().data])


def test_one_method_per_server_and_no_input_changing_methods(assets, tmp_path):
    root, base, paths, ref = assets
    from transformers import AutoModelForCausalLM

    ia3 = pk.get_peft_model(AutoModelForCausalLM.from_pretrained(base), pk.IA3Config(target_modules=["q_proj"],
                                                                                     feedforward_modules=[]))
    ia3.save_pretrained(tmp_path / "ia3")
    prompt = pk.get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                               pk.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=2))
    prompt.save_pretrained(tmp_path / "prompt")
    with pytest.raises(ConfigError, match="serves LORA adapters"):
        build_context(ServeSettings(model=str(base), adapters={"a": str(paths["a"]), "i": str(tmp_path / "ia3")}))
    with pytest.raises(ConfigError, match="cannot share a batch"):
        build_context(ServeSettings(model=str(base), adapters={"p": str(tmp_path / "prompt")}))
