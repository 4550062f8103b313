"""``default`` tool calls: whatever common shape the model wrote — ``<tool_call>`` blocks (hermes),
``<|python_tag|>`` + JSON, or a bare JSON call object or list of them.

Journey: engine text -> frontend -> **tool-call parser (here)** -> response deltas.
The permissive fallback for a model whose format has no parser of its own. A bare ``{`` or ``[``
is held while it can still become JSON; a complete ``{"name": ..., "arguments"|"parameters": ...}``
object, or a non-empty list of only such objects, is a call (calls), anything else stays content.
Several calls may follow each other, separated by whitespace or ``;``.
"""

from __future__ import annotations

from typing import Any

from .base import Region, RegionToolParser, calls_from_json
from .hermes import OPEN, TagRegion
from .llama3_json import PYTHON_TAG, JsonRegion


def object_or_list_calls(value: Any) -> list[tuple[str, str]] | None:
    return calls_from_json(value, allow_list=True)


class DefaultToolParser(RegionToolParser):
    name = "default"
    markers = (OPEN, PYTHON_TAG)
    separators = ";"

    def find_start(self, text: str, pos: int) -> int | None:
        hits = [i for i in (text.find(m, pos) for m in (OPEN, PYTHON_TAG, "{", "[")) if i != -1]
        return min(hits) if hits else None

    def open_region(self, text: str, start: int) -> Region:
        if text.startswith(OPEN, start):
            return TagRegion(start)
        prefix = PYTHON_TAG if text.startswith(PYTHON_TAG, start) else ""
        return JsonRegion(start, prefix, object_or_list_calls)
