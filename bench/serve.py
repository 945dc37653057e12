"""B9: ``peftkit serve`` under a fixed load, on 127.0.0.1 only.

The same requests (greedy, ``ignore_eos``, so every answer has exactly ``--max-tokens`` tokens) go
to three kinds of server in this process, one after the other, each on its own copy of the base:

- ``peftkit serve`` with 1, 8 and 32 LoRA adapters, requests spread round-robin over them (every
  decoding step mixes adapters row by row);
- a naive server built on ``peft``: one request at a time, ``set_adapter`` then ``generate``
  (what a hand-written FastAPI wrapper around ``peft`` does).

Before the tables, the answers of both servers are compared request by request (same adapter,
same prompt: the same text), so the two compute the same thing. Prints throughput (generated
tokens/s), latency percentiles and the ratios the serving issue sets targets for: 32 adapters at
>= 0.8x one adapter's throughput, and >= 3x the naive server's at 16 concurrent requests.

    python bench/serve.py                                # SmolLM2-135M-Instruct, 32 requests, 16 at a time
    python bench/serve.py --requests 96 --max-tokens 64  # a longer load
    python bench/serve.py --adapters 1 8 --naive 1 8     # other adapter counts

Every server stays up for the whole run and the load visits them in turn, ``--rounds`` times
(median round reported), so a shared machine's changing load shifts all of them alike. A
``peftkit serve`` row is compared with the naive row of the same adapter count, else with the
fastest naive row (the naive server's speed hardly depends on the count).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import gc
import json
import shutil
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
PROMPTS = [  # varied lengths, so prefill pads and rows finish their prompts at different places
    "Extract the name, email and city as JSON: Ada Lovelace lives in London, ada@math.org.",
    "Write a haiku about the sea.",
    "Translate to French: The weather is nice today and we are going for a walk in the park.",
    "List three prime numbers.",
    "Summarise in one sentence: adapters let one base model serve many tasks with a few megabytes each.",
    "What is the capital of Italy?",
    "Continue the story: The lighthouse keeper opened the door and saw",
    "Explain recursion to a child.",
]
START_TIMEOUT = 120.0


@dataclass
class Load:
    """The fixed load: ``requests`` completions, ``concurrency`` in flight at any time."""

    requests: int = 32
    concurrency: int = 16
    max_tokens: int = 16


@dataclass
class Result:
    server: str
    adapters: int
    seconds: float
    tokens: int
    latencies: list[float]
    answers: dict[tuple[int, str], str] = field(default_factory=dict)  # (prompt index, adapter) -> text
    cpu_seconds: float = 0.0  # CPU time of this process (servers and client) during the timed load

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds

    @property
    def tokens_per_cpu_s(self) -> float:
        """Tokens per CPU second: unlike wall time, not stretched while other programs hold the CPU."""
        return self.tokens / self.cpu_seconds

    def percentile(self, q: int) -> float:
        if len(self.latencies) < 2:
            return self.latencies[0]
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[q - 1]


# ---------------------------------------------------------------------------------------- adapters
def make_adapters(base: torch.nn.Module, count: int, root: Path, r: int = 16,
                  targets: tuple[str, ...] = TARGETS) -> dict[str, Path]:
    """``count`` LoRA adapters (rank ``r`` on ``targets``) with distinct random weights, saved in
    peft's format under ``root``: the first by peftkit, the rest with its tensors redrawn."""
    from safetensors.torch import load_file, save_file

    import peftkit

    config = peftkit.LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(targets), init_lora_weights=False,
                                task_type="CAUSAL_LM")
    first = root / "a0"
    peftkit.get_peft_model(copy.deepcopy(base), config).save_pretrained(first)
    tensors = load_file(first / "adapter_model.safetensors")
    paths = {"a0": first}
    for i in range(1, count):
        folder = root / f"a{i}"
        folder.mkdir()
        shutil.copy(first / "adapter_config.json", folder / "adapter_config.json")
        gen = torch.Generator().manual_seed(i)
        redrawn = {k: torch.randn(t.shape, generator=gen, dtype=t.dtype) * t.std() for k, t in tensors.items()}
        save_file(redrawn, folder / "adapter_model.safetensors", metadata={"format": "pt"})
        paths[f"a{i}"] = folder
    return paths


