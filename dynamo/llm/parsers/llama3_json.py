"""``llama3_json`` tool calls: ``{"name": ..., "parameters": {...}}`` objects (Llama 3.1-3.3 with the
JSON tool template, Llama 4 in JSON mode), optionally after ``<|python_tag|>``, several separated
by ``;``.

Journey: engine text -> frontend -> **tool-call parser (here)** -> response deltas.
A call may start at ``<|python_tag|>`` or at any ``{``: the text from there is held while it can
still become one JSON object; a complete object with a string ``name`` and ``parameters`` (or
``arguments``) is a call, anything else (prose with braces, JSON that is not a call, JSON cut
off by the end of the output) is content. vLLM finds calls the same way but then drops all other
text; we keep it as content, except whitespace and ``;`` around calls.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .base import Region, RegionToolParser, calls_from_json
from .json_prefix import JsonPrefix, JsonStatus

PYTHON_TAG = "<|python_tag|>"


def object_call(value: Any) -> list[tuple[str, str]] | None:
    return calls_from_json(value, allow_list=False)


class JsonRegion(Region):
    """A JSON value starting at ``start + len(prefix)`` (``prefix``: a marker to drop with it)."""

    __slots__ = ("_convert", "_fed", "_json", "_json_start", "_start")

    def __init__(
        self, start: int, prefix: str, convert: Callable[[Any], list[tuple[str, str]] | None]
    ) -> None:
        self._start = start
        self._json_start = start + len(prefix)
        self._fed = self._json_start
        self._json = JsonPrefix()
        self._convert = convert

    def advance(self, text: str, final: bool) -> tuple[int, list[tuple[str, str]]] | None:
        status = self._json.feed(text[self._fed :])
        self._fed = len(text)
        if status is JsonStatus.COMPLETE:
            end = self._json_start + self._json.end
            return end, self._convert(self._json.value()) or []
        if status is JsonStatus.INVALID:
            # Everything up to the offending character is content; scanning resumes there.
            return max(self._json_start + self._json.end, self._start + 1), []
        return (len(text), []) if final else None


class Llama3JsonToolParser(RegionToolParser):
    name = "llama3_json"
    markers = (PYTHON_TAG,)
    separators = ";"

    def find_start(self, text: str, pos: int) -> int | None:
        hits = [i for i in (text.find(PYTHON_TAG, pos), text.find("{", pos)) if i != -1]
        return min(hits) if hits else None

    def open_region(self, text: str, start: int) -> Region:
        prefix = PYTHON_TAG if text.startswith(PYTHON_TAG, start) else ""
        return JsonRegion(start, prefix, object_call)
