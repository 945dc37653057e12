"""Continuous batching across adapters, measured from outside: concurrent requests for different
adapters decode in shared steps and every answer equals ``PeftModel.generate`` for its adapter
alone (greedy); a request that arrives while others decode joins them, and finishes first when
it is shorter."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from peftkit.serve.settings import ServeSettings
from serve_helpers import LiveServer, Reference, make_adapter, model_dir, paused, sample, slow_steps, wait_until


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("batching")
    base = model_dir(root)
    adapters = {name: make_adapter(base, root / name, seed + 1, r=2 + seed) for seed, name in enumerate("abc")}
    settings = ServeSettings(model=str(base), served_model_name="tiny", adapters={k: str(v) for k, v in adapters.items()},
                             threads=1, max_batch_size=16)
    with LiveServer(settings) as server:
        yield server, Reference(base), {**adapters, "tiny": None}


def test_concurrent_requests_for_mixed_adapters_share_steps_and_answer_as_alone(setup):
    """24 requests (4 models x 6 prompts, lengths 4-9 tokens, batch limit 16) arrive together:
    they decode in shared steps and each equals its adapter's own greedy answer."""
    server, ref, paths = setup
    jobs = [(model, f"prompt {i} " * (1 + i % 3), 4 + (i + len(model)) % 6) for i in range(6) for model in paths]
    steps_before, tokens_before = sample(server, "peftkit_serve_batch_size_count"), _generated(server)

    def ask(model, prompt, n):
        return server.client().completions.create(model=model, prompt=prompt, max_tokens=n, temperature=0,
                                                  extra_body={"ignore_eos": True}).choices[0].text

    with ThreadPoolExecutor(len(jobs)) as pool:
        with paused(server, expect_waiting=len(jobs)):
            futures = [pool.submit(ask, *job) for job in jobs]
        answers = [f.result(timeout=120) for f in futures]
    expected = [ref.answer(paths[m], ref.tok(p)["input_ids"], n, ignore_eos=True) for m, p, n in jobs]
    assert answers == expected
    steps = sample(server, "peftkit_serve_batch_size_count") - steps_before
    tokens = _generated(server) - tokens_before
    assert tokens == sum(n for _, _, n in jobs)
    assert steps <= 2 * 9  # one at a time would take ~130 steps: 16 rows, then the 8 others, joined as rows free
    adapters_per_step = sample(server, "peftkit_serve_batch_adapters_sum") / sample(server, "peftkit_serve_batch_adapters_count")
    assert adapters_per_step > 2


def test_a_request_joins_a_running_batch_and_leaves_before_it(setup):
    server, ref, paths = setup
    long_ids = ref.tok("a long one")["input_ids"]
    with slow_steps(server, 0.01):
        stream = server.client().completions.create(model="a", prompt="a long one", max_tokens=80, temperature=0,
                                                    stream=True, extra_body={"ignore_eos": True})
        pieces = iter(stream)
        first = next(pieces).choices[0].text  # the long request is decoding now
        running_at_start = server.ctx.engine.stats()["running"]
        short = server.client().completions.create(model="b", prompt="short", max_tokens=3, temperature=0,
                                                   extra_body={"ignore_eos": True})
        still_running = server.ctx.engine.stats()["running"]
        rest = "".join(c.choices[0].text for c in pieces)
    assert running_at_start == 1 and still_running == 1  # the short one came and went
    assert short.choices[0].text == ref.answer(paths["b"], ref.tok("short")["input_ids"], 3, ignore_eos=True)
    assert first + rest == ref.answer(paths["a"], long_ids, 80, ignore_eos=True)


def _generated(server) -> float:
    return sum(sample(server, "peftkit_serve_generated_tokens_total", {"model": m}) for m in ["a", "b", "c", "tiny"])


def test_in_flight_limit_answers_429_and_frees_the_slot_afterwards(tmp_path):
    base = model_dir(tmp_path)
    with LiveServer(ServeSettings(model=str(base), max_concurrent_requests=2, threads=1)) as server:
        client = server.client()
        with ThreadPoolExecutor(2) as pool:
            with paused(server):
                held = [pool.submit(client.completions.create, model=str(base), prompt="x", max_tokens=2)
                        for _ in range(2)]
                wait_until(lambda: server.ctx.engine.stats()["waiting"] == 2)
                with server.http() as http:
                    refused = http.post("/v1/completions", json={"model": str(base), "prompt": "x"})
            assert all(f.result(timeout=60).choices for f in held)
        assert refused.status_code == 429 and refused.json()["error"]["type"] == "rate_limit_error"
        assert client.completions.create(model=str(base), prompt="x", max_tokens=2).choices
