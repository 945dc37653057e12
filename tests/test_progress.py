"""Progress on long phases: bars only on a terminal, one start and one end line per phase in logs,
PEFTKIT_PROGRESS to silence or force them, and third-party chatter kept out of the way meanwhile."""

from __future__ import annotations

import io
import logging

import pytest

from peftkit.progress import QUIETED_LOGGERS, bar, bar_disabled, phase, quiet_libraries


@pytest.mark.parametrize("setting, enabled, expected", [
    (None, True, None),     # tqdm decides: drawn on a terminal only
    (None, False, True),    # another process draws it
    ("0", True, True),      # silenced
    ("1", True, False),     # forced, e.g. in a CI log that renders carriage returns
    ("1", False, True),
])
def test_bar_disabled(monkeypatch, setting, enabled, expected):
    if setting is None:
        monkeypatch.delenv("PEFTKIT_PROGRESS", raising=False)
    else:
        monkeypatch.setenv("PEFTKIT_PROGRESS", setting)
    assert bar_disabled(enabled) is expected


def test_a_bar_on_a_pipe_draws_nothing_and_yields_every_item(capsys, monkeypatch):
    monkeypatch.delenv("PEFTKIT_PROGRESS", raising=False)
    assert list(bar(range(5), "scoring")) == [0, 1, 2, 3, 4]
    assert capsys.readouterr().err == ""  # pytest's stderr is not a terminal


def test_a_phase_says_when_it_starts_and_how_long_it_took(monkeypatch):
    monkeypatch.delenv("PEFTKIT_PROGRESS", raising=False)
    out = io.StringIO()
    with phase("loading model tiny", out=out):
        pass
    first, second = out.getvalue().splitlines()
    assert first == "loading model tiny ..." and second.startswith("loading model tiny: done in ")
    quiet = io.StringIO()
    monkeypatch.setenv("PEFTKIT_PROGRESS", "0")
    with phase("loading model tiny", out=quiet):
        pass
    with phase("another process's phase", enabled=False, out=quiet):
        pass
    assert quiet.getvalue() == ""


def test_quiet_libraries_hides_their_warnings_keeps_errors_and_restores_levels(caplog):
    transformers = logging.getLogger("transformers")
    before = {name: logging.getLogger(name).level for name in QUIETED_LOGGERS}
    with caplog.at_level(logging.WARNING), quiet_libraries():
        transformers.warning("LOAD REPORT: classifier.weight MISSING")
        logging.getLogger("torchao").warning("Failed to load _C_mxfp8.so")
        transformers.error("a real error")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["a real error"]
    assert {name: logging.getLogger(name).level for name in QUIETED_LOGGERS} == before


def test_quiet_libraries_turns_transformers_bars_off_and_back_on():
    from transformers.utils import logging as hf_logging

    assert hf_logging.is_progress_bar_enabled()
    with quiet_libraries():
        assert not hf_logging.is_progress_bar_enabled()
    assert hf_logging.is_progress_bar_enabled()
