"""Partner tests build trainers whose accelerate state (mixed precision, device) is a process-wide
singleton; each test leaves it reset so later tests (peftkit's own loop) configure their own."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    yield
    from accelerate.state import AcceleratorState, PartialState

    AcceleratorState._reset_state(True)
    PartialState._reset_state()
