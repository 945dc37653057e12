"""Faults: a client that leaves mid-stream (alone, or from a batch it shares) or while queued,
timeouts, a failing model call, and shutdown (graceful through ``peftkit serve`` and SIGTERM;
bounded when requests outlast the grace period). After each, the server still answers."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import time

import httpx
import openai
import pytest

from peftkit.serve.settings import ServeSettings
from serve_helpers import LiveServer, Reference, make_adapter, model_dir, paused, sample, slow_steps, wait_until

LONG = {"prompt": "hello", "max_tokens": 200, "temperature": 0, "ignore_eos": True}


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    base = model_dir(root)
    return base, make_adapter(base, root / "a", 1), Reference(base)


def _cancelled(server) -> float:
    return sum(sample(server, "peftkit_serve_requests_total", {"endpoint": "cmpl", "model": m, "status": "499"})
               for m in ["a", "tiny"])


def test_a_client_leaving_mid_stream_or_in_the_queue_frees_its_place(assets):
    base, adapter, ref = assets
    with LiveServer(ServeSettings(model=str(base), served_model_name="tiny", adapters={"a": str(adapter)},
                                  threads=1)) as server:
        with slow_steps(server, 0.01), server.http() as http:
            with http.stream("POST", "/v1/completions", json={"model": "a", "stream": True, **LONG}) as response:
                lines = response.iter_lines()
                assert next(lines).startswith("data: ")
                wait_until(lambda: server.ctx.engine.stats()["running"] == 1)
            wait_until(lambda: server.ctx.engine.stats()["in_flight"] == 0)
            assert _cancelled(server) == 1
            assert sample(server, "peftkit_serve_generated_tokens_total", {"model": "a"}) < 150
            with paused(server):  # a non-streaming client gives up while its request waits
                with pytest.raises(httpx.ReadTimeout):
                    http.post("/v1/completions", json={"model": "tiny", **LONG}, timeout=0.3)
                time.sleep(1.2)  # the server notices within its 1 s watch
            wait_until(lambda: server.ctx.engine.stats()["in_flight"] == 0)
            assert _cancelled(server) == 2
        reply = server.client().completions.create(model="a", prompt="hello", max_tokens=5, temperature=0)
        assert reply.choices[0].text == ref.answer(adapter, ref.tok("hello")["input_ids"], 5)


def test_a_client_leaving_mid_stream_leaves_the_rest_of_its_batch_as_it_was(assets, tmp_path):
    """Requests for two adapters and the base decode in one batch; the client of one adapter's
    stream leaves: its row and adapter slot are dropped between two steps, and the other answers
    still equal each adapter's greedy answer alone."""
    base, adapter, ref = assets
    other = make_adapter(base, tmp_path / "b", 2, r=2)
    settings = ServeSettings(model=str(base), served_model_name="tiny", adapters={"a": str(adapter), "b": str(other)},
                             threads=1)
    with LiveServer(settings) as server, server.http() as http, concurrent.futures.ThreadPoolExecutor(2) as pool:
        def ask(model):
            return server.client().completions.create(model=model, prompt="hello", max_tokens=40, temperature=0,
                                                      extra_body={"ignore_eos": True}).choices[0].text

        with slow_steps(server, 0.01):
            with http.stream("POST", "/v1/completions", json={"model": "b", "stream": True, **LONG}) as leaving:
                lines = leaving.iter_lines()  # kept: a dropped iterator closes the stream
                assert next(lines).startswith("data: ")
                futures = {model: pool.submit(ask, model) for model in ("a", "tiny")}
                wait_until(lambda: server.ctx.engine.stats()["running"] == 3)  # they joined b's batch
            answers = {model: f.result(timeout=60) for model, f in futures.items()}
        wait_until(lambda: server.ctx.engine.stats()["in_flight"] == 0)
        assert sample(server, "peftkit_serve_requests_total", {"endpoint": "cmpl", "model": "b", "status": "499"}) == 1
    prompt = ref.tok("hello")["input_ids"]
    assert answers == {"a": ref.answer(adapter, prompt, 40, ignore_eos=True), "tiny": ref.answer(None, prompt, 40, ignore_eos=True)}


