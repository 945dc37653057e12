"""A live ``peftkit serve`` on 127.0.0.1 in a background thread, tiny adapters on disk, and the
reference answers every served response is compared with (``PeftModel.generate`` on one adapter
alone, greedy).

>>> with LiveServer(ServeSettings(model=str(model_dir), adapters=adapters)) as server:   # doctest: +SKIP
...     server.client().chat.completions.create(model="a", messages=[...])
"""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path
from typing import Iterator, Optional

import httpx
import openai
import torch
from transformers import AutoModelForCausalLM

import peftkit as pk
from peftkit.serve.server import bound_socket, build_context, uvicorn_server
from peftkit.serve.settings import ServeSettings
from peftkit.train.commands import chat_prompt
from tiny_assets import tiny_model_dir, tiny_tokenizer

START_TIMEOUT = 60.0


class LiveServer:
    """Serve ``settings`` on a free port of 127.0.0.1 until the ``with`` block ends (then a graceful
    shutdown, bounded in time)."""

    def __init__(self, settings: ServeSettings):
        self.settings = settings

    def __enter__(self) -> "LiveServer":
        self.ctx = build_context(self.settings)
        self.server = uvicorn_server(self.ctx, log_level="warning")
        sock = bound_socket("127.0.0.1", 0)
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self, timeout: float = 30.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the server did not stop"

    def client(self, api_key: Optional[str] = None, timeout: float = 60.0) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=api_key or "unused", max_retries=0, timeout=timeout)

    def http(self, timeout: float = 60.0, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout, **kwargs)


def model_dir(root: Path) -> Path:
    return tiny_model_dir(root)


def make_adapter(base_dir: Path, out: Path, seed: int, **config) -> Path:
    """A LoRA adapter with random (non-zero) weights, so each adapter changes the answers."""
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        options = dict(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False, task_type="CAUSAL_LM")
        model = pk.get_peft_model(base, pk.LoraConfig(**{**options, **config}))
    model.save_pretrained(out)
    return out


def chat_ids(messages: list[dict]) -> list[int]:
    tok = tiny_tokenizer()
    return tok(chat_prompt(tok, messages), add_special_tokens=False)["input_ids"]


class Reference:
    """Greedy answers of ``PeftModel.generate`` with one adapter alone (or the base model)."""

    def __init__(self, base_dir: Path):
        self.base_dir = base_dir
        self.tok = tiny_tokenizer()
        self._models: dict = {}

    def model(self, adapter: Optional[Path]):
        if adapter not in self._models:
            base = AutoModelForCausalLM.from_pretrained(self.base_dir).eval()
            self._models[adapter] = pk.PeftModel.from_pretrained(base, adapter).eval() if adapter else base
        return self._models[adapter]

    @torch.no_grad()
    def answer(self, adapter: Optional[Path], prompt_ids: list[int], max_new_tokens: int, ignore_eos: bool = False) -> str:
        eos = None if ignore_eos else self.tok.eos_token_id
        out = self.model(adapter).generate(input_ids=torch.tensor([prompt_ids]), do_sample=False,
                                           max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=self.tok.pad_token_id)
        ids = out[0, len(prompt_ids):].tolist()
        ids = ids if ignore_eos else [t for t in ids if t != eos]
        return self.tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


@contextlib.contextmanager
def paused(server: LiveServer, expect_waiting: int = 0, timeout: float = 30.0) -> Iterator[None]:
    """Hold the engine between two steps (a command that waits) while the block runs; requests
    sent meanwhile queue up. On leaving, wait until ``expect_waiting`` requests are queued, then
    let the engine go: they are admitted together."""
    release = threading.Event()
    held = server.ctx.engine.call(lambda: release.wait(timeout))
    try:
        yield
        wait_until(lambda: server.ctx.engine.stats()["waiting"] >= expect_waiting, timeout)
    finally:
        release.set()
        held.result(timeout)


@contextlib.contextmanager
def slow_steps(server: LiveServer, seconds: float) -> Iterator[None]:
    """Every decoding step takes at least ``seconds`` (so a test can act while requests run)."""
    runner = server.ctx.engine.runner
    plain = runner.decode

    def decode(*args, **kwargs):
        time.sleep(seconds)
        return plain(*args, **kwargs)

    runner.decode = decode
    try:
        yield
    finally:
        del runner.decode


def sample(server: LiveServer, name: str, labels: Optional[dict] = None) -> float:
    """A value of the server's Prometheus metrics (0 when the series does not exist yet)."""
    value = server.ctx.metrics.registry.get_sample_value(name, labels or {})
    return 0.0 if value is None else value


def wait_until(condition, timeout: float = 30.0) -> None:
    """Poll ``condition()`` until it is true (an assertion error after ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.005)
