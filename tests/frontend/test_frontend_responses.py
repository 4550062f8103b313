"""The chunk formatters: the pre-encoded fast path gives the same bytes as the dict."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from dynamo.frontend.choices import ChoiceDelta
from dynamo.frontend.responses import ResponseBuilder, _Format, sse
from dynamo.llm.detokenizer import DetokenizeResult
from dynamo.llm.preprocessor import PreprocessedOutput
from dynamo.llm.protocols import PreprocessedRequest

TEXTS = ["hi", ' a "quoted" \\ path\n', "é 😀 \u2028 \x00 \x7f", "<|im_end|>"]
VOCAB = [*TEXTS, "end"]  # the stub tokenizer's: token id i is VOCAB[i]


class _StubDetokenizer:
    def add(self, ids: list[int]) -> DetokenizeResult:
        return DetokenizeResult("".join(VOCAB[i] for i in ids))

    def flush(self) -> str:
        return ""


class _StubPreprocessor:
    def make_detokenizer(self, _pre: PreprocessedOutput) -> _StubDetokenizer:
        return _StubDetokenizer()

    def token_text(self, token_id: int) -> str:
        return VOCAB[token_id]


def _builder(kind: str, include_usage: bool) -> ResponseBuilder:
    pre = PreprocessedOutput(PreprocessedRequest("r1", "m", [1, 2, 3]), prompt_len=3)
    return ResponseBuilder(kind, "chatcmpl-r1", 'model "x"/é', [pre], _StubPreprocessor(), include_usage)  # type: ignore[arg-type]


def _expected(f: _Format, choice: dict[str, Any], include_usage: bool) -> bytes:
    body: dict[str, Any] = {
        "id": f.id,
        "object": f.object,
        "created": f.created,
        "model": f.model,
        "choices": [choice],
    }
    if include_usage:
        body["usage"] = None
    return sse(body)


@pytest.mark.parametrize("include_usage", [False, True])
def test_chat_chunks_match_the_dict_encoding(include_usage: bool) -> None:
    f = _builder("chat", include_usage).format
    first = f.chunk(ChoiceDelta(0, "Hello"))
    role = {"role": "assistant", "content": "Hello"}
    assert first == _expected(
        f, {"index": 0, "delta": role, "logprobs": None, "finish_reason": None}, include_usage
    )
    for text in TEXTS:
        out = f.chunk(ChoiceDelta(0, text))
        choice = {"index": 0, "delta": {"content": text}, "logprobs": None, "finish_reason": None}
        assert out == _expected(f, choice, include_usage)
        event = msgspec.json.decode(out[len(b"data: ") : -2])
        assert event["choices"][0]["delta"]["content"] == text
    assert f.chunk(ChoiceDelta(0, "")) == b""


@pytest.mark.parametrize("include_usage", [False, True])
def test_completion_chunks_match_the_dict_encoding(include_usage: bool) -> None:
    f = _builder("completion", include_usage).format
    for text in TEXTS:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": None}
        assert f.chunk(ChoiceDelta(0, text)) == _expected(f, choice, include_usage)


def test_final_chunk_still_carries_finish_reason_and_usage() -> None:
    b = _builder("chat", True)
    b.stream(0, [{"token_ids": [0]}])
    out = b.stream(0, [{"token_ids": [VOCAB.index("end")], "finish_reason": "length"}])
    events = [msgspec.json.decode(e[len(b"data: ") :]) for e in out.split(b"\n\n") if e]
    assert events[0]["choices"][0] == {
        "index": 0,
        "delta": {"content": "end"},
        "logprobs": None,
        "finish_reason": "length",
    }
    assert events[1]["choices"] == [] and events[1]["usage"]["prompt_tokens"] == 3