# ---------------------------------------------------------------------------------------- servers
class ThreadedServer:
    """A uvicorn server on a free port of 127.0.0.1, in a thread, for a ``with`` block."""

    def __init__(self, server: Any):
        self.server = server

    def __enter__(self) -> "ThreadedServer":
        from peftkit.serve.server import bound_socket

        sock = bound_socket("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(60)


def peftkit_server(base: torch.nn.Module, tokenizer: Any, adapters: dict[str, Path]) -> ThreadedServer:
    """``peftkit serve`` over a copy of ``base`` (every adapter loaded before the load starts)."""
    from peftkit.serve.server import build_context, uvicorn_server
    from peftkit.serve.settings import ServeSettings

    settings = ServeSettings(model="base", adapters={k: str(v) for k, v in adapters.items()},
                             max_concurrent_requests=1024, request_timeout=3600, queue_timeout=3600)
    ctx = build_context(settings, model=copy.deepcopy(base), tokenizer=tokenizer)
    return ThreadedServer(uvicorn_server(ctx, log_level="warning"))


def naive_app(model: Any, tokenizer: Any) -> Any:
    """A FastAPI ``/v1/completions`` that serves one request at a time on a ``peft`` model:
    ``set_adapter`` to the request's ``model``, then ``generate``."""
    from fastapi import FastAPI
    from starlette.concurrency import run_in_threadpool

    app, lock = FastAPI(), asyncio.Lock()

    def complete(body: dict) -> dict:
        model.set_adapter(body["model"])
        ids = tokenizer(body["prompt"], return_tensors="pt")
        stop = {"eos_token_id": None} if body.get("ignore_eos") else {}  # as ignore_eos: decode past the end
        with torch.inference_mode():
            out = model.generate(**ids, max_new_tokens=body["max_tokens"], do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id, **stop)
        new = out[0, ids["input_ids"].shape[1]:]
        return {"object": "text_completion", "model": body["model"],
                "choices": [{"index": 0, "text": tokenizer.decode(new, skip_special_tokens=True), "finish_reason": "length"}],
                "usage": {"prompt_tokens": ids["input_ids"].shape[1], "completion_tokens": len(new)}}

    @app.post("/v1/completions")
    async def completions(body: dict) -> dict:
        async with lock:  # one at a time: the model has one active adapter
            return await run_in_threadpool(complete, body)

    return app


def naive_server(base: torch.nn.Module, tokenizer: Any, adapters: dict[str, Path]) -> ThreadedServer:
    import peft
    import uvicorn

    names = list(adapters)
    model = peft.PeftModel.from_pretrained(copy.deepcopy(base), adapters[names[0]], adapter_name=names[0])
    for name in names[1:]:
        model.load_adapter(adapters[name], adapter_name=name)
    model.eval()
    config = uvicorn.Config(naive_app(model, tokenizer), log_level="warning", access_log=False, lifespan="off")
    return ThreadedServer(uvicorn.Server(config))


# ---------------------------------------------------------------------------------------- load
async def _drive(url: str, adapters: list[str], load: Load) -> tuple[float, int, list[float], dict, float]:
    import httpx

    todo: asyncio.Queue = asyncio.Queue()
    for i in range(load.requests):
        todo.put_nowait((i % len(PROMPTS), adapters[i % len(adapters)]))
    latencies: list[float] = []
    answers: dict[tuple[int, str], str] = {}
    tokens = 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal tokens
        while not todo.empty():
            prompt, adapter = todo.get_nowait()
            body = {"model": adapter, "prompt": PROMPTS[prompt], "max_tokens": load.max_tokens, "temperature": 0,
                    "ignore_eos": True}
            started = time.perf_counter()
            response = await client.post("/v1/completions", json=body)
            response.raise_for_status()
            latencies.append(time.perf_counter() - started)
            reply = response.json()
            tokens += reply["usage"]["completion_tokens"]
            answers[(prompt, adapter)] = reply["choices"][0]["text"]

    limits = httpx.Limits(max_connections=load.concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=3600, limits=limits) as client:
        started, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker(client) for _ in range(load.concurrency)))
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    return seconds, tokens, latencies, answers, cpu


