"""Feed parsers a text in many splits and check streaming agrees with ``parse`` (shared by the tests)."""

from __future__ import annotations

import itertools
import json
import random
import re
from collections.abc import Iterator

from dynamo.llm.parsers import ReasoningParser, ToolCall, ToolCallParser, reasoning_parser, tool_call_parser

OPENAI_ID = re.compile(r"call_[A-Za-z0-9]{24}")
MISTRAL_ID = re.compile(r"[A-Za-z0-9]{9}")


def splits(text: str, seed: int = 0) -> Iterator[list[str]]:
    """Every two-piece split, one piece per character, and a few random multi-piece splits."""
    for i in range(len(text) + 1):
        yield [text[:i], text[i:]]
    yield list(text)
    rng = random.Random(f"{seed}:{text}")
    for _ in range(4):
        cuts = (
            sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(1, 8))))
            if len(text) > 1
            else []
        )
        bounds = [0, *cuts, len(text)]
        yield [text[a:b] for a, b in itertools.pairwise(bounds)]


def stream_tools(parser: ToolCallParser, pieces: list[str]) -> tuple[str, list[ToolCall]]:
    """Content joined and calls assembled from the deltas, checking the delta protocol."""
    content: list[str] = []
    calls: list[ToolCall] = []
    for result in [*(parser.feed(p) for p in pieces), parser.finish()]:
        text, deltas = result
        content.append(text)
        for d in deltas:
            if d.id is not None:
                assert d.index == len(calls), f"call {d.index} started out of order"
                assert d.name, "a call's first delta carries its name"
                calls.append(ToolCall(d.id, d.name, d.arguments))
            else:
                assert d.name is None and 0 <= d.index < len(calls), f"stray delta {d}"
                prev = calls[d.index]
                calls[d.index] = ToolCall(prev.id, prev.name, prev.arguments + d.arguments)
    return "".join(content), calls


def check_tool_stream(
    name: str, text: str, tools: list[dict] | None = None
) -> tuple[str | None, list[ToolCall]]:
    """``parse(text)``, after checking that every split of ``text`` streams to the same result."""
    content, calls = tool_call_parser(name, tools).parse(text)
    id_shape = MISTRAL_ID if name == "mistral" else OPENAI_ID
    for call in calls:
        assert id_shape.fullmatch(call.id), call.id
        json.loads(call.arguments)
    for pieces in splits(text):
        got_content, got_calls = stream_tools(tool_call_parser(name, tools), pieces)
        where = f"{name} split {[len(p) for p in pieces]}"
        assert got_content == (content or ""), where
        assert [c.name for c in got_calls] == [c.name for c in calls], where
        assert [json.loads(c.arguments) for c in got_calls] == [json.loads(c.arguments) for c in calls], where
        assert all(id_shape.fullmatch(c.id) for c in got_calls), where
        assert len({c.id for c in got_calls}) == len(got_calls), where
    return content, calls


def stream_reasoning(parser: ReasoningParser, pieces: list[str]) -> tuple[str, str]:
    reasoning, content = [], []
    for r, c in [*(parser.feed(p) for p in pieces), parser.finish()]:
        reasoning.append(r)
        content.append(c)
    return "".join(reasoning), "".join(content)


def check_reasoning_stream(name: str, text: str) -> tuple[str | None, str | None]:
    """``parse(text)``, after checking that every split of ``text`` streams to the same split."""
    reasoning, content = reasoning_parser(name).parse(text)
    for pieces in splits(text):
        got = stream_reasoning(reasoning_parser(name), pieces)
        assert got == (reasoning or "", content or ""), f"{name} split {[len(p) for p in pieces]}"
    return reasoning, content
