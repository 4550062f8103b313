"""Parser interfaces and shared machinery: model text -> tool calls / reasoning, whole or streamed.

Journey: HTTP -> preprocess -> route -> request plane -> engine -> detokenized text back ->
**parsers (here)** -> response shaping -> client. The frontend makes one parser per choice (they
keep streaming state); nothing here knows about an engine, a tokenizer or HTTP.

Contract shared by every parser, streamed or not:
- ``parse(text)`` and ``feed(piece)``... + ``finish()`` agree whatever the pieces: the content
  joined equals ``parse``'s (``None`` counts as ""), the calls have the same names in the same
  order and each call's joined argument fragments are the same JSON.
- Text is held back only while it may still become markup (a prefix of ``<tool_call>``, an
  unfinished call); what is certainly content is released at once.
- A call is released whole, as one ``ToolCallDelta`` with id, name and arguments, once its markup
  is complete and valid. Markup that turns out malformed (bad JSON, no name, cut off by the end of
  the output) stays content, verbatim; nothing here raises on model output.
- Whitespace that only separates calls from each other or from the ends of the output is not
  content (``"\\n"`` between two ``<tool_call>`` blocks is not a message).
"""

from __future__ import annotations

import abc
import json
import random
import string
from dataclasses import dataclass
from typing import Any, ClassVar

_ALNUM = string.ascii_letters + string.digits
_rng = random.SystemRandom()


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One complete call."""

    id: str
    name: str
    arguments: str  # JSON text of the arguments


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A streamed piece of call number ``index`` (0-based, in order of appearance)."""

    index: int
    id: str | None = None  # set on the call's first delta only, together with name
    name: str | None = None
    arguments: str = ""  # a fragment; all fragments of one call joined == ToolCall.arguments


def make_call_id() -> str:
    """An OpenAI-style call id: ``call_`` and 24 random letters and digits."""
    return "call_" + "".join(_rng.choices(_ALNUM, k=24))


def make_mistral_call_id() -> str:
    """Mistral's templates accept only 9 letters and digits as a call id."""
    return "".join(_rng.choices(_ALNUM, k=9))


def partial_marker_len(text: str, markers: tuple[str, ...], start: int = 0) -> int:
    """Length of the longest end of ``text[start:]`` that is a proper prefix of one of ``markers``."""
    best = 0
    for marker in markers:
        for k in range(min(len(marker) - 1, len(text) - start), best, -1):
            if text.endswith(marker[:k]):
                best = k
                break
    return best


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def loads_strict(text: str) -> Any:
    """``json.loads`` without ``NaN``/``Infinity``; raises ``ValueError`` on anything else."""
    return json.loads(text, parse_constant=_reject_constant)


def dumps_arguments(value: Any) -> str:
    """The arguments' JSON text, as vLLM writes it (``ensure_ascii=False``).

    Arguments the model already serialized (a string holding a JSON object) are decoded once
    rather than encoded twice; a missing (``null``) argument object is ``{}``.
    """
    if value is None:
        value = {}
    elif isinstance(value, str):
        try:
            decoded = loads_strict(value)
        except ValueError:
            decoded = None
        if isinstance(decoded, dict):
            value = decoded
    return json.dumps(value, ensure_ascii=False, allow_nan=False)


def call_from_json(obj: Any) -> tuple[str, str] | None:
    """``(name, arguments JSON)`` from ``{"name": ..., "arguments"|"parameters": ...}``, else None."""
    if not isinstance(obj, dict):
        return None
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        return None
    for key in ("arguments", "parameters"):
        if key in obj:
            try:
                return name, dumps_arguments(obj[key])
            except ValueError:
                return None
    return None


def calls_from_json(value: Any, *, allow_list: bool = True) -> list[tuple[str, str]] | None:
    """Calls from one call object or (``allow_list``) a non-empty list of them; None if any is not."""
    items = value if allow_list and isinstance(value, list) else [value]
    calls = [call_from_json(item) for item in items]
    if not calls or any(call is None for call in calls):
        return None
    return calls  # type: ignore[return-value]


class ToolCallParser(abc.ABC):
    """Turns model text into content and tool calls; one instance per choice (streaming state)."""

    name: ClassVar[str]

    def __init__(self, tools: list[dict] | None = None) -> None:
        self.tools = tools

    def parse(self, text: str) -> tuple[str | None, list[ToolCall]]:
        """The whole output at once: (content outside the calls or None, the calls)."""
        fresh = type(self)(self.tools)
        content, deltas = fresh.feed(text)
        tail, more = fresh.finish()
        content += tail
        calls: list[ToolCall] = []
        for delta in deltas + more:
            if delta.id is not None:
                calls.append(ToolCall(id=delta.id, name=delta.name or "", arguments=delta.arguments))
            else:
                last = calls[delta.index]
                calls[delta.index] = ToolCall(last.id, last.name, last.arguments + delta.arguments)
        return content or None, calls

    @abc.abstractmethod
    def feed(self, delta: str) -> tuple[str, list[ToolCallDelta]]:
        """The next piece of output: (content to emit now, call deltas to emit now)."""

    @abc.abstractmethod
    def finish(self) -> tuple[str, list[ToolCallDelta]]:
        """End of output: flush whatever was held back."""


