"""How a run's model was prompted in training, so that ``generate`` and ``chat`` ask it the same way.

An adapter learns its task in one frame: the chat template, the system prompt of its rows, and the
data format. Asked outside that frame (no system prompt, another template) a small model answers
garbage, so ``peftkit train`` writes ``prompt.json`` beside the adapter (like ``labels.json``)::

    {"format": "chat", "system": "Extract the contact ...", "chat_template": "{% for m in ... %}"}

and the commands use it by default. ``system`` is the system message that every training row
starts with (None when the rows have none, or several different ones); ``chat_template`` the
template the rows were rendered with (None without one). Runs from before this file existed get
the same answer from their ``config.yaml`` and training data.

>>> style = PromptStyle(format="chat", system="Answer in JSON.")
>>> [m["role"] for m in style.messages("Hi")]
['system', 'user']
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Optional

from ..errors import PeftkitError
from ..untrusted import read_json

STYLE_FILE = "prompt.json"
_SAMPLE_ROWS = 1000  # enough rows to tell one shared system prompt from several


@dataclass
class PromptStyle:
    """The frame a run's prompts were built in (see the module docstring)."""

    format: str = "chat"
    system: Optional[str] = None
    chat_template: Optional[str] = None

    @property
    def templated(self) -> bool:
        """Whether prompts go through a chat template (``text`` runs trained on raw text)."""
        return self.format != "text"

    def head(self, system: Optional[str] = None) -> list[dict[str, str]]:
        """The messages before the conversation: the system message (``system`` replaces the run's,
        ``""`` drops it)."""
        text = self.system if system is None else system
        return [{"role": "system", "content": text}] if text else []

    def messages(self, user: str, system: Optional[str] = None) -> list[dict[str, str]]:
        """One user turn after :meth:`head`."""
        return self.head(system) + [{"role": "user", "content": user}]


def shared_system_prompt(rows: Iterable[dict[str, Any]]) -> Optional[str]:
    """The system message every chat row starts with, or None (no row has one, or they differ)."""
    found: set[str] = set()
    for count, row in enumerate(rows):
        if count >= _SAMPLE_ROWS:
            break
        messages = row.get("messages") or []
        first = messages[0] if messages and isinstance(messages[0], dict) else {}
        if first.get("role") != "system":
            return None
        found.add(str(first.get("content", "")))
        if len(found) > 1:
            return None
    return found.pop() if found else None


def style_of(data_format: str, rows: Any, tokenizer: Any) -> PromptStyle:
    """The prompt style of training ``rows`` in ``data_format`` with ``tokenizer``'s template."""
    system = shared_system_prompt(rows) if data_format == "chat" else None
    return PromptStyle(format=data_format, system=system, chat_template=getattr(tokenizer, "chat_template", None))


def write_style(adapter_dir: str, style: PromptStyle) -> None:
    from .runs import write_json_atomic

    write_json_atomic(os.path.join(adapter_dir, STYLE_FILE), asdict(style))


def read_style(adapter_dir: str, run_dir: Optional[str]) -> Optional[PromptStyle]:
    """The style saved with the adapter (or with its run's final adapter), else the one its run's
    config and training data give; None for an adapter that belongs to no run."""
    places = [adapter_dir] + ([os.path.join(run_dir, "adapter")] if run_dir else [])
    for folder in places:
        path = os.path.join(folder, STYLE_FILE)
        if os.path.isfile(path):
            return _parse(path)
    return _from_run_config(run_dir) if run_dir else None


def _parse(path: str) -> PromptStyle:
    from .commands import CommandError

    try:
        data = read_json(path)
    except (OSError, PeftkitError) as e:
        raise CommandError(f"{path}: cannot be read ({getattr(e, 'reason', None) or e}); delete it to prompt "
                           "with the tokenizer's template and no system message") from None
    fields = {"format": str, "system": (str, type(None)), "chat_template": (str, type(None))}
    if not isinstance(data, dict) or any(not isinstance(data.get(k), t) for k, t in fields.items() if k in data):
        raise CommandError(f"{path}: must be a JSON object with a string 'format' and string or null 'system' "
                           "and 'chat_template'; delete it to prompt with the tokenizer's template")
    return PromptStyle(**{k: data[k] for k in fields if k in data})


def _from_run_config(run_dir: str) -> Optional[PromptStyle]:
    """Older runs: the format from config.yaml, the system prompt from its training rows (None when
    the config or the data can no longer be read; the template is the tokenizer's then)."""
    from . import data
    from .config import load_run_config

    try:
        cfg = load_run_config(os.path.join(run_dir, "config.yaml"))
        rows = data.load_rows(cfg.data.train) if cfg.data.format == "chat" else []
    except (PeftkitError, OSError, ValueError):
        return None
    return PromptStyle(format=cfg.data.format, system=shared_system_prompt(rows) if len(rows) else None)
