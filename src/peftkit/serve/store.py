"""The served adapters: which names exist, which are in memory, and what to evict.

Names and folders are known up front (command line, YAML file, watched directories) or added at
runtime (``/v1/load_lora_adapter``); weights are loaded into the one :class:`~peftkit.model.PeftModel`
when a request first needs them, within a memory budget: when a new adapter does not fit, the
least recently used adapters that no running request holds are deleted from the model. An adapter
taken out of service while requests use it stays in memory until the last of them ends.

Only the engine thread changes the model (:meth:`acquire`, :meth:`release`, :meth:`collect`,
:meth:`load_now`); the HTTP side only reads and edits the table of names, under a lock.

>>> store = AdapterStore(peft_model, budget=2**30)       # doctest: +SKIP
>>> store.add(read_source("a", "runs/x", "command line"))  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, OrderedDict
from typing import Any, Optional

import torch

from .. import checkpoint
from .errors import ServeError
from .metrics import ServeMetrics
from .sources import AdapterSource, read_source, scan

log = logging.getLogger("peftkit.serve")


def model_bytes(model: torch.nn.Module) -> int:
    """Bytes of every parameter and buffer (each tensor once)."""
    seen = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    return sum(t.numel() * t.element_size() for t in seen.values())


class AdapterStore:
    """Served adapter names and the adapters held in memory (LRU within ``budget`` bytes).

    Example:
        >>> if store.acquire("a"):   # on the engine thread: loaded (or already in memory) and pinned  # doctest: +SKIP
        ...     store.release("a")
    """

    def __init__(self, model: Any, budget: int, max_loaded: Optional[int] = None, directories: tuple[str, ...] = (),
                 metrics: Optional[ServeMetrics] = None):
        self.model = model
        self.budget, self.max_loaded = budget, max_loaded
        self.directories = list(directories)
        self.metrics = metrics or ServeMetrics()
        self._lock = threading.RLock()
        self._sources: dict[str, AdapterSource] = {}
        self._broken: dict[str, tuple[tuple, str]] = {}   # name -> (file signature, why it failed)
        self._resident: OrderedDict[str, int] = OrderedDict()  # name -> bytes; least recently used first
        self._loaded_from: dict[str, tuple] = {}              # name -> signature of the files loaded
        self._pins: Counter[str] = Counter()
        self._retired: set[str] = set()   # out of service but still in memory (pinned, or not yet collected)
        self._hidden: set[str] = set()    # unloaded through the API: directory scans leave them out
        self.peft_type: Optional[str] = None

    # ------------------------------------------------------------------ the table of names (any thread)
    def add(self, source: AdapterSource) -> None:
        """Serve ``source`` under its name; one method per server (a PeftModel holds one)."""
        with self._lock:
            if self.peft_type is not None and source.config.peft_type != self.peft_type:
                raise ServeError(400, f"adapter {source.name!r} ({source.path}) is a {source.config.peft_type} adapter "
                                      f"but this server serves {self.peft_type} adapters (one method per server)",
                                 code="invalid_adapter")
            if source.name in self._sources:
                raise ServeError(400, f"an adapter named {source.name!r} is already served; unload it first or pick "
                                      "another name", param="lora_name", code="adapter_exists")
            if source.name in self._retired:
                raise ServeError(409, f"adapter {source.name!r} was unloaded and requests still use it; retry when "
                                      "they have finished", param="lora_name", code="adapter_busy")
            self.peft_type = self.peft_type or source.config.peft_type
            self._sources[source.name] = source
            self._hidden.discard(source.name)

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._sources)

    def knows(self, name: str) -> bool:
        """Whether ``name`` is served (watched directories are scanned again on a miss)."""
        with self._lock:
            if name in self._sources:
                return True
        self.rescan()
        with self._lock:
            return name in self._sources

    def remove(self, name: str, hide: bool = True) -> None:
        """Stop serving ``name``; its weights leave memory when no request holds them."""
        with self._lock:
            if name not in self._sources:
                raise ServeError(404, f"no adapter named {name!r} is served", param="lora_name", code="adapter_not_found")
            del self._sources[name]
            self._broken.pop(name, None)
            if hide:
                self._hidden.add(name)
            if name in self._resident:
                self._retired.add(name)

    def rescan(self) -> None:
        """Serve new sub-folders of the watched directories, drop vanished ones, and mark changed
        adapters for reloading."""
        if not self.directories:
            return
        found = scan(self.directories)
        with self._lock:
            for name, source in list(self._sources.items()):
                if source.origin.startswith("directory") and name not in found:
                    self.remove(name, hide=False)
            for name, path in found.items():
                if name in self._sources or name in self._hidden or name in self._retired:
                    continue
                try:
                    self.add(read_source(name, path, f"directory {path}"))
                except ServeError as e:
                    if self._broken.get(name, ((), ""))[1] != e.message:
                        log.warning("not serving %s: %s", path, e.message)
                    self._broken[name] = ((), e.message)
            for name in list(self._resident):
                source = self._sources.get(name)
                if source is not None and source.signature() != self._loaded_from.get(name):
                    self._retired.add(name)  # changed on disk: reload on next use

    # ------------------------------------------------------------------ memory (engine thread)
    def acquire(self, name: str) -> bool:
        """Make ``name``'s weights resident and pin them for a request. False when it must wait
        (memory held by running requests, or an older copy still in use); :class:`ServeError`
        when it cannot be served."""
        with self._lock:
            source = self._sources.get(name)
            retired = name in self._retired
        if source is None:
            raise ServeError(404, f"The model `{name}` does not exist.", param="model", code="model_not_found")
        if retired:  # changed on disk: the old copy leaves once its requests end, then reloads
            if self._pins[name]:
                return False
            self._evict(name)
        if name not in self._resident:
            broken = self._broken.get(name)
            if broken is not None and broken[0] == source.signature():
                raise ServeError(400, broken[1], param="model", code="adapter_load_failed")
            if not self._make_room(self._estimate(source), keep=name):
                return False
            self._load(source)
        self._resident.move_to_end(name)
        self._pins[name] += 1
        return True

    def release(self, name: str) -> None:
        """A request holding ``name`` ended."""
        self._pins[name] -= 1
        if self._pins[name] <= 0:
            del self._pins[name]
            if name in self._retired:
                self._evict(name)

    def collect(self) -> None:
        """Free the weights of retired adapters no request holds."""
        with self._lock:
            idle = [n for n in self._retired if not self._pins[n]]
        for name in idle:
            self._evict(name)

    def load_now(self, source: AdapterSource) -> None:
        """``/v1/load_lora_adapter``: serve ``source`` and load it at once (so a bad file fails
        this call, not a later request)."""
        self.add(source)
        try:
            if not self._make_room(self._estimate(source), keep=source.name):
                raise ServeError(503, "no memory for another adapter while running requests hold all loaded "
                                      "adapters; retry later", code="adapter_memory_full")
            self._load(source)
        except BaseException:
            with self._lock:
                self._sources.pop(source.name, None)
                self._broken.pop(source.name, None)
            raise

    def resident(self) -> dict[str, int]:
        return dict(self._resident)

    def _estimate(self, source: AdapterSource) -> int:
        """Bytes the adapter will take, from its file's header (no tensor read)."""
        dtype = next(self.model.parameters()).dtype
        try:
            header = checkpoint.adapter_file_header(checkpoint.adapter_weights_path(source.path))
        except Exception as e:  # a missing or damaged file: the load itself reports it
            log.debug("cannot size %s: %s", source.path, e)
            return 0
        need = sum(t.numel for t in header.values()) * torch.empty((), dtype=dtype).element_size()
        if need > self.budget:
            raise ServeError(400, f"adapter {source.name!r} needs {need / 2**20:.1f} MiB, more than the whole adapter "
                                  f"memory budget ({self.budget / 2**20:.1f} MiB); raise --adapter-memory",
                             param="model", code="adapter_too_large")
        return need

    def _make_room(self, need: int, keep: str) -> bool:
        def over() -> bool:
            full = self.max_loaded is not None and len(self._resident) >= self.max_loaded
            return full or sum(self._resident.values()) + need > self.budget

        while over():
            victim = next((n for n in self._resident if not self._pins[n] and n != keep), None)
            if victim is None:
                return False
            self._evict(victim)
        return True

    def _load(self, source: AdapterSource) -> None:
        before, started = model_bytes(self.model), time.perf_counter()
        try:
            self.model.load_adapter(source.path, adapter_name=source.name)
        except Exception as e:  # any failure of a bad file is this adapter's, never the server's
            message = f"adapter {source.name!r} ({source.path}) cannot be loaded: {e}"
            self._broken[source.name] = (source.signature(), message)
            self.metrics.load_failures.labels(adapter=source.name).inc()
            log.warning(message)
            raise ServeError(400, message, param="model", code="adapter_load_failed") from None
        self._broken.pop(source.name, None)
        self._resident[source.name] = model_bytes(self.model) - before
        self._loaded_from[source.name] = source.signature()
        self.metrics.loads.labels(adapter=source.name).inc()
        self._update_gauges()
        log.info("loaded adapter %s from %s in %.2f s", source.name, source.path, time.perf_counter() - started)

    def _evict(self, name: str) -> None:
        if name in self._resident:
            self.model.delete_adapter(name)
            del self._resident[name]
            self._loaded_from.pop(name, None)
            self.metrics.evictions.labels(adapter=name).inc()
            self._update_gauges()
        with self._lock:
            self._retired.discard(name)

    def _update_gauges(self) -> None:
        self.metrics.resident.set(len(self._resident))
        self.metrics.resident_bytes.set(sum(self._resident.values()))
