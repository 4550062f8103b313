"""Engine outputs -> OpenAI response bodies (journey: engine -> **detokenize + format** -> HTTP).

A ``ResponseBuilder`` per request turns batches of engine outputs into chat or completion chunks
(the ``stream`` stage) or accumulates the whole response (the ``collect`` stage). Several tokens
that arrive together become one SSE event, one write. ``error_response`` answers a ``RequestError``.
No pydantic here: bodies are plain dicts encoded by msgspec, shaped as the response types of
``dynamo.llm.openai`` (which the OpenAPI document publishes and the tests check them against).
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
from starlette.responses import Response

from dynamo.llm.detokenizer import Detokenizer
from dynamo.llm.errors import RequestError
from dynamo.llm.preprocessor import PreprocessedOutput, Preprocessor

_json = msgspec.json.Encoder()
DONE = b"data: [DONE]\n\n"


def sse(obj: Any) -> bytes:
    """One server-sent event carrying ``obj`` as JSON."""
    return b"data: " + _json.encode(obj) + b"\n\n"


def error_response(exc: RequestError) -> Response:
    """The HTTP answer to a refused or failed request: its status, the OpenAI error body, any
    ``Retry-After``."""
    return Response(
        exc.to_body(), status_code=exc.status, media_type="application/json", headers=exc.headers()
    )


class ResponseBuilder:
    """Builds one request's OpenAI response from engine output batches."""

    def __init__(
        self,
        kind: str,  # "chat" | "completion"
        response_id: str,
        model: str,
        pre: PreprocessedOutput,
        preprocessor: Preprocessor,
        include_usage: bool = False,
    ) -> None:
        self.kind = kind
        self.id = response_id
        self.model = model
        self.created = int(time.time())
        self.pre = pre
        self.preprocessor = preprocessor
        self.detok: Detokenizer = preprocessor.make_detokenizer(pre)
        self.include_usage = include_usage
        self.object = "chat.completion.chunk" if kind == "chat" else "text_completion"
        self.completion_tokens = 0
        self.cached_tokens: int | None = None
        self.finish_reason: str | None = None
        self.text_parts: list[str] = []
        self.logprob_entries: list[Any] = []
        self._sent_role = False
        # The bytes around the text of a plain streamed chunk (no logprobs, not finished), so that
        # each such event costs one string encode; identical to encoding the full dict.
        head = _json.encode(
            {"id": self.id, "object": self.object, "created": self.created, "model": self.model}
        )
        field = b'"delta":{"content":' if kind == "chat" else b'"text":'
        self._text_head = b"data: " + head[:-1] + b',"choices":[{"index":0,' + field
        self._text_tail = (b"}" if kind == "chat" else b"") + b',"logprobs":null,"finish_reason":null}]'
        self._text_tail += b',"usage":null}\n\n' if include_usage else b"}\n\n"

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    # --- core -------------------------------------------------------------------------------
    def consume(self, batch: list[dict[str, Any]]) -> tuple[str, list[Any] | None]:
        """Feed a batch of engine outputs; returns (new text, new logprob entries or None).
        ``RequestError(500, code="engine_error")`` when the engine failed the request."""
        ids: list[int] = []
        logprobs: list[Any] | None = None
        finish: str | None = None
        for out in batch:
            new = out.get("token_ids")
            if new:
                ids.extend(new)
            if self.cached_tokens is None and out.get("cached_tokens") is not None:
                self.cached_tokens = out["cached_tokens"]
            lp = out.get("logprobs")
            if lp:
                logprobs = (logprobs or []) + lp
            if out.get("finish_reason") is not None:
                finish = out["finish_reason"]
                if finish == "error":
                    message = out.get("error") or "the engine failed this request"
                    raise RequestError(500, message, type="internal_error", code="engine_error")
        self.completion_tokens += len(ids)
        result = self.detok.add(ids)
        text = result.text
        if result.stopped:
            self.finish_reason = "stop"
        elif finish is not None:
            text += self.detok.flush()
            self.finish_reason = "length" if finish == "length" else "stop"
        return text, logprobs

    def usage(self) -> dict[str, Any]:
        usage: dict[str, Any] = {
            "prompt_tokens": self.pre.prompt_len,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.pre.prompt_len + self.completion_tokens,
        }
        if self.cached_tokens is not None:
            usage["prompt_tokens_details"] = {"cached_tokens": self.cached_tokens}
        return usage

    # --- logprobs ---------------------------------------------------------------------------
    def _chat_logprobs(self, entries: list[Any]) -> dict[str, Any]:
        text = self.preprocessor.token_text
        content = []
        for token_id, logprob, *rest in entries:
            tok = text(token_id)
            top = rest[0] if rest else []
            content.append(
                {
                    "token": tok,
                    "logprob": logprob,
                    "bytes": list(tok.encode()),
                    "top_logprobs": [
                        {"token": text(t), "logprob": lp, "bytes": list(text(t).encode())} for t, lp in top
                    ],
                }
            )
        return {"content": content}

    def _completion_logprobs(self, entries: list[Any]) -> dict[str, Any]:
        text = self.preprocessor.token_text
        tokens, token_logprobs, top_logprobs = [], [], []
        for token_id, logprob, *rest in entries:
            tokens.append(text(token_id))
            token_logprobs.append(logprob)
            top_logprobs.append({text(t): lp for t, lp in (rest[0] if rest else [])})
        return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top_logprobs}

    # --- streaming --------------------------------------------------------------------------
    def chunk(self, text: str, logprobs: list[Any] | None) -> bytes:
        """The SSE event(s) for new text (and, when finished, the final and usage events)."""
        if not logprobs and self.finish_reason is None:
            if not text:
                return b""
            if self._sent_role or self.kind != "chat":
                return self._text_head + _json.encode(text) + self._text_tail
        if self.kind == "chat":
            delta: dict[str, Any] = {"content": text}
            if not self._sent_role:
                delta = {"role": "assistant", "content": text}
                self._sent_role = True
            choice: dict[str, Any] = {
                "index": 0,
                "delta": delta,
                "logprobs": None,
                "finish_reason": self.finish_reason,
            }
            if logprobs and self.pre.logprobs is not None:
                choice["logprobs"] = self._chat_logprobs(logprobs)
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": self.finish_reason}
            if logprobs and self.pre.logprobs is not None:
                choice["logprobs"] = self._completion_logprobs(logprobs)
        body = {
            "id": self.id,
            "object": self.object,
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        }
        if self.include_usage:
            body["usage"] = None
        out = sse(body)
        if self.finish_reason is not None and self.include_usage:
            out += sse(
                {
                    "id": self.id,
                    "object": self.object,
                    "created": self.created,
                    "model": self.model,
                    "choices": [],
                    "usage": self.usage(),
                }
            )
        return out

    # --- non-streaming ----------------------------------------------------------------------
    def add_to_full(self, text: str, logprobs: list[Any] | None) -> None:
        if text:
            self.text_parts.append(text)
        if logprobs:
            self.logprob_entries.extend(logprobs)

    def full_response(self) -> dict[str, Any]:
        text = "".join(self.text_parts)
        want_lp = self.pre.logprobs is not None and self.logprob_entries
        if self.kind == "chat":
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": self._chat_logprobs(self.logprob_entries) if want_lp else None,
                "finish_reason": self.finish_reason or "stop",
            }
            obj = "chat.completion"
        else:
            choice = {
                "index": 0,
                "text": text,
                "logprobs": self._completion_logprobs(self.logprob_entries) if want_lp else None,
                "finish_reason": self.finish_reason or "stop",
            }
            obj = "text_completion"
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": self.usage(),
        }
