"""A pytest plugin: a test fails when peftkit's own code calls an API that warns it is deprecated.

``filterwarnings = error::DeprecationWarning:peftkit`` (pyproject.toml) catches warnings that are
*attributed* to peftkit's modules, but libraries mostly attribute theirs elsewhere: transformers'
renamed-argument decorator blames ``torch.nn.Module.__call__``, and ``warnings.warn`` without a
``stacklevel`` blames the library itself. So this plugin looks at the stack when a
``DeprecationWarning`` / ``PendingDeprecationWarning`` / ``FutureWarning`` is issued: it skips the
frames of the package that issued the warning (and the transparent plumbing between: the standard
library and ``nn.Module``'s call machinery) and finds who called that package. If that caller is
peftkit's source, the test fails at teardown with the message and the peftkit line that made the
call. Warnings caused by the reference libraries (peft calling a renamed transformers API) or by
test code are left to the usual filters.
"""

from __future__ import annotations

import sys
import sysconfig
import warnings
from pathlib import Path
from types import FrameType
from typing import Optional

import pytest

PEFTKIT_SOURCE = str(Path(__file__).resolve().parents[1] / "src" / "peftkit")
STDLIB = sysconfig.get_paths()["stdlib"]
DEPRECATIONS = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)
# torch dispatches a module call through these; the real caller is the frame above them
TRANSPARENT_SUFFIXES = ("torch/nn/modules/module.py", "torch/utils/_contextlib.py")

_caught: list[str] = []
_original_warn = warnings.warn


def _package_of(filename: str) -> str:
    """The top-level package a frame's file belongs to (``transformers``, ``peft``...), or the
    file itself for code outside site-packages."""
    parts = Path(filename).parts
    if "site-packages" in parts:
        index = parts.index("site-packages")
        return parts[index + 1] if index + 1 < len(parts) else filename
    return filename


def _is_transparent(filename: str) -> bool:
    in_stdlib = filename.startswith(STDLIB) and "site-packages" not in filename
    return in_stdlib or filename.endswith(TRANSPARENT_SUFFIXES)


def peftkit_caller(frame: Optional[FrameType]) -> Optional[str]:
    """``file:line`` of the peftkit code that called the package issuing a warning from ``frame``
    (the frame that called ``warnings.warn``), or ``None`` when the caller is not peftkit."""
    if frame is None or frame.f_code.co_filename.startswith(PEFTKIT_SOURCE):
        return None  # peftkit deprecating its own API is fine; peftkit calling a deprecated one is not
    issuer = _package_of(frame.f_code.co_filename)
    while frame is not None:
        filename = frame.f_code.co_filename
        if filename.startswith(PEFTKIT_SOURCE) and frame.f_code.co_name != "__getattr__":
            return f"{filename}:{frame.f_lineno}"
        if filename.startswith(PEFTKIT_SOURCE):  # a wrapper forwarding an attribute read: whoever read it called
            frame = frame.f_back
            continue
        if _package_of(filename) != issuer and not _is_transparent(filename):
            return None
        frame = frame.f_back
    return None


def _checking_warn(message, category=None, stacklevel=1, source=None, **kwargs):
    kind = category if category is not None else (type(message) if isinstance(message, Warning) else UserWarning)
    if isinstance(kind, type) and issubclass(kind, DEPRECATIONS):
        caller = peftkit_caller(sys._getframe(1))
        if caller is not None:
            _caught.append(f"{kind.__name__} from a call at {caller}: {message}")
    return _original_warn(message, category, stacklevel + 1, source, **kwargs)


def pytest_configure(config: pytest.Config) -> None:
    warnings.warn = _checking_warn


def pytest_unconfigure(config: pytest.Config) -> None:
    warnings.warn = _original_warn


@pytest.fixture(autouse=True)
def _no_deprecated_calls_from_peftkit():
    _caught.clear()
    yield
    if _caught:
        found = "\n  ".join(dict.fromkeys(_caught))
        _caught.clear()
        pytest.fail(f"peftkit called a deprecated API (use the current one, see peftkit/compat.py):\n  {found}",
                    pytrace=False)
