"""``pythonic`` tool calls: a Python list of calls with keyword arguments,
``[get_weather(city='San Francisco', metric='celsius'), get_time()]`` (Llama 3.2, Llama 4, ToolACE).

Journey: engine text -> frontend -> **tool-call parser (here)** -> response deltas.
A ``[`` followed by a (dotted) name and ``(`` opens a candidate; it is held until its brackets
balance (strings are skipped), then read with ``ast``: a list of calls whose arguments are all
keyword literals (str, numbers, bool/None or JSON's true/false/null, dicts, lists, tuples, sets)
is a list of calls; anything else, or a list cut off by the end of the output, is content.
Unlike vLLM, the list may sit inside text (which stays content), and a list with one bad call is
content as a whole rather than losing the bad call silently.
"""

from __future__ import annotations

import ast
import json
from typing import Any

from .base import Region, RegionToolParser

_JSON_NAMES = {"true": True, "false": False, "null": None}
_OPENERS = {"(": ")", "[": "]", "{": "}"}
_LINE_BREAKS = {"\n": "\\n", "\r": "\\r"}


def _literal(node: ast.expr) -> Any:
    """A JSON value from an argument's AST; ``ValueError`` if it is not a literal."""
    if isinstance(node, ast.Constant) and (node.value is None or isinstance(node.value, str | int | float)):
        return node.value
    if isinstance(node, ast.Name) and node.id in _JSON_NAMES:
        return _JSON_NAMES[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        value = _literal(node.operand)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.List | ast.Tuple | ast.Set):
        return [_literal(e) for e in node.elts]
    if isinstance(node, ast.Dict) and all(isinstance(k, ast.Constant) for k in node.keys):
        return {k.value: _literal(v) for k, v in zip(node.keys, node.values, strict=True)}  # type: ignore[union-attr]
    raise ValueError(f"not a literal: {ast.dump(node)}")


def _dotted_name(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted_name(node.value)}.{node.attr}"
    raise ValueError("not a function name")


def calls_in_list(source: str) -> list[tuple[str, str]] | None:
    """The calls in ``[f(a=1), g()]``, or None if ``source`` is anything else."""
    try:
        tree = ast.parse(source, mode="eval")
        if not isinstance(tree.body, ast.List) or not tree.body.elts:
            return None
        calls = []
        for call in tree.body.elts:
            if not isinstance(call, ast.Call) or call.args or any(k.arg is None for k in call.keywords):
                return None
            arguments = {k.arg: _literal(k.value) for k in call.keywords}
            calls.append(
                (_dotted_name(call.func), json.dumps(arguments, ensure_ascii=False, allow_nan=False))
            )
        return calls
    except (SyntaxError, ValueError, TypeError, RecursionError, MemoryError):
        return None


class ListRegion(Region):
    """A ``[name(`` ... ``]`` candidate: checks the head, then matches brackets outside strings."""

    __slots__ = ("_head_ok", "_i", "_quote", "_stack", "_start")

    def __init__(self, start: int) -> None:
        self._start = start
        self._i = start + 1  # next character to read
        self._head_ok = False
        self._stack = ["]"]  # closers expected, innermost last
        self._quote = ""  # the open string's quote ('  "  \'\'\'  """), or ""

    def advance(self, text: str, final: bool) -> tuple[int, list[tuple[str, str]]] | None:
        if not self._head_ok:
            head = self._read_head(text)
            if head is False or (head is None and final):
                return self._start + 1, []
            if head is None:
                return None
        end = self._match(text)
        if end is not None:
            source = _escape_newlines_in_strings(text[self._start : end])
            return end, calls_in_list(source) or []
        return (len(text), []) if final else None

    def _read_head(self, text: str) -> bool | None:
        """``[`` + spaces + dotted name + spaces + ``(``: True, False (not a call), None (need more)."""
        n, i = len(text), self._start + 1
        while i < n and text[i].isspace():
            i += 1
        if i < n and not (text[i].isidentifier()):
            return False
        j = i
        while j < n and (text[j].isalnum() or text[j] in "_."):
            j += 1
        while j < n and text[j].isspace():
            j += 1
        if j == n:
            return None
        if text[j] != "(" or j == i:
            return False
        self._head_ok = True
        return True

    def _match(self, text: str) -> int | None:
        """Index just past the ``]`` closing the list, or None if not seen yet."""
        i, n = self._i, len(text)
        while i < n:
            c = text[i]
            if self._quote:
                if c == "\\":
                    if i + 1 >= n:
                        break  # the escaped character has not arrived
                    i += 2
                    continue
                q = self._quote
                if text.startswith(q, i):
                    self._quote = ""
                    i += len(q)
                    continue
                if len(q) == 3 and len(text) - i < 3 and q.startswith(text[i:]):
                    break  # may be a closing triple quote still arriving
            elif c in "'\"":
                if n - i < 3:
                    break  # a triple quote may be arriving
                self._quote = c * 3 if text.startswith(c * 3, i) else c
                i += len(self._quote)
                continue
            elif c in _OPENERS:
                self._stack.append(_OPENERS[c])
            elif c in ")]}":
                if c != self._stack.pop():
                    self._i = i + 1
                    return i + 1  # mismatched: ast will reject it; the region ends here
                if not self._stack:
                    self._i = i + 1
                    return i + 1
            i += 1
        self._i = i
        return None


def _escape_newlines_in_strings(source: str) -> str:
    """Raw line breaks inside one-line string literals, which models often write, as ``\\n``."""
    out: list[str] = []
    quote = ""
    i, n = 0, len(source)
    while i < n:
        c = source[i]
        if quote:
            if c == "\\" and i + 1 < n:
                out.append(source[i : i + 2])
                i += 2
                continue
            if source.startswith(quote, i):
                out.append(quote)
                i += len(quote)
                quote = ""
                continue
            out.append(_LINE_BREAKS.get(c, c) if len(quote) == 1 else c)
        elif c in "'\"":
            quote = c * 3 if source.startswith(c * 3, i) else c
            out.append(quote)
            i += len(quote)
            continue
        else:
            out.append(c)
        i += 1
    return "".join(out)


class PythonicToolParser(RegionToolParser):
    name = "pythonic"

    def find_start(self, text: str, pos: int) -> int | None:
        i = text.find("[", pos)
        return None if i == -1 else i

    def open_region(self, text: str, start: int) -> Region:
        return ListRegion(start)
