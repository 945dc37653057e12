"""The engine: one thread that owns the model and decodes every running request together.

Between two decoding steps it takes what arrived (requests, adapter loads and unloads), drops
requests whose client left or whose time ran out, and admits waiting requests while the batch has
room: their adapters are loaded if needed (:class:`~.store.AdapterStore`), their prompts prefilled
together, and their rows join the running batch (:class:`~.kv.BatchCache`). Each step then decodes
one token for every row, whatever adapter each uses, and finished rows leave (continuous batching).

A failure stays with the requests it concerns: a prefill that fails fails the requests being
admitted, a step that fails fails the rows of that step, and the engine carries on.

>>> engine = Engine(runner, store, tokenizer, settings)   # doctest: +SKIP
>>> engine.start(); engine.submit(job)                    # doctest: +SKIP
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections import Counter
from typing import Any, Callable, Optional

import torch

from ..names import BASE_ADAPTER
from .errors import ServeError, internal
from .jobs import Delta, Done, Failure, Finish, Job, Sequence
from .kv import BatchCache
from .metrics import ServeMetrics
from .runner import ModelRunner
from .sampling import next_tokens
from .settings import ServeSettings
from .store import AdapterStore

log = logging.getLogger("peftkit.serve")


class Engine:
    """Runs :class:`~.jobs.Job` s on a :class:`~.runner.ModelRunner` in a thread of its own.

    Example:
        >>> future = engine.call(lambda: store.load_now(source))   # runs between two steps  # doctest: +SKIP
    """

    def __init__(self, runner: ModelRunner, store: AdapterStore, eos_ids: set[int], settings: ServeSettings,
                 metrics: Optional[ServeMetrics] = None):
        self.runner, self.store, self.eos_ids, self.settings = runner, store, eos_ids, settings
        self.metrics = metrics or store.metrics
        self._wake = threading.Condition()
        self._inbox: list[Job] = []
        self._commands: list[tuple[Callable[[], Any], concurrent.futures.Future]] = []
        self._waiting: list[Job] = []
        self._rows: list[tuple[Job, Sequence]] = []   # one per batch row, in the cache's order
        self._batch = BatchCache()
        self._in_flight = 0
        self._draining = self._stopped = False
        self._thread: Optional[threading.Thread] = None
        self._last_scan = time.monotonic()

    # ------------------------------------------------------------------ the HTTP side
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="peftkit-serve-engine", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopped

    def stats(self) -> dict[str, int]:
        return {"running": len(self._rows), "waiting": len(self._waiting) + len(self._inbox), "in_flight": self._in_flight}

    def submit(self, job: Job) -> None:
        """Queue ``job``; 503 while shutting down, 429 past ``max_concurrent_requests``."""
        with self._wake:
            if self._draining or self._stopped:
                raise ServeError(503, "the server is shutting down", code="shutting_down")
            if self._in_flight >= self.settings.max_concurrent_requests:
                raise ServeError(429, f"{self._in_flight} requests are already in flight (the limit is "
                                      f"{self.settings.max_concurrent_requests}); retry shortly", code="too_many_requests")
            self._in_flight += 1
            self.metrics.in_flight.set(self._in_flight)
            self._inbox.append(job)
            self._wake.notify()

    def cancel(self, job: Job) -> None:
        """The client left: the engine drops the job before its next step."""
        job.cancelled = True
        with self._wake:
            self._wake.notify()

    def call(self, fn: Callable[[], Any]) -> concurrent.futures.Future:
        """Run ``fn`` on the engine thread between two steps (it may change the model)."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._wake:
            if self._stopped:
                future.set_exception(ServeError(503, "the server is shutting down", code="shutting_down"))
                return future
            self._commands.append((fn, future))
            self._wake.notify()
        return future

    def drain(self) -> None:
        """Refuse new requests; running ones carry on."""
        with self._wake:
            self._draining = True

    def stop(self, timeout: float = 10.0) -> None:
        """End the thread; requests still in flight fail with 503."""
        with self._wake:
            self._stopped = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    # ------------------------------------------------------------------ the engine thread
    def _loop(self) -> None:
        idle = False
        while True:
            with self._wake:
                if not self._stopped and (idle or not (self._inbox or self._commands or self._waiting or self._rows)):
                    self._wake.wait(timeout=0.05 if self._waiting else 1.0)
                if self._stopped:
                    break
                arrived, self._inbox = self._inbox, []
                commands, self._commands = self._commands, []
            self._waiting.extend(arrived)
            for fn, future in commands:
                self._run_command(fn, future)
            self._housekeeping()
            self._expire()
            admitted = self._admit()
            if self._rows:
                self._step()
            idle = not self._rows and not admitted and not arrived and not commands
            self._update_gauges()
        self._abort_all()

    def _run_command(self, fn: Callable[[], Any], future: concurrent.futures.Future) -> None:
        try:
            future.set_result(fn())
        except BaseException as e:  # the caller gets it; the engine goes on
            future.set_exception(e)

    def _housekeeping(self) -> None:
        now = time.monotonic()
        interval = self.settings.watch_interval
        if interval and now - self._last_scan >= interval:
            self._last_scan = now
            try:
                self.store.rescan()
            except Exception:  # a directory that cannot be read is logged by the scan; never fatal
                log.exception("rescanning adapter directories failed")
        self.store.collect()

    def _expire(self) -> None:
        now = time.monotonic()
        for job in list(self._waiting):
            if job.cancelled:
                self._waiting.remove(job)
                self._end(job, None)
            elif now > job.queue_deadline or now > job.deadline:
                self._waiting.remove(job)
                self._end(job, ServeError(503, f"the request waited {now - job.arrived:.0f} s for a place in the batch "
                                               f"(queue timeout {self.settings.queue_timeout:g} s); the server is busy, "
                                               "retry later", code="queue_timeout"))
        late = {id(job): job for job, _ in self._rows if job.cancelled or now > job.deadline}
        if late:
            self._drop_rows(set(late))
            for job in late.values():
                self._end(job, None if job.cancelled else ServeError(
                    504, f"the request ran past its {self.settings.request_timeout:g} s timeout", code="request_timeout"))

    def _admit(self) -> bool:
        group: list[Job] = []
        rows, width = len(self._rows), 0
        for job in list(self._waiting):
            need = len(job.sequences)
            if rows + need > self.settings.max_batch_size and (rows or group):
                break
            longest = max(width, *(len(s.prompt) for s in job.sequences))
            if group and (sum(len(j.sequences) for j in group) + need) * longest > self.settings.max_prefill_tokens:
                break
            try:
                ready = job.adapter is None or self.store.acquire(job.adapter)
            except ServeError as e:
                self._waiting.remove(job)
                self._end(job, e)
                continue
            if not ready:  # its adapter waits for memory that running requests hold
                continue
            job.pinned = job.adapter is not None
            self._waiting.remove(job)
            group.append(job)
            rows, width = rows + need, longest
        if group:
            self._prefill(group)
        return bool(group)

    def _prefill(self, group: list[Job]) -> None:
        pairs = [(job, seq) for job in group for seq in job.sequences]
        try:
            logits, tensors = self.runner.prefill([s.prompt for _, s in pairs], [self._adapter(j) for j, _ in pairs])
            tokens = next_tokens(logits, [(s.params, s.generator, s.out) for _, s in pairs])
        except Exception as e:
            log.exception("prefill failed")
            for job in group:
                self._end(job, e if isinstance(e, ServeError) else internal(e))
            return
        for job in group:
            self.metrics.prompt_tokens.labels(model=job.model).inc(job.prompt_tokens)
        for (job, seq), token in zip(pairs, tokens):
            self._accept(job, seq, token)
        keep = [i for i, (_, seq) in enumerate(pairs) if seq.finish is None]
        if keep:
            index = torch.tensor(keep, device=tensors[0][0].device)
            self._batch.add([(k[index], v[index]) for k, v in tensors], [len(pairs[i][1].prompt) for i in keep])
            self._rows.extend(pairs[i] for i in keep)
        self.metrics.count_tokens(Counter(job.model for job, _ in pairs))
        for job in group:
            if job.done:
                self._end(job, None)

    def _step(self) -> None:
        rows = self._rows
        try:
            logits = self.runner.decode(self._batch, [s.out[-1] for _, s in rows], [self._adapter(j) for j, _ in rows])
            tokens = next_tokens(logits, [(s.params, s.generator, s.out) for _, s in rows])
        except Exception as e:
            log.exception("decoding step failed")
            jobs = {id(job): job for job, _ in rows}
            self._rows, self._batch = [], BatchCache()
            for job in jobs.values():
                self._end(job, internal(e))
            return
        self.metrics.batch_size.observe(len(rows))
        self.metrics.batch_adapters.observe(len({j.adapter for j, _ in rows}))
        for (job, seq), token in zip(rows, tokens):
            self._accept(job, seq, token)
        self.metrics.count_tokens(Counter(job.model for job, _ in rows))
        finished = {id(job): job for job, seq in rows if seq.finish is not None}
        if finished:
            self._drop_rows(set(), keep_unfinished=True)
            for job in finished.values():
                if job.done:
                    self._end(job, None)

    def _drop_rows(self, jobs: set[int], keep_unfinished: bool = False) -> None:
        """Remove the rows of ``jobs`` (ids), and with ``keep_unfinished`` every finished row."""
        keep = [i for i, (job, seq) in enumerate(self._rows)
                if id(job) not in jobs and not (keep_unfinished and seq.finish is not None)]
        if len(keep) < len(self._rows):
            self._batch.keep(keep)
            self._rows = [self._rows[i] for i in keep]

    @staticmethod
    def _adapter(job: Job) -> str:
        return job.adapter if job.adapter is not None else BASE_ADAPTER

    def _accept(self, job: Job, seq: Sequence, token: int) -> None:
        """Take ``token`` as ``seq``'s next token: send its text, or end the sequence."""
        if job.first_token_at is None:
            job.first_token_at = time.monotonic()
            self.metrics.first_token.observe(job.first_token_at - job.arrived)
        seq.out.append(token)
        if token in self.eos_ids and not seq.params.ignore_eos:
            seq.out.pop()  # the end-of-sequence token is not part of the answer
            self._finish(job, seq, "stop")
            return
        sent, stopped = seq.stops.feed(seq.decoder.push(token))
        if sent:
            job.emit(Delta(seq.index, sent))
        if stopped:
            seq.finish = "stop"
            job.emit(Finish(seq.index, "stop"))
        elif len(seq.out) >= seq.params.max_tokens or self._at_context_end(seq):
            self._finish(job, seq, "length")

    def _at_context_end(self, seq: Sequence) -> bool:
        limit = self.runner.context_length
        return limit is not None and len(seq.prompt) + len(seq.out) >= limit

    def _finish(self, job: Job, seq: Sequence, reason: str) -> None:
        tail, stopped = seq.stops.feed(seq.decoder.flush())
        tail += "" if stopped else seq.stops.flush()
        if tail:
            job.emit(Delta(seq.index, tail))
        seq.finish = "stop" if stopped else reason
        job.emit(Finish(seq.index, seq.finish))

    def _end(self, job: Job, error: Optional[BaseException]) -> None:
        """The job is over (done, failed, or cancelled): unpin its adapter and report."""
        if job.ended:
            return
        job.ended = True
        if job.pinned:
            job.pinned = False
            self.store.release(job.adapter)
        status = "200" if error is None else str(getattr(error, "status", 500))
        if job.cancelled and error is None:
            status = "499"  # nginx's "client closed request"
        self.metrics.requests.labels(endpoint=job.id.split("-")[0], model=job.model, status=status).inc()
        self.metrics.latency.labels(endpoint=job.id.split("-")[0]).observe(time.monotonic() - job.arrived)
        if error is not None:
            job.emit(Failure(error if isinstance(error, ServeError) else internal(error)))
        elif not job.cancelled:
            job.emit(Done(job.prompt_tokens, job.completion_tokens))
        with self._wake:
            self._in_flight -= 1
            self.metrics.in_flight.set(self._in_flight)

    def _abort_all(self) -> None:
        error = ServeError(503, "the server shut down before this request finished", code="shutting_down")
        jobs = {id(j): j for j in [*self._inbox, *self._waiting, *(j for j, _ in self._rows)]}
        self._inbox, self._waiting, self._rows, self._batch = [], [], [], BatchCache()
        for job in jobs.values():
            self._end(job, error)
        for fn, future in self._commands:
            future.set_exception(error)
        self._commands = []

    def _update_gauges(self) -> None:
        self.metrics.waiting.set(len(self._waiting) + len(self._inbox))
        self.metrics.running.set(len(self._rows))
