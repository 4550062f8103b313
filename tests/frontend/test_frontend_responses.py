"""ResponseBuilder's streamed chunks: the pre-encoded fast path gives the same bytes as the dict."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from dynamo.frontend.responses import ResponseBuilder, sse
from dynamo.llm.preprocessor import PreprocessedOutput
from dynamo.llm.protocols import PreprocessedRequest

TEXTS = ["hi", ' a "quoted" \\ path\n', "é 😀 \u2028 \x00 \x7f", "<|im_end|>"]


class _StubPreprocessor:
    def make_detokenizer(self, _pre: PreprocessedOutput) -> None:
        return None


def _builder(kind: str, include_usage: bool) -> ResponseBuilder:
    pre = PreprocessedOutput(PreprocessedRequest("r1", "m", [1, 2, 3]), prompt_len=3)
    return ResponseBuilder(kind, "chatcmpl-r1", 'model "x"/é', pre, _StubPreprocessor(), include_usage)  # type: ignore[arg-type]


def _expected(b: ResponseBuilder, choice: dict[str, Any], include_usage: bool) -> bytes:
    body: dict[str, Any] = {
        "id": b.id,
        "object": b.object,
        "created": b.created,
        "model": b.model,
        "choices": [choice],
    }
    if include_usage:
        body["usage"] = None
    return sse(body)


@pytest.mark.parametrize("include_usage", [False, True])
def test_chat_chunks_match_the_dict_encoding(include_usage: bool) -> None:
    b = _builder("chat", include_usage)
    first = b.chunk("Hello", None)
    role = {"role": "assistant", "content": "Hello"}
    assert first == _expected(
        b, {"index": 0, "delta": role, "logprobs": None, "finish_reason": None}, include_usage
    )
    for text in TEXTS:
        out = b.chunk(text, None)
        choice = {"index": 0, "delta": {"content": text}, "logprobs": None, "finish_reason": None}
        assert out == _expected(b, choice, include_usage)
        event = msgspec.json.decode(out[len(b"data: ") : -2])
        assert event["choices"][0]["delta"]["content"] == text
    assert b.chunk("", None) == b""


@pytest.mark.parametrize("include_usage", [False, True])
def test_completion_chunks_match_the_dict_encoding(include_usage: bool) -> None:
    b = _builder("completion", include_usage)
    for text in TEXTS:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": None}
        assert b.chunk(text, None) == _expected(b, choice, include_usage)


def test_final_chunk_still_carries_finish_reason_and_usage() -> None:
    b = _builder("chat", True)
    b.chunk("a", None)
    b.finish_reason = "length"
    out = b.chunk("end", None)
    events = [msgspec.json.decode(e[len(b"data: ") :]) for e in out.split(b"\n\n") if e]
    assert events[0]["choices"][0] == {
        "index": 0,
        "delta": {"content": "end"},
        "logprobs": None,
        "finish_reason": "length",
    }
    assert events[1]["choices"] == [] and events[1]["usage"]["prompt_tokens"] == 3
