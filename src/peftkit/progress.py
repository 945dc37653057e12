"""What the user sees while a long phase runs (loading a model, scoring, evaluating, merging), and
the third-party output kept out of the way meanwhile.

Bars are ``tqdm`` bars on stderr that draw only on a terminal (``disable=None``): a log file or CI
gets no carriage-return noise, only the one-line start/end notes of :func:`phase`. Set
``PEFTKIT_PROGRESS=0`` to silence both, ``=1`` to force bars where stderr is not a terminal.

>>> for batch in bar(batches, "evaluating"):   # doctest: +SKIP
...     score(batch)
>>> with phase("loading model smollm2-135m-instruct"):   # doctest: +SKIP
...     model = load_model("smollm2-135m-instruct")
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from typing import Any, Iterable, Iterator, Optional, TypeVar

T = TypeVar("T")
# Loggers whose warnings are noise while peftkit loads and prepares (see quiet_libraries).
QUIETED_LOGGERS = ("transformers", "datasets", "huggingface_hub", "accelerate", "torchao", "torch.utils._pytree")


def _setting() -> Optional[bool]:
    """``PEFTKIT_PROGRESS``: False (``0``) silences, True (``1``) forces bars, None lets tqdm decide."""
    value = os.environ.get("PEFTKIT_PROGRESS", "").strip().lower()
    if value in ("0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    return None


def bar_disabled(enabled: bool = True) -> Optional[bool]:
    """The ``disable=`` argument for a tqdm bar: True when ``enabled`` is False (another process
    draws it) or progress is off, None (tqdm: off unless stderr is a terminal) otherwise."""
    setting = _setting()
    if not enabled or setting is False:
        return True
    return False if setting else None


def bar(items: Iterable[T], desc: str, total: Optional[int] = None, enabled: bool = True) -> Iterable[T]:
    """``items`` with a progress bar that disappears when done (``leave=False``): the result line
    that follows is what stays on screen."""
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, total=total, leave=False, disable=bar_disabled(enabled), dynamic_ncols=True)


@contextlib.contextmanager
def phase(what: str, enabled: bool = True, out: Any = None) -> Iterator[None]:
    """A long step without a natural count (loading a model, saving, checking): one line when it
    starts and one with its duration when it ends, on stderr, with third-party output quietened
    meanwhile (:func:`quiet_libraries`)."""
    out = out or sys.stderr
    say = enabled and _setting() is not False
    if say:
        print(f"{what} ...", file=out, flush=True)
    began = time.time()
    with quiet_libraries():
        yield
    if say:
        print(f"{what}: done in {time.time() - began:.1f} s", file=out, flush=True)


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """Keep third-party chatter off the screen for the duration: transformers' and datasets' own
    progress bars, transformers' loading report (a table of missing or unexpected weights, coloured
    like an error, although a new classification head is expected when fine-tuning a classifier),
    and torchao's notes about GPU kernels it cannot load on a CPU machine. Their errors still show;
    peftkit says itself what it loads and raises on what is wrong."""
    restore = []
    for name in QUIETED_LOGGERS:
        logger = logging.getLogger(name)
        restore.append((logger, logger.level))
        if logger.getEffectiveLevel() < logging.ERROR:
            logger.setLevel(logging.ERROR)
    bars = _library_bars_off()
    try:
        yield
    finally:
        for logger, level in restore:
            logger.setLevel(level)
        for undo in bars:
            undo()


def _library_bars_off() -> list:
    """Turn off transformers', datasets' and huggingface_hub's progress bars; returns undo functions."""
    undo = []
    try:
        from transformers.utils import logging as hf_logging

        if hf_logging.is_progress_bar_enabled():
            hf_logging.disable_progress_bar()
            undo.append(hf_logging.enable_progress_bar)
    except ImportError:  # pragma: no cover - transformers is a core dependency
        pass
    undo += _gguf_bar_on_terminals_only()
    try:
        import datasets

        if datasets.is_progress_bar_enabled():
            datasets.disable_progress_bars()
            undo.append(datasets.enable_progress_bars)
    except (ImportError, AttributeError):
        pass
    return undo


def _gguf_bar_on_terminals_only() -> list:
    """transformers' GGUF loader draws its own tqdm bar (de-quantizing the bundled SmolLM2 is most
    of its ~18 s load), past the switch above. It is the model-load progress on a terminal, so it
    stays there (without lingering), and goes from logs; returns the undo function."""
    import sys

    module = sys.modules.get("transformers.modeling_gguf_pytorch_utils")
    if module is None:
        try:
            import transformers.modeling_gguf_pytorch_utils as module
        except ImportError:  # pragma: no cover - an older or newer transformers without it
            return []
    original = getattr(module, "tqdm", None)
    if original is None:
        return []

    def terminal_only(*args: Any, **kwargs: Any) -> Any:
        kwargs.update(disable=bar_disabled(), leave=False)
        return original(*args, **kwargs)

    module.tqdm = terminal_only

    def undo() -> None:
        module.tqdm = original

    return [undo]
