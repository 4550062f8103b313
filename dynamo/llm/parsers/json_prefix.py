"""Streaming JSON helper: is this growing text a JSON value yet, could it still become one, or never?

Journey: engine text -> frontend -> **tool-call parsers (here, as a helper)** -> response deltas.
A parser that meets ``{`` or ``[`` where a call may start feeds the text that follows to a
``JsonPrefix``, which answers after every piece, in time linear in the text:
- ``INCOMPLETE``: every character so far can still begin a JSON value (hold it back);
- ``COMPLETE`` at ``end``: the text up to ``end`` is exactly one JSON object or array;
- ``INVALID`` at ``end``: the character at ``end`` can never continue a JSON value (the text is
  prose after all).
Strict JSON as ``json.loads`` accepts it, minus ``NaN``/``Infinity`` (not JSON, and no client can
read them back). Only a top-level object or array counts: a number has no end one can see.
"""

from __future__ import annotations

import enum
import json
import re
from typing import Any

_WS = " \t\n\r"
_STRING_RUN = re.compile(r'[^"\\\x00-\x1f]*')
_HEX = frozenset("0123456789abcdefABCDEF")
_ESCAPES = frozenset('"\\/bfnrtu')
_LITERALS = {"t": "true", "f": "false", "n": "null"}


class JsonStatus(enum.Enum):
    INCOMPLETE = "incomplete"
    COMPLETE = "complete"
    INVALID = "invalid"


# Scanner states. After a value: AFTER; expectations: VALUE (any value), VALUE_OR_CLOSE (after
# "["), KEY (after "," in an object), KEY_OR_CLOSE (after "{"), COLON (after a key).
_VALUE, _VALUE_OR_CLOSE, _KEY, _KEY_OR_CLOSE, _COLON, _AFTER = range(6)
_STRING, _ESCAPE, _UNICODE, _NUMBER, _LITERAL = range(6, 11)
# Number sub-states (a small automaton for -?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?).
_N_SIGN, _N_ZERO, _N_INT, _N_DOT, _N_FRAC, _N_E, _N_ESIGN, _N_EXP = range(8)
_N_ACCEPT = frozenset((_N_ZERO, _N_INT, _N_FRAC, _N_EXP))


