"""Tool calls of a constrained output: ``tool_choice`` ``"required"`` or a named function.

Journey: engine (decoding constrained by the tools' JSON schema) -> detokenize -> **here** ->
choice deltas (``dynamo.frontend.choices``) -> response. The engine already forced the shape, so
these read JSON rather than a model's markup:

- ``RequiredCalls``: the output is a JSON array of ``{"name": ..., "parameters": {...}}``; each
  element becomes a call, announced (id + name) as soon as its name is complete and its
  ``parameters`` value has started, its arguments streamed as the value grows (as vLLM streams
  them). Joined, a call's arguments are the ``parameters`` value's JSON text.
- ``NamedCall``: the whole output is the arguments object of one named function; it is streamed
  as that call's arguments, announced with the first non-blank text.

Both have the tool-call parsers' ``feed`` / ``finish`` shape (``dynamo.llm.parsers``), so a choice
treats every tool mode alike. Neither ever yields content: text outside the calls (whitespace
around the array) is dropped, and ``content`` is ``""`` in the response, as vLLM answers.
"""

from __future__ import annotations

import json

from dynamo.llm.parsers import ToolCallDelta, make_call_id

# What the scanner expects next inside one element object of the array.
_KEY, _COLON, _VALUE, _IN_STRING, _IN_CONTAINER, _IN_SCALAR, _AFTER = range(7)


class _Call:
    """Where one array element's name and ``parameters`` value sit in the output text."""

    __slots__ = ("args_end", "args_start", "id", "name", "sent")

    def __init__(self) -> None:
        self.name: str | None = None
        self.args_start: int | None = None
        self.args_end: int | None = None  # None while the value is still being generated
        self.id: str | None = None  # set once announced
        self.sent = 0  # text offset up to which the arguments were emitted


class RequiredCalls:
    """``tool_choice: "required"``: a JSON array of calls, streamed call by call."""

    def __init__(self) -> None:
        self._text = ""
        self._pos = 0  # characters scanned
        self._depth = 0  # nesting of {} and []; element objects sit at depth 2
        self._in_string = False
        self._escaped = False
        self._string_start = 0
        self._over = False  # the array closed, or the output is not an array
        self._expect = _KEY
        self._key: str | None = None
        self._value_start = 0
        self._current: _Call | None = None
        self._calls: list[_Call] = []

    def feed(self, delta: str) -> tuple[str, list[ToolCallDelta]]:
        self._text += delta
        self._scan()
        return "", self._emit()

    def finish(self) -> tuple[str, list[ToolCallDelta]]:
        return "", self._emit()

    def _emit(self) -> list[ToolCallDelta]:
        out: list[ToolCallDelta] = []
        text = self._text
        for index, call in enumerate(self._calls):
            if call.name is None or call.args_start is None:
                break  # elements come in order: nothing later is ready either
            end = call.args_end if call.args_end is not None else len(text)
            if call.id is None:
                call.id = make_call_id()
                out.append(ToolCallDelta(index, call.id, call.name, text[call.args_start : end]))
            elif end > call.sent:
                out.append(ToolCallDelta(index, arguments=text[call.sent : end]))
            call.sent = end
        return out

    def _scan(self) -> None:
        text = self._text
        for i in range(self._pos, len(text)):
            if self._over:
                break
            self._step(text, i, text[i])
        self._pos = len(text)

    def _step(self, text: str, i: int, ch: str) -> None:
        call = self._current
        if self._in_string:
            if self._escaped:
                self._escaped = False
            elif ch == "\\":
                self._escaped = True
            elif ch == '"':
                self._in_string = False
                if self._depth == 2 and call is not None:
                    if self._expect == _KEY:
                        self._key = text[self._string_start + 1 : i]
                        self._expect = _COLON
                    elif self._expect == _IN_STRING:
                        self._end_value(text, i + 1)
            return
        if ch == '"':
            self._in_string = True
            self._string_start = i
            if self._depth == 2 and call is not None and self._expect == _VALUE:
                self._start_value(i, _IN_STRING)
            return
        if ch in "{[":
            if (self._depth == 0 and ch != "[") or (self._depth == 1 and ch != "{"):
                self._over = True  # not an array of objects: no (more) calls
                return
            if self._depth == 1:
                self._current = _Call()
                self._calls.append(self._current)
                self._expect, self._key = _KEY, None
            elif self._depth == 2 and call is not None and self._expect == _VALUE:
                self._start_value(i, _IN_CONTAINER)
            self._depth += 1
            return
        if ch in "}]":
            if self._depth == 2 and call is not None and self._expect == _IN_SCALAR:
                self._end_value(text, i)
            self._depth -= 1
            if self._depth == 2 and call is not None and self._expect == _IN_CONTAINER:
                self._end_value(text, i + 1)
            elif self._depth == 1:
                self._current = None
            elif self._depth <= 0:
                self._over = True
            return
        if self._depth != 2 or call is None:
            if self._depth == 0 and not ch.isspace():
                self._over = True
            return
        if ch == ":":
            if self._expect == _COLON:
                self._expect = _VALUE
        elif ch == ",":
            if self._expect == _IN_SCALAR:
                self._end_value(text, i)
            self._expect, self._key = _KEY, None
        elif ch.isspace():
            if self._expect == _IN_SCALAR:
                self._end_value(text, i)
        elif self._expect == _VALUE:
            self._start_value(i, _IN_SCALAR)

    def _start_value(self, pos: int, state: int) -> None:
        assert self._current is not None
        self._value_start = pos
        if self._key == "parameters":
            self._current.args_start = pos
        self._expect = state

    def _end_value(self, text: str, pos: int) -> None:
        call = self._current
        assert call is not None
        if self._key == "parameters":
            call.args_end = pos
        elif self._key == "name" and self._expect == _IN_STRING:
            try:
                name = json.loads(text[self._value_start : pos])
            except ValueError:
                name = None
            call.name = name if isinstance(name, str) and name else None
        self._expect = _AFTER


class NamedCall:
    """A named ``tool_choice``: the output is the arguments of ``name``, streamed as they come."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._announced = False
        self._held = ""  # leading blank text, until the arguments start

    def feed(self, delta: str) -> tuple[str, list[ToolCallDelta]]:
        if self._announced:
            return "", [ToolCallDelta(0, arguments=delta)] if delta else []
        self._held += delta
        if not self._held.strip():
            return "", []
        self._announced = True
        arguments, self._held = self._held, ""
        return "", [ToolCallDelta(0, make_call_id(), self.name, arguments)]

    def finish(self) -> tuple[str, list[ToolCallDelta]]:
        return "", []  # blank output: no call (as vLLM answers it)