class ReasoningParser(abc.ABC):
    """Splits model text into reasoning and content; one instance per choice (streaming state)."""

    name: ClassVar[str]

    def __init__(self, thinking: bool = True) -> None:
        # False when the request turned thinking off (``chat_template_kwargs.enable_thinking``,
        # which vLLM's qwen3 parser reads too): the output is then all content.
        self.thinking = thinking

    def parse(self, text: str) -> tuple[str | None, str | None]:
        """The whole output at once: (reasoning_content or None, content or None)."""
        fresh = type(self)(self.thinking)
        reasoning, content = fresh.feed(text)
        more_reasoning, more_content = fresh.finish()
        return (reasoning + more_reasoning) or None, (content + more_content) or None

    @abc.abstractmethod
    def feed(self, delta: str) -> tuple[str, str]:
        """The next piece of output: (reasoning to emit now, content to emit now)."""

    @abc.abstractmethod
    def finish(self) -> tuple[str, str]:
        """End of output: flush whatever was held back."""


class Region(abc.ABC):
    """One stretch of output that may be a call (or several), decided as more text arrives."""

    @abc.abstractmethod
    def advance(self, text: str, final: bool) -> tuple[int, list[tuple[str, str]]] | None:
        """None while undecided (never when ``final``); else (end index, calls) — no calls means
        ``text[start:end]`` is content after all. ``end`` is past the region's start."""


class RegionToolParser(ToolCallParser):
    """Drives ``Region``s over the output; subclasses say where regions start and how they read.

    A subclass gives ``markers`` (strings that may open a region; partial ones at the end of the
    text are held back), ``find_start`` and ``open_region``. ``separators`` are characters that,
    besides whitespace, are dropped between calls (llama's ``;``).
    """

    markers: ClassVar[tuple[str, ...]] = ()
    separators: ClassVar[str] = ""

    def __init__(self, tools: list[dict] | None = None) -> None:
        super().__init__(tools)
        self._text = ""
        self._pos = 0  # text before this index has been decided
        self._region: Region | None = None
        self._calls = 0
        self._pending = ""  # ignorable text held until we know whether a call follows
        self._segment_has_text = False  # content since the last call is more than whitespace
        self._after_call = False

    @abc.abstractmethod
    def find_start(self, text: str, pos: int) -> int | None:
        """Index of the first place at or after ``pos`` where a region may start."""

    @abc.abstractmethod
    def open_region(self, text: str, start: int) -> Region:
        """The region starting at ``start`` (where ``find_start`` pointed)."""

    def new_call_id(self) -> str:
        return make_call_id()

    def feed(self, delta: str) -> tuple[str, list[ToolCallDelta]]:
        self._text += delta
        return self._run(final=False)

    def finish(self) -> tuple[str, list[ToolCallDelta]]:
        content, calls = self._run(final=True)
        if self._pending and not self._after_call and not self._segment_has_text:
            content += self._pending  # the whole output is whitespace: that is its content
        self._pending = ""
        return content, calls

    def _run(self, final: bool) -> tuple[str, list[ToolCallDelta]]:
        out: list[str] = []
        calls: list[ToolCallDelta] = []
        text = self._text
        while True:
            if self._region is None:
                start = self.find_start(text, self._pos)
                if start is None:
                    end = (
                        len(text) if final else len(text) - partial_marker_len(text, self.markers, self._pos)
                    )
                    self._content(text[self._pos : end], out)
                    self._pos = end
                    break
                self._content(text[self._pos : start], out)
                self._pos = start
                self._region = self.open_region(text, start)
            decided = self._region.advance(text, final)
            if decided is None:
                break
            end, found = decided
            if found:
                for name, arguments in found:
                    calls.append(ToolCallDelta(self._calls, self.new_call_id(), name, arguments))
                    self._calls += 1
                self._pending, self._segment_has_text, self._after_call = "", False, True
            else:
                self._content(text[self._pos : end], out)
            self._pos = end
            self._region = None
        if self._region is None and self._pos > 4096:  # drop decided text; regions index into it
            self._text, self._pos = self._text[self._pos :], 0
        return "".join(out), calls

    def _content(self, piece: str, out: list[str]) -> None:
        if not piece:
            return
        if self._segment_has_text:
            out.append(piece)
            return
        ignorable = self.separators if self._after_call else ""
        if all(c.isspace() or c in ignorable for c in piece):
            self._pending += piece
            return
        out.append(self._pending + piece)
        self._pending, self._segment_has_text = "", True