class JsonPrefix:
    """Incremental validator for one top-level JSON object or array (leading whitespace allowed).

    ``feed(more)`` appends text and returns the status; ``end`` is then the index (into all the
    text fed so far) just past the value (``COMPLETE``) or of the offending character
    (``INVALID``). Once complete or invalid, the answer no longer changes.
    """

    __slots__ = ("_key", "_left", "_literal", "_nstate", "_stack", "_state", "end", "status", "text")

    def __init__(self) -> None:
        self.text = ""
        self.status = JsonStatus.INCOMPLETE
        self.end = 0
        self._stack: list[str] = []  # "{" or "["
        self._state = _VALUE
        self._key = False  # the string being read is an object key
        self._left = 0  # hex digits left in a \u escape
        self._literal = ""  # rest of true/false/null still expected
        self._nstate = _N_SIGN

    def feed(self, more: str) -> JsonStatus:
        start = len(self.text)
        self.text += more
        if self.status is JsonStatus.INCOMPLETE:
            self._scan(start)
        return self.status

    def value(self) -> Any:
        """The parsed value once ``COMPLETE``."""
        return json.loads(self.text[: self.end])

    def _value_done(self, i: int) -> None:
        if self._stack:
            self._state = _AFTER
        else:
            self.status, self.end = JsonStatus.COMPLETE, i + 1

    def _fail(self, i: int) -> None:
        self.status, self.end = JsonStatus.INVALID, i

    def _scan(self, i: int) -> None:
        """Read from ``i`` to the end of the text (one flat automaton, one place)."""
        text, n = self.text, len(self.text)
        while i < n:
            state = self._state
            c = text[i]
            if state == _STRING:
                run = _STRING_RUN.match(text, i).end()  # type: ignore[union-attr]
                if run > i:
                    i = run
                    continue
                if c == '"':
                    if self._key:
                        self._state = _COLON
                    else:
                        self._value_done(i)
                elif c == "\\":
                    self._state = _ESCAPE
                else:  # a raw control character
                    return self._fail(i)
            elif state == _ESCAPE:
                if c not in _ESCAPES:
                    return self._fail(i)
                if c == "u":
                    self._state, self._left = _UNICODE, 4
                else:
                    self._state = _STRING
            elif state == _UNICODE:
                if c not in _HEX:
                    return self._fail(i)
                self._left -= 1
                if not self._left:
                    self._state = _STRING
            elif state == _NUMBER:
                if not self._number_char(c):
                    if self._nstate not in _N_ACCEPT:
                        return self._fail(i)
                    self._value_done(i - 1)
                    continue  # the character that ended the number is read again
            elif state == _LITERAL:
                if c != self._literal[0]:
                    return self._fail(i)
                self._literal = self._literal[1:]
                if not self._literal:
                    self._value_done(i)
            elif c in _WS:
                pass
            elif state in (_VALUE, _VALUE_OR_CLOSE):
                if state == _VALUE_OR_CLOSE and c == "]":
                    self._stack.pop()
                    self._value_done(i)
                elif not self._stack and c not in "{[":
                    return self._fail(i)
                elif not self._start_value(c):
                    return self._fail(i)
            elif state in (_KEY, _KEY_OR_CLOSE):
                if c == '"':
                    self._state, self._key = _STRING, True
                elif state == _KEY_OR_CLOSE and c == "}":
                    self._stack.pop()
                    self._value_done(i)
                else:
                    return self._fail(i)
            elif state == _COLON:
                if c != ":":
                    return self._fail(i)
                self._state = _VALUE
            else:  # _AFTER
                top = self._stack[-1]
                if c == ",":
                    self._state = _KEY if top == "{" else _VALUE
                elif c == ("}" if top == "{" else "]"):
                    self._stack.pop()
                    self._value_done(i)
                else:
                    return self._fail(i)
            if self.status is not JsonStatus.INCOMPLETE:
                return None
            i += 1
        return None

    def _start_value(self, c: str) -> bool:
        if c == "{":
            self._stack.append("{")
            self._state = _KEY_OR_CLOSE
        elif c == "[":
            self._stack.append("[")
            self._state = _VALUE_OR_CLOSE
        elif c == '"':
            self._state, self._key = _STRING, False
        elif c in _LITERALS:
            self._state, self._literal = _LITERAL, _LITERALS[c][1:]
        elif c == "-":
            self._state, self._nstate = _NUMBER, _N_SIGN
        elif c == "0":
            self._state, self._nstate = _NUMBER, _N_ZERO
        elif c.isdigit() and c.isascii():
            self._state, self._nstate = _NUMBER, _N_INT
        else:
            return False
        return True

    def _number_char(self, c: str) -> bool:
        """Advance the number automaton by ``c``; False if ``c`` cannot continue the number."""
        s = self._nstate
        digit = "0" <= c <= "9"
        if s == _N_SIGN:
            nxt = _N_ZERO if c == "0" else _N_INT if digit else None
        elif s == _N_ZERO:
            nxt = _N_DOT if c == "." else _N_E if c in "eE" else None
        elif s == _N_INT:
            nxt = _N_INT if digit else _N_DOT if c == "." else _N_E if c in "eE" else None
        elif s in (_N_DOT, _N_FRAC):
            nxt = _N_FRAC if digit else (_N_E if s == _N_FRAC and c in "eE" else None)
        elif s == _N_E:
            nxt = _N_EXP if digit else _N_ESIGN if c in "+-" else None
        else:  # _N_ESIGN, _N_EXP
            nxt = _N_EXP if digit else None
        if nxt is None:
            return False
        self._nstate = nxt
        return True
