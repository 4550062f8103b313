"""Choice deltas -> OpenAI chat / completion responses (journey: engine -> choices -> **format** ->
HTTP).

A ``ResponseBuilder`` per request owns its choices (``dynamo.frontend.choices.ChoiceStream``, one
per ``PreprocessedOutput``) and a formatter for its endpoint: ``stream(i, batch)`` gives the SSE
bytes of choice ``i``'s next batch (the ``stream`` stage), ``collect(i, batch)`` accumulates it and
``full_response()`` is the body (the ``collect`` stage). Several choices (``n``, a list of prompts)
are one response: each chunk carries its choice's ``index``, the body lists them in index order,
usage counts each distinct prompt once (as vLLM does) and every generated token; the usage chunk
goes once, after the last choice finished.

Formatters are thin: ``ChatFormat`` and ``CompletionFormat`` each write a chunk from a delta and a
body from whole choices. A plain text delta (no logprobs, reasoning or tool calls, not the last)
is written from pre-encoded bytes: one string encode per event, byte for byte the dict's encoding.
No pydantic here: bodies are plain dicts encoded by msgspec, shaped as the response types of
``dynamo.llm.openai`` (which the OpenAPI document publishes and the tests check them against).
``error_response`` answers a ``RequestError``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
from starlette.responses import Response

from dynamo.frontend.choices import Batch, ChoiceDelta, ChoiceResult, ChoiceStream, LogprobEntry
from dynamo.llm.errors import RequestError
from dynamo.llm.parsers import ToolCallDelta
from dynamo.llm.preprocessor import PreprocessedOutput, Preprocessor

_json = msgspec.json.Encoder()
DONE = b"data: [DONE]\n\n"
MIN_LOGPROB = -9999.0  # what -inf is answered as (OpenAI's and vLLM's floor)


def sse(obj: Any) -> bytes:
    """One server-sent event carrying ``obj`` as JSON."""
    return b"data: " + _json.encode(obj) + b"\n\n"


def error_response(exc: RequestError) -> Response:
    """The HTTP answer to a refused or failed request: its status, the OpenAI error body, any
    ``Retry-After``."""
    return Response(
        exc.to_body(), status_code=exc.status, media_type="application/json", headers=exc.headers()
    )


# --- logprobs ---------------------------------------------------------------------------------


def _lp(value: float) -> float:
    return value if value > MIN_LOGPROB else MIN_LOGPROB


TokenText = Callable[[int, Sequence[int]], str]  # (token id, preceding tokens) -> its logprob text


def chat_logprobs_content(
    entries: Sequence[LogprobEntry], token_text: TokenText, context: Sequence[int] = ()
) -> list[dict[str, Any]]:
    """Logprob entries as chat's ``logprobs.content`` items (``token``, ``logprob``, ``bytes``,
    ``top_logprobs``); the Responses API's ``output_text.logprobs`` use the same items.
    ``context``: the tokens before the first entry (``ChoiceDelta.logprob_context``)."""
    content = []
    ctx = list(context)
    for token_id, logprob, *rest in entries:
        tok = token_text(token_id, ctx)
        top = rest[0] if rest and rest[0] else ()
        content.append(
            {
                "token": tok,
                "logprob": _lp(logprob) if logprob is not None else MIN_LOGPROB,
                "bytes": list(tok.encode()),
                "top_logprobs": [
                    {"token": (t := token_text(tid, ctx)), "logprob": _lp(lp), "bytes": list(t.encode())}
                    for tid, lp in top
                ],
            }
        )
        ctx.append(token_id)
    return content


def completion_logprobs(
    entries: Sequence[LogprobEntry], token_text: TokenText, offset: int = 0, context: Sequence[int] = ()
) -> tuple[dict[str, Any], int]:
    """Logprob entries as a completion's ``logprobs`` object, and the text offset after them.

    As vLLM lays it out: ``text_offset`` counts the tokens' text from ``offset``; ``top_logprobs``
    maps the token itself, then its alternatives, to their logprobs; a token without a logprob (the
    first of an echoed prompt) has ``null`` in both."""
    offsets: list[int] = []
    tokens: list[str] = []
    token_logprobs: list[float | None] = []
    top_logprobs: list[dict[str, float] | None] = []
    ctx = list(context)
    for token_id, logprob, *rest in entries:
        tok = token_text(token_id, ctx)
        ctx.append(token_id)
        offsets.append(offset)
        offset += len(tok)
        tokens.append(tok)
        if logprob is None:
            token_logprobs.append(None)
            top_logprobs.append(None)
            continue
        token_logprobs.append(_lp(logprob))
        top = {tok: _lp(logprob)}
        for tid, lp in rest[0] if rest and rest[0] else ():
            top.setdefault(token_text(tid, ctx[:-1]), _lp(lp))
        top_logprobs.append(top)
    body = {
        "text_offset": offsets,
        "token_logprobs": token_logprobs,
        "tokens": tokens,
        "top_logprobs": top_logprobs,
    }
    return body, offset


def tool_call_delta(call: ToolCallDelta) -> dict[str, Any]:
    """A streamed tool-call piece: the first of a call names it (id, type, function name)."""
    if call.id is None:
        return {"index": call.index, "function": {"arguments": call.arguments}}
    return {
        "index": call.index,
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments},
    }


# --- formatters -------------------------------------------------------------------------------


class _Format:
    """What chunks and bodies of one response share: id, object, created, model, usage."""

    object: str
    body_object: str
    text_field: bytes  # what opens a plain chunk's text, and what closes it
    text_close: bytes

    def __init__(self, response_id: str, model: str, token_text: TokenText, include_usage: bool) -> None:
        self.id = response_id
        self.model = model
        self.created = int(time.time())
        self.token_text = token_text
        self.include_usage = include_usage
        # The bytes around the text of a plain chunk, per choice index (see ``_text_head``).
        self._heads: dict[int, bytes] = {}
        head = _json.encode(
            {"id": self.id, "object": self.object, "created": self.created, "model": self.model}
        )
        self._head = b"data: " + head[:-1] + b',"choices":[{"index":'
        self._tail = self.text_close + b',"logprobs":null,"finish_reason":null}]'
        self._tail += b',"usage":null}\n\n' if include_usage else b"}\n\n"

    def _event(self, choice: dict[str, Any], usage: dict[str, Any] | None) -> bytes:
        body: dict[str, Any] = {
            "id": self.id,
            "object": self.object,
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        }
        if self.include_usage:
            body["usage"] = usage
        return sse(body)

    def usage_chunk(self, usage: dict[str, Any]) -> bytes:
        """The last event when ``stream_options.include_usage``: no choices, the usage."""
        return sse(
            {
                "id": self.id,
                "object": self.object,
                "created": self.created,
                "model": self.model,
                "choices": [],
                "usage": usage,
            }
        )

    def _body(self, choices: list[dict[str, Any]], usage: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": self.body_object,
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "usage": usage,
        }


class ChatFormat(_Format):
    """``/v1/chat/completions``: ``chat.completion.chunk`` events and the ``chat.completion`` body."""

    object = "chat.completion.chunk"
    body_object = "chat.completion"
    text_field = b',"delta":{"content":'
    text_close = b"}"

    def chunk(self, d: ChoiceDelta, usage: dict[str, Any] | None = None) -> bytes:
        """The event of one delta (b"" when it carries nothing); the role goes with a choice's first.
        ``usage``: the choice's so far (``continuous_usage_stats``). A call whose first piece
        already holds arguments goes out as two events, as OpenAI streams calls: the first names it
        (id, type, name, ``arguments: ""``), the next carries the arguments."""
        if d.tool_calls and any(c.id is not None and c.arguments for c in d.tool_calls):
            naming = [dataclasses.replace(c, arguments="") if c.id is not None else c for c in d.tool_calls]
            arguments = [
                ToolCallDelta(c.index, arguments=c.arguments)
                for c in d.tool_calls
                if c.id is not None and c.arguments
            ]
            first = msgspec.structs.replace(d, tool_calls=naming, finish_reason=None)
            rest = ChoiceDelta(d.index, "", "", arguments, None, d.finish_reason)
            return self.chunk(first) + self.chunk(rest, usage)
        head = self._heads.get(d.index)
        if head is not None and d.logprobs is None and d.finish_reason is None and usage is None:
            if not d.reasoning and not d.tool_calls:  # plain text: the pre-encoded bytes
                return head + _json.encode(d.text) + self._tail if d.text else b""
        elif not (d.text or d.reasoning or d.tool_calls or d.logprobs is not None or d.finish_reason):
            return b""
        delta: dict[str, Any] = {}
        if head is None:
            delta["role"] = "assistant"
            self._heads[d.index] = self._head + str(d.index).encode() + self.text_field
        if d.reasoning:
            delta["reasoning_content"] = delta["reasoning"] = d.reasoning
        if d.text or not (d.reasoning or d.tool_calls):
            delta["content"] = d.text
        if d.tool_calls:
            delta["tool_calls"] = [tool_call_delta(c) for c in d.tool_calls]
        logprobs = None
        if d.logprobs is not None:
            logprobs = {"content": chat_logprobs_content(d.logprobs, self.token_text, d.logprob_context)}
        return self._event(
            {"index": d.index, "delta": delta, "logprobs": logprobs, "finish_reason": d.finish_reason}, usage
        )

    def body(self, results: list[ChoiceResult], usage: dict[str, Any]) -> dict[str, Any]:
        choices = []
        for r in results:
            message: dict[str, Any] = {"role": "assistant", "content": r.content}
            if r.reasons:
                message["reasoning_content"] = message["reasoning"] = r.reasoning
            calls = r.tool_calls
            if calls:
                message["tool_calls"] = [
                    {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                    for c in calls
                ]
            choices.append(
                {
                    "index": r.index,
                    "message": message,
                    "logprobs": (
                        {"content": chat_logprobs_content(r.logprobs, self.token_text)}
                        if r.logprobs
                        else None
                    ),
                    "finish_reason": r.finish_reason or "stop",
                }
            )
        return self._body(choices, usage)


class CompletionFormat(_Format):
    """``/v1/completions``: ``text_completion`` events and body."""

    object = "text_completion"
    body_object = "text_completion"
    text_field = b',"text":'
    text_close = b""

    def __init__(self, response_id: str, model: str, token_text: TokenText, include_usage: bool) -> None:
        super().__init__(response_id, model, token_text, include_usage)
        self._offsets: dict[int, int] = {}  # per choice: text offset of its next logprob token

    def chunk(self, d: ChoiceDelta, usage: dict[str, Any] | None = None) -> bytes:
        """The event of one delta (b"" when it carries nothing); ``usage`` as in ``ChatFormat``."""
        if d.logprobs is None and d.finish_reason is None and usage is None:
            if not d.text:
                return b""
            head = self._heads.get(d.index)
            if head is None:
                head = self._heads[d.index] = self._head + str(d.index).encode() + self.text_field
            return head + _json.encode(d.text) + self._tail
        logprobs = None
        if d.logprobs is not None:
            logprobs, self._offsets[d.index] = completion_logprobs(
                d.logprobs, self.token_text, self._offsets.get(d.index, 0), d.logprob_context
            )
        return self._event(
            {"index": d.index, "text": d.text, "logprobs": logprobs, "finish_reason": d.finish_reason}, usage
        )

    def body(self, results: list[ChoiceResult], usage: dict[str, Any]) -> dict[str, Any]:
        choices = [
            {
                "index": r.index,
                "text": r.content or "",
                "logprobs": completion_logprobs(r.logprobs, self.token_text)[0] if r.logprobs else None,
                "finish_reason": r.finish_reason or "stop",
            }
            for r in results
        ]
        return self._body(choices, usage)


# --- one request ------------------------------------------------------------------------------


class ResponseBuilder:
    """One request's response from its choices' engine output batches (see the module docstring)."""

    def __init__(
        self,
        kind: str,  # "chat" | "completion"
        response_id: str,
        model: str,
        choices: Sequence[PreprocessedOutput],
        preprocessor: Preprocessor,
        include_usage: bool = False,
        continuous_usage: bool = False,
    ) -> None:
        """``include_usage``: a streamed response ends with a usage event; ``continuous_usage``
        (vLLM's ``stream_options.continuous_usage_stats``, with ``include_usage``): every event also
        carries its choice's usage so far. ``RequestError(500)`` when a choice needs a parser this
        frontend does not have."""
        self.kind = kind
        self.choices = [ChoiceStream(pre, preprocessor) for pre in choices]
        fmt = ChatFormat if kind == "chat" else CompletionFormat
        self.format = fmt(response_id, model, preprocessor.token_text, include_usage)
        self.include_usage = include_usage
        self.continuous_usage = include_usage and continuous_usage
        self.results: list[ChoiceResult] | None = None  # made by the first ``collect``
        self._open = len(self.choices)  # choices not finished yet
        # Choices of one prompt share its token list (n > 1): usage counts each prompt once.
        self._prompts: dict[int, list[ChoiceStream]] = {}
        for c in self.choices:
            self._prompts.setdefault(c.pre.prompt_index, []).append(c)
        self.prompt_tokens = sum(group[0].prompt_tokens for group in self._prompts.values())

    @property
    def id(self) -> str:
        return self.format.id

    @property
    def done(self) -> bool:
        """Every choice finished."""
        return self._open == 0

    @property
    def completion_tokens(self) -> int:
        return sum(c.completion_tokens for c in self.choices)

    @property
    def cached_tokens(self) -> int | None:
        """Prompt tokens the engines served from their prefix caches, over all choices."""
        reported = [c.cached_tokens for c in self.choices if c.cached_tokens is not None]
        return sum(reported) if reported else None

    def usage(self) -> dict[str, Any]:
        completion = self.completion_tokens
        usage: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
        }
        # Cached prompt tokens, per prompt as its tokens are: what every choice of it found cached.
        cached = [[c.cached_tokens for c in g if c.cached_tokens is not None] for g in self._prompts.values()]
        if any(cached):
            usage["prompt_tokens_details"] = {"cached_tokens": sum(min(g) for g in cached if g)}
        return usage

    # --- streaming (``stream`` stage) ------------------------------------------------------
    def stream(self, i: int, batch: Batch) -> bytes:
        """The SSE event(s) of choice ``i``'s next batch (and, once all finished, the usage)."""
        choice = self.choices[i]
        delta = choice.step(batch)
        out = self.format.chunk(delta, _usage(choice) if self.continuous_usage else None)
        if delta.finish_reason is not None:
            out += self._finished()
        return out

    def stream_end(self, i: int) -> bytes:
        """Choice ``i``'s stream ended without a finish reason: its last event."""
        choice = self.choices[i]
        delta = choice.end()
        return self.format.chunk(delta, _usage(choice) if self.continuous_usage else None) + self._finished()

    def _finished(self) -> bytes:
        """A choice finished: the usage event once it was the last."""
        self._open -= 1
        if self._open == 0 and self.include_usage:
            return self.format.usage_chunk(self.usage())
        return b""

    # --- non-streaming (``collect`` stage) -------------------------------------------------
    def collect(self, i: int, batch: Batch) -> None:
        """Accumulate choice ``i``'s next batch."""
        self._add(i, self.choices[i].step(batch))

    def collect_end(self, i: int) -> None:
        """Choice ``i``'s stream ended without a finish reason."""
        self._add(i, self.choices[i].end())

    def _add(self, i: int, delta: ChoiceDelta) -> None:
        if self.results is None:
            self.results = [ChoiceResult(c) for c in self.choices]
        self.results[i].add(delta)
        if delta.finish_reason is not None:
            self._open -= 1

    def full_response(self) -> dict[str, Any]:
        """The response body: every choice in index order, the usage."""
        if self.results is None:
            self.results = [ChoiceResult(c) for c in self.choices]
        results = sorted(self.results, key=lambda r: r.index)
        return self.format.body(results, self.usage())


def _usage(choice: ChoiceStream) -> dict[str, Any]:
    """One choice's usage so far (its prompt, its tokens), as vLLM's continuous usage stats."""
    return {
        "prompt_tokens": choice.prompt_tokens,
        "completion_tokens": choice.completion_tokens,
        "total_tokens": choice.prompt_tokens + choice.completion_tokens,
    }
