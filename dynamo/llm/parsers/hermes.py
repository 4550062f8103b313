"""``hermes`` tool calls: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` (Hermes 2 Pro,
Qwen 2.5 / Qwen 3 and every model whose chat template writes calls this way).

Journey: engine text -> frontend -> **tool-call parser (here)** -> response deltas.
Each ``<tool_call>`` block holds one JSON call object (or a list of them). A block ends at
``</tool_call>``, at the next ``<tool_call>`` or at the end of the output (a model stopped right
after the JSON); its JSON must then be complete, else the block stays content verbatim. Text
before, between and after blocks is content (vLLM keeps only the text before the first block;
we drop nothing the model wrote but whitespace around calls).
"""

from __future__ import annotations

from .base import Region, RegionToolParser, calls_from_json, loads_strict, partial_marker_len

OPEN = "<tool_call>"
CLOSE = "</tool_call>"


def calls_in_body(body: str) -> list[tuple[str, str]] | None:
    """The call(s) in one block's text, or None if it is not exactly that."""
    try:
        return calls_from_json(loads_strict(body.strip()))
    except ValueError:
        return None


class TagRegion(Region):
    """A ``<tool_call>`` block starting at ``start``."""

    __slots__ = ("_body", "_searched", "_start")

    def __init__(self, start: int) -> None:
        self._start = start
        self._body = start + len(OPEN)
        self._searched = self._body  # no close/open tag starts before this index

    def advance(self, text: str, final: bool) -> tuple[int, list[tuple[str, str]]] | None:
        close = text.find(CLOSE, self._searched)
        nxt = text.find(OPEN, self._searched)
        if close != -1 and (nxt == -1 or close < nxt):
            return close + len(CLOSE), calls_in_body(text[self._body : close]) or []
        if nxt != -1:
            return nxt, calls_in_body(text[self._body : nxt]) or []
        if final:
            body = text[self._body :]
            body = body[: len(body) - partial_marker_len(body, (CLOSE,))]
            return len(text), calls_in_body(body) or []
        self._searched = max(self._body, len(text) - len(CLOSE) + 1)
        return None


class HermesToolParser(RegionToolParser):
    name = "hermes"
    markers = (OPEN,)

    def find_start(self, text: str, pos: int) -> int | None:
        i = text.find(OPEN, pos)
        return None if i == -1 else i

    def open_region(self, text: str, start: int) -> Region:
        return TagRegion(start)
