"""TensorRT-LLM's streamed ``RequestOutput`` -> our ``EngineOutput`` chunks.

Journey: TensorRT-LLM -> **here** (new token ids, finish reason, cached/prompt token counts,
logprobs, a prefill's ``DisaggregatedParams``) -> worker handler -> request plane -> detokenize.

``outputs[0].token_ids`` (and ``logprobs``) are cumulative: each chunk carries what was not sent
yet. ``finish_reason`` is ``stop`` / ``length`` / ``cancelled`` / ``timeout``; a timeout ends the
request with ``finish_reason="error"``. Cached prompt tokens come from the request's perf metrics
(``return_perf_metrics: true``) as reused KV blocks x block size, when TensorRT-LLM reports them.
"""

from __future__ import annotations

from typing import Any

from dynamo.llm.protocols import (
    FINISH_CANCELLED,
    FINISH_ERROR,
    FINISH_LENGTH,
    FINISH_STOP,
    EngineOutput,
    TokenLogprob,
)
from dynamo.trtllm.request import params_to_wire

_FINISH = {
    "stop": FINISH_STOP,
    "length": FINISH_LENGTH,
    "cancelled": FINISH_CANCELLED,
    "timeout": FINISH_ERROR,
}


def cached_tokens_of(output: Any, block_size: int, prompt_tokens: int) -> int | None:
    """Prompt tokens served from the prefix cache, when TensorRT-LLM reports reused blocks."""
    metrics = getattr(output, "request_perf_metrics", None)
    kv = getattr(metrics, "kv_cache_metrics", None)
    reused = getattr(kv, "num_reused_blocks", None)
    if reused is None:
        return None
    return min(prompt_tokens, int(reused) * block_size)


def _logprob_value(entry: Any) -> float:
    """A ``Logprob(logprob, rank)`` or a plain number."""
    value: Any = getattr(entry, "logprob", entry)
    return float(value)


def _logprob_entry(token_id: int, entry: Any, num_top: int) -> TokenLogprob:
    """One position: a float (the sampled token's logprob) or ``{token_id: Logprob(logprob, rank)}``."""
    if isinstance(entry, dict):
        ranked = sorted(entry.items(), key=lambda kv: getattr(kv[1], "rank", None) or 0)
        sampled = entry.get(token_id)
        value = _logprob_value(sampled) if sampled is not None else float("-inf")
        top = [(int(t), _logprob_value(lp)) for t, lp in ranked[:num_top]]
        return TokenLogprob(token_id=token_id, logprob=value, top=top)
    return TokenLogprob(token_id=token_id, logprob=_logprob_value(entry))


class OutputConverter:
    """One request's ``RequestOutput`` updates -> ``EngineOutput`` (None: nothing new to send)."""

    def __init__(
        self, prompt_tokens: int, block_size: int, num_top_logprobs: int | None = None, prefill: bool = False
    ) -> None:
        self.prompt_tokens = prompt_tokens
        self.block_size = block_size
        self.num_top = num_top_logprobs
        self.prefill = prefill
        self.sent = 0
        self.first = True
        self.cached_known = False
        self.finished = False

    def convert(self, res: Any) -> EngineOutput | None:
        outputs = getattr(res, "outputs", None) or []
        if not outputs:
            if getattr(res, "finished", False):
                self.finished = True
                return EngineOutput(finish_reason=FINISH_ERROR, error="TensorRT-LLM finished without output")
            return None
        out = outputs[0]
        token_ids = list(out.token_ids)
        new = token_ids[self.sent :]
        start, self.sent = self.sent, len(token_ids)
        raw = getattr(out, "finish_reason", None)
        reason = _FINISH.get(str(raw), FINISH_STOP) if raw else None
        if reason is None and getattr(res, "finished", False):
            reason = FINISH_STOP
        if not new and reason is None:
            return None
        chunk = EngineOutput(token_ids=new)
        if self.first:
            self.first = False
            chunk.prompt_tokens = self.prompt_tokens
        if not self.cached_known:  # perf metrics may come with a later chunk than the first
            chunk.cached_tokens = cached_tokens_of(out, self.block_size, self.prompt_tokens)
            self.cached_known = chunk.cached_tokens is not None
        logprobs = getattr(out, "logprobs", None)
        if self.num_top is not None and logprobs and len(logprobs) >= len(token_ids):
            chunk.logprobs = [
                _logprob_entry(t, e, self.num_top)
                for t, e in zip(new, logprobs[start : len(token_ids)], strict=True)
            ]
        if reason is not None:
            self.finished = True
            chunk.finish_reason = reason
            stop_reason = getattr(out, "stop_reason", None)
            chunk.stop_reason = stop_reason if isinstance(stop_reason, int | str) else None
            if reason == FINISH_ERROR:
                chunk.error = f"TensorRT-LLM ended the request: {raw}"
            if self.prefill:
                params = getattr(out, "disaggregated_params", None)
                if params is not None:
                    chunk.kv_transfer_params = params_to_wire(params)
        return chunk
