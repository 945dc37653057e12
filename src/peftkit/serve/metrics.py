"""The server's Prometheus metrics (``/metrics``), through ``prometheus_client``.

Each server has its own registry, so several servers in one process (tests) do not share counts.
Label values are only names the server itself serves (the base model and its adapters) or fixed
words: a request for an unknown model counts under ``model="unknown"``, so clients cannot make
the series grow without bound.

>>> m = ServeMetrics()
>>> m.requests.labels(endpoint="chat", model="base", status="200").inc()
>>> b"peftkit_serve_requests_total" in m.render()[0]
True
"""

from __future__ import annotations

import threading
import time
from collections import deque

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128)
_BATCH_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 128)


class ServeMetrics:
    """Counters, gauges and histograms of one server.

    Example:
        >>> metrics = ServeMetrics(); body, content_type = metrics.render()
    """

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        p = "peftkit_serve_"
        self.requests = Counter(p + "requests", "Requests answered, by endpoint, model and HTTP status",
                                ["endpoint", "model", "status"], registry=r)
        self.latency = Histogram(p + "request_seconds", "Time from arrival to the last token", ["endpoint"],
                                 buckets=_LATENCY_BUCKETS, registry=r)
        self.first_token = Histogram(p + "time_to_first_token_seconds", "Time from arrival to the first token",
                                     buckets=_LATENCY_BUCKETS, registry=r)
        self.prompt_tokens = Counter(p + "prompt_tokens", "Prompt tokens prefilled, by model", ["model"], registry=r)
        self.generated_tokens = Counter(p + "generated_tokens", "Tokens generated, by model", ["model"], registry=r)
        self.tokens_per_second = Gauge(p + "tokens_per_second", "Tokens generated per second over the last 10 s",
                                       registry=r)
        self.batch_size = Histogram(p + "batch_size", "Sequences in each decoding step", buckets=_BATCH_BUCKETS,
                                    registry=r)
        self.batch_adapters = Histogram(p + "batch_adapters", "Distinct adapters (base included) in each decoding step",
                                        buckets=_BATCH_BUCKETS, registry=r)
        self.waiting = Gauge(p + "queue_length", "Requests waiting for a place in the batch", registry=r)
        self.running = Gauge(p + "running_sequences", "Sequences in the decoding batch", registry=r)
        self.in_flight = Gauge(p + "requests_in_flight", "Requests accepted and not yet answered", registry=r)
        self.loads = Counter(p + "adapter_loads", "Adapters loaded into memory", ["adapter"], registry=r)
        self.evictions = Counter(p + "adapter_evictions", "Adapters removed from memory to make room or on unload",
                                 ["adapter"], registry=r)
        self.load_failures = Counter(p + "adapter_load_failures", "Adapter loads that failed", ["adapter"], registry=r)
        self.resident = Gauge(p + "adapters_loaded", "Adapters in memory", registry=r)
        self.resident_bytes = Gauge(p + "adapter_bytes", "Bytes of adapter weights in memory", registry=r)
        self._recent: deque[tuple[float, int]] = deque()
        self._lock = threading.Lock()  # the engine thread adds, the HTTP thread reads

    def count_tokens(self, per_model: dict[str, int]) -> None:
        """Record one step's generated tokens (by model) and update the tokens/s gauge."""
        now, total = time.monotonic(), 0
        for model, n in per_model.items():
            self.generated_tokens.labels(model=model).inc(n)
            total += n
        with self._lock:
            self._recent.append((now, total))
        self.refresh_rate(now)

    def refresh_rate(self, now: float) -> None:
        with self._lock:
            while self._recent and now - self._recent[0][0] > 10.0:
                self._recent.popleft()
            recent = list(self._recent)
        span = now - recent[0][0] if len(recent) > 1 else 0.0
        self.tokens_per_second.set(sum(n for _, n in recent[1:]) / span if span > 0 else 0.0)

    def render(self) -> tuple[bytes, str]:
        """``(body, content type)`` of the Prometheus text exposition."""
        self.refresh_rate(time.monotonic())
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
