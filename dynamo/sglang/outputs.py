"""SGLang's streamed outputs -> our ``EngineOutput`` chunks.

Journey: SGLang -> **here** (new token ids, finish reason, cached/prompt token counts, logprobs,
the prompt's logprobs once) -> worker handler -> request plane -> detokenize -> SSE.

Each SGLang chunk is a dict ``{"output_ids": [...], "meta_info": {...}}``. ``output_ids`` are
disjoint segments when SGLang streams incrementally (``incremental_streaming_output``, formerly
``stream_output``, which the worker turns on) and cumulative otherwise (older SGLang defaults);
``TokenDeltas`` tells them apart by ``meta_info.completion_tokens`` (tokens generated so far), so
either way only new ids go out. ``meta_info.finish_reason`` is ``None`` or ``{"type": "stop" |
"length" | "abort", "matched": ..., "message": ..., "status_code": ...}``; an ``abort`` that we did
not ask for (a rejected prompt, a grammar that does not compile, a failed KV transfer) ends the
request with ``finish_reason="error"``, and with ``error_code="invalid_request"`` when SGLang says
the request was bad (status 400). Prompt logprobs come in ``meta_info.input_token_logprobs``
(``(logprob, token_id, text)`` per prompt token, the first without a logprob) and
``input_top_logprobs``.
"""

from __future__ import annotations

from typing import Any

from dynamo.llm.protocols import (
    ERROR_INVALID_REQUEST,
    FINISH_ERROR,
    FINISH_LENGTH,
    FINISH_STOP,
    EngineOutput,
    TokenLogprob,
)

_FINISH = {"stop": FINISH_STOP, "length": FINISH_LENGTH, "abort": FINISH_ERROR}


class TokenDeltas:
    """Turns SGLang ``output_ids`` into the ids not sent yet, whichever way SGLang streams them."""

    def __init__(self, cumulative: bool = False) -> None:
        self.cumulative = cumulative  # assumed when SGLang does not say how many tokens it made
        self.sent = 0

    def new_tokens(self, output_ids: list[int], completion_tokens: int | None) -> list[int]:
        n = len(output_ids)
        if completion_tokens is not None:
            if self.sent and n == completion_tokens and n >= self.sent:
                self.cumulative = True
            elif n == completion_tokens - self.sent:
                self.cumulative = False
        new = list(output_ids[self.sent :]) if self.cumulative else list(output_ids)
        self.sent += len(new)
        return new


def finish_of(meta: dict[str, Any]) -> tuple[str | None, int | str | None, str | None]:
    """``meta_info.finish_reason`` -> (our finish reason, stop reason, error message)."""
    raw = meta.get("finish_reason")
    if raw is None:
        return None, None, None
    kind = raw.get("type") if isinstance(raw, dict) else str(raw)
    reason = _FINISH.get(str(kind), FINISH_STOP)
    matched = raw.get("matched") if isinstance(raw, dict) else None
    stop_reason = matched if isinstance(matched, int | str) and not isinstance(matched, bool) else None
    error = None
    if reason == FINISH_ERROR:
        message = raw.get("message") if isinstance(raw, dict) else None
        error = str(message or "the request was aborted by SGLang")
    return reason, stop_reason, error


def error_code_of(meta: dict[str, Any]) -> str | None:
    """``invalid_request`` when SGLang aborted the request as a bad request (HTTP 400)."""
    raw = meta.get("finish_reason")
    status = raw.get("status_code") if isinstance(raw, dict) else None
    return ERROR_INVALID_REQUEST if status == 400 else None


def _alternatives(top: list[Any] | None, num_top: int) -> list[tuple[int, float]]:
    """SGLang's top entries ``(logprob, token_id, text)`` -> ours, at most ``num_top``."""
    return [(int(t[1]), float(t[0])) for t in (top or [])[:num_top] if t is not None and t[0] is not None]


def prompt_logprobs_of(meta: dict[str, Any], num_top: int) -> list[TokenLogprob | None] | None:
    """The prompt's logprobs in SGLang's ``input_token_logprobs`` / ``input_top_logprobs`` (None
    when this chunk has none); entry 0 is None."""
    tokens = meta.get("input_token_logprobs")
    if not tokens:
        return None
    tops = meta.get("input_top_logprobs") or []
    out: list[TokenLogprob | None] = []
    for index, entry in enumerate(tokens):
        if index == 0 or entry is None or entry[0] is None:
            out.append(None)
            continue
        top = tops[index] if index < len(tops) else None
        out.append(
            TokenLogprob(token_id=int(entry[1]), logprob=float(entry[0]), top=_alternatives(top, num_top))
        )
    return out


def _logprobs(meta: dict[str, Any], count: int, num_top: int) -> list[TokenLogprob] | None:
    """The last ``count`` positions of SGLang's ``output_token_logprobs`` (entries ``(logprob,
    token_id, text)``) with their ``output_top_logprobs`` alternatives."""
    sampled = meta.get("output_token_logprobs")
    if not sampled or count == 0 or len(sampled) < count:
        return None
    tops = meta.get("output_top_logprobs") or []
    tops = tops[-count:] if len(tops) >= count else [None] * count
    out = []
    for entry, top in zip(sampled[-count:], tops, strict=True):
        out.append(
            TokenLogprob(token_id=int(entry[1]), logprob=float(entry[0]), top=_alternatives(top, num_top))
        )
    return out


class OutputConverter:
    """One request's SGLang chunks -> ``EngineOutput`` (None for a chunk with nothing to send)."""

    def __init__(
        self,
        prompt_tokens: int,
        num_top_logprobs: int | None = None,
        cumulative: bool = False,
        num_prompt_top_logprobs: int | None = None,
    ) -> None:
        self.prompt_tokens = prompt_tokens
        self.num_top = num_top_logprobs
        self.num_prompt_top = num_prompt_top_logprobs  # None: prompt logprobs not asked
        self.prompt_logprobs_due = num_prompt_top_logprobs is not None
        self.deltas = TokenDeltas(cumulative)
        self.first = True
        self.finished = False

    def convert(self, out: dict[str, Any]) -> EngineOutput | None:
        meta = out.get("meta_info") or {}
        new = self.deltas.new_tokens(list(out.get("output_ids") or []), meta.get("completion_tokens"))
        reason, stop_reason, error = finish_of(meta)
        prompt_logprobs = None
        if self.prompt_logprobs_due:
            prompt_logprobs = prompt_logprobs_of(meta, self.num_prompt_top or 0)
            self.prompt_logprobs_due = prompt_logprobs is None
        if not new and reason is None and prompt_logprobs is None:
            return None  # an idle tick of SGLang's scheduler
        chunk = EngineOutput(token_ids=new, prompt_logprobs=prompt_logprobs)
        if self.first:
            self.first = False
            chunk.prompt_tokens = int(meta.get("prompt_tokens") or self.prompt_tokens)
            chunk.cached_tokens = int(meta.get("cached_tokens") or 0)
        if self.num_top is not None:
            chunk.logprobs = _logprobs(meta, len(new), self.num_top)
        if reason is not None:
            self.finished = True
            chunk.finish_reason = reason
            chunk.stop_reason = stop_reason
            chunk.error = error
            if reason == FINISH_ERROR:
                chunk.error_code = error_code_of(meta)
        return chunk
