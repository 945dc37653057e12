"""What ``peftkit serve`` is told: the model, where adapters come from, the address, and the limits.

Every limit has a safe default (bind to 127.0.0.1, a request body of at most 2 MiB, 64 requests in
flight, ...) and is checked here once, so the rest of the server can trust it.

>>> s = ServeSettings(model="smollm2-135m-instruct", adapter_memory=parse_size("256MiB"))
>>> s.host, s.adapter_memory
('127.0.0.1', 268435456)
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Optional

from ..errors import ConfigError

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "kib": 2**10, "mib": 2**20, "gib": 2**30}


def parse_size(text: str | int) -> int:
    """A byte count from ``"512MB"``, ``"1GiB"``, ``"200k"`` or a plain number.

    >>> parse_size("1GiB"), parse_size("2MB"), parse_size(10)
    (1073741824, 2000000, 10)
    """
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(text))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise ConfigError("Invalid size:", [("", f"{text!r} is not a size; write e.g. 512MB, 1GiB or 2000000")])
    return int(float(match.group(1)) * _UNITS[unit])


@dataclass
class ServeSettings:
    """Settings of one server. ``adapters`` maps served names to adapter or run folders;
    ``adapter_dirs`` are folders whose sub-folders are served by their names and the only places
    ``/v1/load_lora_adapter`` may load from.

    Example:
        >>> ServeSettings(model="tiny", adapters={"a": "runs/x"}, api_keys=["sk-1"]).base_name
        'tiny'
    """

    model: str
    served_model_name: Optional[str] = None
    adapters: dict[str, str] = field(default_factory=dict)
    adapter_dirs: list[str] = field(default_factory=list)
    watch_interval: float = 5.0            # seconds between rescans of adapter_dirs (0: only on a miss)
    host: str = "127.0.0.1"
    port: int = 8000
    api_keys: list[str] = field(default_factory=list)
    dtype: str = "float32"
    device: Optional[str] = None
    threads: Optional[int] = None          # torch CPU threads of the engine
    max_batch_size: int = 32               # sequences decoded together in one step
    max_concurrent_requests: int = 64      # requests queued or running; more get 429
    max_prompt_tokens: Optional[int] = None  # default: the model's context length minus one
    max_tokens: int = 2048                 # the largest max_tokens a request may ask for
    max_body_bytes: int = 2 * 2**20
    max_n: int = 8                         # choices per request
    max_stop: int = 4                      # stop sequences per request (OpenAI's limit)
    request_timeout: float = 600.0         # seconds from arrival to the last token
    queue_timeout: float = 120.0           # seconds a request may wait for a place in the batch
    shutdown_grace: float = 30.0           # seconds in-flight requests get to finish on shutdown
    adapter_memory: int = 2**30            # bytes of adapter weights kept loaded (LRU beyond)
    max_loaded_adapters: Optional[int] = None
    max_prefill_tokens: int = 4096         # prompt tokens (padded) prefilled between two decode steps

    def __post_init__(self) -> None:
        problems = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type not in ("int", "float", "Optional[int]") or value is None:
                continue
            zero_ok = f.name in ("watch_interval", "port", "shutdown_grace")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or (value == 0 and not zero_ok):
                problems.append((f.name, f"must be a number {'>= 0' if zero_ok else '> 0'}, got {value!r}"))
            elif f.type != "float" and not isinstance(value, int):
                problems.append((f.name, f"must be a whole number, got {value!r}"))
        if self.dtype not in ("float32", "bfloat16", "float16"):
            problems.append(("dtype", f"must be float32, bfloat16 or float16, got {self.dtype!r}"))
        if not self.model:
            problems.append(("model", "is empty; give a bundled name, a local path or a Hugging Face id"))
        if any(not k for k in self.api_keys):
            problems.append(("api_keys", "an API key is empty"))
        if problems:
            raise ConfigError("Invalid serve settings:", problems)

    @property
    def base_name(self) -> str:
        """The ``model`` name that selects the base model without an adapter."""
        return self.served_model_name or self.model
