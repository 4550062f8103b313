"""``mistral`` tool calls, both generations of Mistral's format:
- tokenizers before v11: ``[TOOL_CALLS] [{"name": ..., "arguments": {...}}, ...]`` (a list, or one
  object);
- v11 and later: ``[TOOL_CALLS]name[ARGS]{...}`` (or ``[TOOL_CALLS]name{...}``), once per call.

Journey: engine text -> frontend -> **tool-call parser (here)** -> response deltas.
``[TOOL_CALLS]`` is a special token: the detokenizer must keep special tokens in the text for this
parser to see it. Call ids are 9 letters and digits, the only ids Mistral's chat templates accept.
What follows a marker that is not one of the two shapes, or JSON cut off by the end of the
output, stays content verbatim.
"""

from __future__ import annotations

from typing import Any

from .base import Region, RegionToolParser, calls_from_json, dumps_arguments, make_mistral_call_id
from .json_prefix import JsonPrefix, JsonStatus

TOOL_CALLS = "[TOOL_CALLS]"
ARGS = "[ARGS]"
_MORE, _NOT_A_CALL, _STARTED = object(), object(), object()


def _is_name_char(c: str) -> bool:
    return c.isascii() and (c.isalnum() or c in "_-.")


class MistralRegion(Region):
    """``[TOOL_CALLS]`` and what follows it: a JSON list/object, or ``name[ARGS]{...}``."""

    __slots__ = ("_fed", "_json", "_json_start", "_name", "_pos", "_start")

    def __init__(self, start: int) -> None:
        self._start = start
        self._pos = start + len(TOOL_CALLS)  # next character to look at before the JSON
        self._name: str | None = None  # v11 shape: the name, once read
        self._json: JsonPrefix | None = None
        self._json_start = 0
        self._fed = 0

    def advance(self, text: str, final: bool) -> tuple[int, list[tuple[str, str]]] | None:
        if self._json is None:
            header = self._read_header(text)
            if header is _NOT_A_CALL or (header is _MORE and final):
                return self._start + len(TOOL_CALLS), []  # the marker is content; read on after it
            if header is _MORE:
                return None
        assert self._json is not None
        status = self._json.feed(text[self._fed :])
        self._fed = len(text)
        if status is JsonStatus.COMPLETE:
            return self._json_start + self._json.end, self._calls(self._json.value()) or []
        if status is JsonStatus.INVALID:
            return self._json_start + self._json.end, []
        return (len(text), []) if final else None

    def _read_header(self, text: str) -> object:
        """Read from the marker up to the JSON: ``_MORE``, ``_NOT_A_CALL`` or ``_STARTED``."""
        n = len(text)
        if self._name is None:
            i = self._pos
            while i < n and text[i].isspace():
                i += 1
            if i == n:
                return _MORE
            if text[i] in "[{":  # the JSON shape (before v11)
                return self._start_json(i)
            j = i
            while j < n and _is_name_char(text[j]):
                j += 1
            if j == i:
                return _NOT_A_CALL
            if j == n:  # the name may still grow
                return _MORE
            self._name, self._pos = text[i:j], j
        i = self._pos
        if text.startswith(ARGS, i):
            return self._start_json(i + len(ARGS))
        if text.startswith("{", i):
            return self._start_json(i)
        return _MORE if ARGS.startswith(text[i:]) else _NOT_A_CALL

    def _start_json(self, i: int) -> object:
        self._json, self._json_start, self._fed = JsonPrefix(), i, i
        return _STARTED

    def _calls(self, value: Any) -> list[tuple[str, str]] | None:
        if self._name is None:
            return calls_from_json(value, allow_list=True)
        if not isinstance(value, dict):
            return None
        return [(self._name, dumps_arguments(value))]


class MistralToolParser(RegionToolParser):
    name = "mistral"
    markers = (TOOL_CALLS,)

    def find_start(self, text: str, pos: int) -> int | None:
        i = text.find(TOOL_CALLS, pos)
        return None if i == -1 else i

    def open_region(self, text: str, start: int) -> Region:
        return MistralRegion(start)

    def new_call_id(self) -> str:
        return make_mistral_call_id()
