"""Turning a growing list of tokens into text pieces, and stopping at stop strings.

Decoding one token at a time is wrong for most tokenizers: a character may span several byte
tokens, and SentencePiece-style tokenizers decide a leading space from the token before. So
:class:`IncrementalDecoder` decodes a short window twice (with and without the newest tokens) and
sends the difference, holding it back while it ends in an incomplete character.
:class:`StopMatcher` holds back text that could be the start of a stop string, so a stop string
is never sent, even split across tokens.

>>> m = StopMatcher(["\\n\\n"])
>>> m.feed("Hello\\n"), m.feed("\\nWorld")
(('Hello', False), ('', True))
"""

from __future__ import annotations

from typing import Any

_INCOMPLETE = "\ufffd"  # what a decoder shows for the first bytes of an unfinished character


class IncrementalDecoder:
    """Text deltas of a sequence's generated tokens; ``"".join(deltas) == decode(all tokens)``.

    Example:
        >>> dec = IncrementalDecoder(tokenizer)     # doctest: +SKIP
        >>> dec.push(token_id)                      # doctest: +SKIP
        ' world'
    """

    def __init__(self, tokenizer: Any, window: int = 6):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self._start = 0   # first token of the window decoded for context
        self._sent = 0    # tokens whose text has been sent
        self._window = window

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def push(self, token: int) -> str:
        """Add one token; the text it completes (possibly ``""``)."""
        self.ids.append(token)
        before = self._decode(self.ids[self._start:self._sent])
        after = self._decode(self.ids[self._start:])
        if len(after) <= len(before) or after.endswith(_INCOMPLETE):
            return ""
        self._sent = len(self.ids)
        self._start = max(self._start, self._sent - self._window)
        return after[len(before):]

    def flush(self) -> str:
        """The text of tokens held back so far (at the end of the sequence)."""
        before = self._decode(self.ids[self._start:self._sent])
        after = self._decode(self.ids[self._start:])
        self._sent = len(self.ids)
        return after[len(before):] if after.startswith(before) else ""


class StopMatcher:
    """Cuts the text stream at the first stop string. ``feed`` returns ``(text safe to send,
    stopped)``; the stop string itself is never sent."""

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self._held = ""

    def feed(self, text: str) -> tuple[str, bool]:
        if not self.stops:
            return text, False
        text = self._held + text
        hits = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if hits:
            self._held = ""
            return text[:min(hits)], True
        keep = self._partial_suffix(text)
        self._held = text[len(text) - keep:] if keep else ""
        return text[:len(text) - keep], False

    def _partial_suffix(self, text: str) -> int:
        """Length of the longest end of ``text`` that begins some stop string."""
        longest = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(text)), longest, -1):
                if stop.startswith(text[-n:]):
                    longest = n
                    break
        return longest

    def flush(self) -> str:
        """Held-back text, sent when the sequence ends for another reason."""
        held, self._held = self._held, ""
        return held