def test_timeouts_are_504_and_503_in_openais_shape(assets):
    base, adapter, ref = assets
    settings = ServeSettings(model=str(base), request_timeout=0.5, queue_timeout=0.3, threads=1)
    with LiveServer(settings) as server:
        client = server.client()
        with slow_steps(server, 0.02):
            with pytest.raises(openai.InternalServerError) as e:
                client.completions.create(model=str(base), **{k: v for k, v in LONG.items() if k != "ignore_eos"},
                                          extra_body={"ignore_eos": True})
            assert e.value.status_code == 504 and e.value.body["code"] == "request_timeout"
            stream = client.completions.create(model=str(base), prompt="hello", max_tokens=200, stream=True,
                                               extra_body={"ignore_eos": True})
            with pytest.raises(openai.APIError, match="timeout"):
                for _ in stream:
                    pass
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            with paused(server, expect_waiting=1):  # the request waits past its queue timeout
                queued = pool.submit(client.completions.create, model=str(base), prompt="x", max_tokens=2)
                time.sleep(0.5)
            with pytest.raises(openai.InternalServerError) as e:
                queued.result(timeout=30)
        assert e.value.status_code == 503 and e.value.body["code"] == "queue_timeout"
        assert client.completions.create(model=str(base), prompt="x", max_tokens=2).choices


def test_a_failing_model_call_fails_only_its_requests(assets):
    base, adapter, ref = assets
    with LiveServer(ServeSettings(model=str(base), adapters={"a": str(adapter)}, threads=1)) as server:
        runner = server.ctx.engine.runner
        for call in ("decode", "prefill"):
            plain = getattr(runner, call)

            def broken(*args, **kwargs):
                raise RuntimeError("simulated failure inside the model")

            setattr(runner, call, broken)
            try:
                with pytest.raises(openai.InternalServerError, match="simulated failure") as e:
                    server.client().completions.create(model="a", prompt="hi", max_tokens=4)
                assert e.value.status_code == 500 and "Traceback" not in e.value.message
            finally:
                delattr(runner, call)
            assert call not in vars(runner) and getattr(runner, call) == plain
            reply = server.client().completions.create(model="a", prompt="hi", max_tokens=4, temperature=0)
            assert reply.choices[0].text == ref.answer(adapter, ref.tok("hi")["input_ids"], 4)
        assert server.ctx.engine.alive


def test_shutdown_cancels_what_outlasts_the_grace_period(assets):
    base, adapter, ref = assets
    server = LiveServer(ServeSettings(model=str(base), shutdown_grace=0.3, threads=1)).__enter__()
    rest = []
    with slow_steps(server, 0.05), server.http() as http:
        with http.stream("POST", "/v1/completions", json={"model": str(base), "stream": True, **LONG}) as response:
            lines = response.iter_lines()
            next(lines)
            started = time.monotonic()
            server.server.should_exit = True
            try:
                rest.extend(lines)
            except httpx.HTTPError:  # cut off when the grace period ended
                pass
    server.stop(timeout=10)
    assert "data: [DONE]" not in rest and len(rest) < 2 * 200
    assert time.monotonic() - started < 10 and not server.ctx.engine.alive


def test_peftkit_serve_command_shuts_down_gracefully_on_sigterm(assets, tmp_path):
    """The CLI: prints its address, serves the adapter to the openai client, and on SIGTERM lets
    a streaming request finish before exiting with code 0."""
    base, adapter, ref = assets
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PEFTKIT_API_KEY": "sk-test"}
    cmd = [sys.executable, "-m", "peftkit.cli", "serve", str(base), "--adapter", f"a={adapter}", "--port", "0",
           "--threads", "1", "--log-level", "info"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert "with 1 adapter(s) on http://127.0.0.1:" in line, (line, proc.stderr.read() if proc.poll() else "")
        url = line.strip().rsplit(" ", 1)[-1]
        client = openai.OpenAI(base_url=url, api_key="sk-test", max_retries=0, timeout=60)
        assert [m.id for m in client.models.list().data] == [str(base), "a"]
        stream = iter(client.completions.create(model="a", prompt="hello", max_tokens=250, temperature=0, stream=True,
                                                extra_body={"ignore_eos": True}))
        text = next(stream).choices[0].text
        proc.send_signal(signal.SIGTERM)
        text += "".join(c.choices[0].text for c in stream)
        assert text == ref.answer(adapter, ref.tok("hello")["input_ids"], 250, ignore_eos=True)
        assert proc.wait(timeout=30) == 0
        with pytest.raises(openai.APIConnectionError):
            client.models.list()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Traceback" not in proc.stderr.read()


def test_serve_refuses_a_bad_adapter_folder_at_start(assets, tmp_path, capsys):
    from peftkit.cli import main

    base, adapter, ref = assets
    assert main(["serve", str(base), "--adapter", f"x={tmp_path / 'missing'}", "--port", "0"]) == 2
    assert "no such run or adapter folder" in capsys.readouterr().err
    (tmp_path / "a.yaml").write_text(json.dumps({"../x": str(adapter)}))
    assert main(["serve", str(base), "--adapters", str(tmp_path / "a.yaml"), "--port", "0"]) == 2
    assert "invalid" in capsys.readouterr().err
