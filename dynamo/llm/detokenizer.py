"""Incremental detokenization with stop strings, per request, on the way back to the client.

Journey: HTTP -> preprocess -> route -> request plane -> engine -> token ids back ->
**detokenize (here)** -> SSE. Runs once per streamed token for every request in the frontend, so
it is one Rust call per token (``tokenizers.decoders.DecodeStream``) plus a little string work.

Text is released only when it is final:
- a multi-byte character split across tokens is held until its last byte arrives (the stream
  yields nothing while the text would end in U+FFFD);
- the left context (the prompt's last tokens) makes the first token's leading space come out as in
  a full decode, for SentencePiece and byte-level BPE alike;
- with stop strings, the longest suffix that could still grow into a stop string is held back;
  on a match the text is cut before the stop string (or after it, if it is to be included), the
  result says ``stopped`` and the caller ends the request (cancelling the engine side).
``flush()`` releases whatever is held when the stream ends without a stop.

The token ids of one ``add`` (an engine output batch) go to ``DecodeStream`` in one call.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from tokenizers import Tokenizer
from tokenizers.decoders import DecodeStream

log = logging.getLogger(__name__)

_REPLACEMENT = "\ufffd"
_FLUSH_CONTEXT = 6  # tokens of left context when decoding the remainder at the end


class DetokenizeResult:
    """New final text since the previous call, and whether a stop string ended the output."""

    __slots__ = ("stop_string", "stopped", "text")

    def __init__(self, text: str, stopped: bool = False, stop_string: str | None = None) -> None:
        self.text = text
        self.stopped = stopped
        self.stop_string = stop_string

    def __repr__(self) -> str:
        return f"DetokenizeResult({self.text!r}, stopped={self.stopped}, stop_string={self.stop_string!r})"


class Detokenizer:
    """Turns one request's output token ids into text, incrementally."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        prompt_token_ids_tail: Sequence[int] = (),
        skip_special_tokens: bool = True,
        stop_strings: Sequence[str] = (),
        include_stop_str_in_output: bool = False,
    ) -> None:
        self._tokenizer = tokenizer
        self._skip_special = skip_special_tokens
        self._stops = [s for s in stop_strings if s]
        # Proper prefixes of the stop strings, by last character, longest first: what a text ending
        # in that character may be holding back.
        prefixes: dict[str, set[str]] = {}
        for stop in self._stops:
            for k in range(1, len(stop)):
                prefixes.setdefault(stop[k - 1], set()).add(stop[:k])
        self._prefixes_by_last = {c: sorted(p, key=len, reverse=True) for c, p in prefixes.items()}
        self._include_stop = include_stop_str_in_output
        self._held = ""  # decoded text held back as a possible stop-string start
        self._ids: list[int] = []  # output ids so far
        self._emitted_upto = 0  # ids before this index have produced their text
        self.stopped = False
        self._context = self._clean_context(list(prompt_token_ids_tail))
        self._stream = DecodeStream(ids=self._context[0], skip_special_tokens=skip_special_tokens)
        for token_id in self._context[1]:  # prompt ids ending in a split character: prime, emit nothing
            self._step(token_id)

    def _clean_context(self, tail: list[int]) -> tuple[list[int], list[int]]:
        """Split the prompt tail into (context that decodes to whole characters, trailing partial).

        DecodeStream misbehaves when primed with text ending in a partial character, so those
        trailing ids are stepped through instead.
        """
        partial: list[int] = []
        while tail and len(partial) < 4:
            if not self._tokenizer.decode(tail, skip_special_tokens=self._skip_special).endswith(
                _REPLACEMENT
            ):
                break
            partial.insert(0, tail.pop())
        return tail, partial

    def _step(self, token_ids: int | list[int]) -> str | None:
        """The text that ``token_ids`` (one id or several) complete, if any."""
        try:
            return self._stream.step(self._tokenizer, token_ids)
        except Exception as exc:  # tokenizers raises a plain Exception for a broken stream state
            if "Invalid prefix" not in str(exc):
                raise
            log.warning("detokenizer stream reset after an invalid prefix (tokens %s)", token_ids)
            self._stream = DecodeStream(skip_special_tokens=self._skip_special)
            return self._stream.step(self._tokenizer, token_ids)

    def add(self, token_ids: Sequence[int]) -> DetokenizeResult:
        """Feed new output token ids; returns the text that is now final."""
        if self.stopped:
            return DetokenizeResult("", True, None)
        ids = self._ids
        new_text = ""
        if token_ids:
            # One Rust call for the whole batch: the same text as stepping token by token, except
            # that a batch ending inside a character holds all of its text until that character
            # completes (a chunk, not a token, of delay).
            batch = token_ids[0] if len(token_ids) == 1 else list(token_ids)
            ids.extend(token_ids)
            chunk = self._step(batch)
            if chunk is not None:
                new_text = chunk
                self._emitted_upto = len(ids)
        if not self._stops:
            return DetokenizeResult(new_text)
        return self._apply_stops(self._held + new_text)

    def _apply_stops(self, text: str) -> DetokenizeResult:
        match = self._find_stop(text)
        if match is not None:
            stop, start = match
            self.stopped = True
            self._held = ""
            end = start + len(stop) if self._include_stop else start
            return DetokenizeResult(text[:end], True, stop)
        hold = self._partial_stop_len(text)
        if hold:
            self._held = text[-hold:]
            return DetokenizeResult(text[:-hold])
        self._held = ""
        return DetokenizeResult(text)

    def _find_stop(self, text: str) -> tuple[str, int] | None:
        """The stop string that completes first in ``text`` (ties: the one starting first)."""
        best: tuple[int, int, str] | None = None
        for stop in self._stops:
            at = text.find(stop)
            if at >= 0:
                key = (at + len(stop), at, stop)
                if best is None or key[:2] < best[:2]:
                    best = key
        return (best[2], best[1]) if best else None

    def _partial_stop_len(self, text: str) -> int:
        """Length of the longest suffix of ``text`` that is a proper prefix of a stop string."""
        if not text:
            return 0
        for prefix in self._prefixes_by_last.get(text[-1], ()):
            if text.endswith(prefix):
                return len(prefix)
        return 0

    def flush(self) -> str:
        """The held-back text at the end of the output (nothing after a stop)."""
        if self.stopped:
            return ""
        text, self._held = self._held, ""
        if self._emitted_upto < len(self._ids):
            # The output ended inside a character: decode the rest with U+FFFD, as a full decode would.
            upto = self._emitted_upto
            context = (self._context[0] + self._context[1] + self._ids[:upto])[-_FLUSH_CONTEXT:]
            decode = self._tokenizer.decode
            base = decode(context, skip_special_tokens=self._skip_special)
            full = decode(context + self._ids[upto:], skip_special_tokens=self._skip_special)
            text += (
                full[len(base) :]
                if full.startswith(base)
                else decode(self._ids[upto:], skip_special_tokens=self._skip_special)
            )
            self._emitted_upto = len(self._ids)
        return text

    @property
    def token_ids(self) -> list[int]:
        """All output ids fed so far."""
        return self._ids