@dataclass
class Candidate:
    """One server to measure: its label, how to start it, and the adapters its requests use."""

    server: str
    start: Callable[[], ThreadedServer]
    adapters: list[str]


def measure(candidates: list[Candidate], load: Load, rounds: int) -> list[Result]:
    """Start every server, warm each up (one request per concurrent slot), then time the load on
    each in turn, ``rounds`` times: a machine that gets busier or quieter during the run shifts
    every server alike. Throughput is the median round's (of two, the better); latencies are pooled."""
    warmup = Load(min(load.concurrency, len(PROMPTS)), load.concurrency, 2)
    runs: dict[int, list[tuple[float, int, list[float], dict, float]]] = {i: [] for i in range(len(candidates))}
    with contextlib.ExitStack() as stack:
        servers = [stack.enter_context(c.start()) for c in candidates]
        for server, c in zip(servers, candidates):
            asyncio.run(_drive(server.url, c.adapters, warmup))
        for round_ in range(rounds):
            for i, (server, c) in enumerate(zip(servers, candidates)):
                runs[i].append(asyncio.run(_drive(server.url, c.adapters, load)))
                seconds, tokens, cpu = runs[i][-1][0], runs[i][-1][1], runs[i][-1][4]
                print(f"round {round_ + 1}/{rounds}: {c.server}, {len(c.adapters)} adapter(s): {tokens / seconds:.1f} tok/s, "
                      f"{tokens / cpu:.1f} tok/cpu-s", flush=True)
    gc.collect()
    results = []
    for i, c in enumerate(candidates):
        median = sorted(runs[i], key=lambda run: run[1] / run[0])[len(runs[i]) // 2]
        latencies = [t for run in runs[i] for t in run[2]]
        cpu = statistics.median(run[4] for run in runs[i])
        results.append(Result(c.server, len(c.adapters), median[0], median[1], latencies, median[3], cpu))
    return results


def benchmark(base: torch.nn.Module, tokenizer: Any, counts: list[int], naive_counts: list[int], load: Load,
              root: Path, rounds: int = 1, rank: int = 16, targets: tuple[str, ...] = TARGETS) -> list[Result]:
    """Every measurement: peftkit serve with each of ``counts`` adapters, the naive peft server with
    each of ``naive_counts``; LoRA adapters of rank ``rank`` on ``targets``."""
    paths = make_adapters(base, max([*counts, *naive_counts]), root, rank, targets)

    def candidate(server: str, start: Callable, count: int) -> Candidate:
        chosen = dict(list(paths.items())[:count])
        return Candidate(server, lambda: start(base, tokenizer, chosen), list(chosen))

    candidates = [candidate("peftkit serve", peftkit_server, n) for n in counts]
    candidates += [candidate("naive peft", naive_server, n) for n in naive_counts]
    return measure(candidates, load, rounds)


# ---------------------------------------------------------------------------------------- report
def same_answers(results: list[Result]) -> tuple[int, int]:
    """(equal, compared): answers of peftkit serve and the naive server to the same request."""
    ours = {k: v for r in results if r.server == "peftkit serve" for k, v in r.answers.items()}
    theirs = {k: v for r in results if r.server == "naive peft" for k, v in r.answers.items()}
    common = set(ours) & set(theirs)
    return sum(ours[k] == theirs[k] for k in common), len(common)


def _ratios(r: Result, results: list[Result], metric: str) -> tuple[str, str]:
    """``r``'s ``metric`` over peftkit serve's with one adapter, and over the naive server's (same
    adapter count, else its fastest row); blank for the naive rows."""
    if r.server != "peftkit serve":
        return "", ""
    one = [getattr(x, metric) for x in results if x.server == "peftkit serve" and x.adapters == 1]
    naive = {x.adapters: getattr(x, metric) for x in results if x.server == "naive peft"}
    versus = naive.get(r.adapters) or max(naive.values(), default=None)
    value = getattr(r, metric)
    return (f"{value / one[0]:.2f}" if one else "", f"{value / versus:.2f}" if versus else "")


def print_table(results: list[Result], load: Load) -> None:
    """The check and the table: throughput by wall time and by CPU time, each as ratios."""
    equal, compared = same_answers(results)
    print(f"check: {equal}/{compared} answers equal between peftkit serve and the naive peft server (greedy)")
    print(f"\nB9  {load.requests} completions of {load.max_tokens} tokens, {load.concurrency} concurrent; generated "
          "tokens per second of wall time and of this process's CPU time; latency per request in s")
    print(f"{'server':14s} {'adapters':>8s} {'tok/s':>7s} {'tok/cpu-s':>9s} {'p50':>6s} {'p90':>6s} {'p99':>6s} "
          f"{'/one wall':>9s} {'/one cpu':>8s} {'/naive wall':>11s} {'/naive cpu':>10s}")
    for r in results:
        one_wall, naive_wall = _ratios(r, results, "tokens_per_s")
        one_cpu, naive_cpu = _ratios(r, results, "tokens_per_cpu_s")
        print(f"{r.server:14s} {r.adapters:8d} {r.tokens_per_s:7.1f} {r.tokens_per_cpu_s:9.1f} {r.percentile(50):6.2f} "
              f"{r.percentile(90):6.2f} {r.percentile(99):6.2f} {one_wall:>9s} {one_cpu:>8s} {naive_wall:>11s} "
              f"{naive_cpu:>10s}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct", help="bundled name, local path or HF id")
    parser.add_argument("--adapters", type=int, nargs="+", default=[1, 8, 32], help="adapter counts for peftkit serve")
    parser.add_argument("--naive", type=int, nargs="*", default=[32], help="adapter counts for the naive peft server")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds over all servers (median)")
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank of every adapter (default 16)")
    parser.add_argument("--targets", nargs="+", default=list(TARGETS), help="adapted projections (default: all seven)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", metavar="FILE", help="also write the results here")
    args = parser.parse_args()
    from peftkit.models import load_model, load_tokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    load = Load(args.requests, args.concurrency, args.max_tokens)
    base, tokenizer = load_model(args.model).to(args.device).eval(), load_tokenizer(args.model)
    print(f"model {args.model} ({sum(p.numel() for p in base.parameters()) / 1e6:.0f}M parameters) on {args.device}, "
          f"LoRA r={args.rank} on {','.join(args.targets)}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as tmp:
        results = benchmark(base, tokenizer, args.adapters, args.naive, load, Path(tmp), args.rounds, args.rank,
                            tuple(args.targets))
    print_table(results, load)
    if args.json:
        rows = [{"server": r.server, "adapters": r.adapters, "tokens_per_s": r.tokens_per_s, "seconds": r.seconds,
                 "tokens_per_cpu_s": r.tokens_per_cpu_s, "cpu_seconds": r.cpu_seconds,
                 "p50": r.percentile(50), "p90": r.percentile(90), "p99": r.percentile(99)} for r in results]
        Path(args.json).write_text(json.dumps({"load": vars(load), "rank": args.rank, "targets": args.targets, "results": rows}, indent=1))


if __name__ == "__main__":
    main()
