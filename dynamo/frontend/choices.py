"""One choice's way back: engine output batches -> semantic deltas, whatever the response format.

Journey: engine -> request plane -> **choice (here: detokenize, reasoning, tool calls, echo)** ->
formatter (chat / completions chunks and bodies in ``dynamo.frontend.responses``; the Responses
API builds on the same deltas) -> HTTP.

Public API, shared by every response format:

- ``ChoiceStream(pre, preprocessor)``: one per choice (one ``PreprocessedOutput``, one engine
  request). ``step(batch)`` turns a batch of engine outputs (msgpack-decoded ``EngineOutput``
  maps) into one ``ChoiceDelta``; ``end()`` closes a stream the engine ended without a finish
  reason. It raises ``RequestError(500, code="engine_error")`` when the engine failed the request
  (400 when the engine refused its content: ``error_code`` ``invalid_request``).
  It also counts: ``completion_tokens``, ``cached_tokens``, ``prompt_tokens``.
- ``ChoiceDelta(index, text, reasoning, tool_calls, logprobs, finish_reason)``: what is new, in
  meaning rather than wire format. ``text`` is content, ``reasoning`` is thinking text
  (``reasoning_content``), ``tool_calls`` are ``dynamo.llm.parsers.ToolCallDelta`` pieces (the first
  piece of a call carries its id and name), ``logprobs`` the raw entries for the tokens of this
  delta (``LogprobEntry``; ``None`` when not asked for), ``finish_reason`` is set on the last delta
  only: ``stop``, ``length`` or ``tool_calls``.
- ``ChoiceResult``: a whole choice, accumulated from its deltas (non-streamed responses):
  ``content`` (None/"" as vLLM answers for the tool mode), ``reasoning``, ``tool_calls``
  (``ToolCall``), ``logprobs`` entries, ``finish_reason``.

The text pipeline of a choice, in order: detokenize (stop strings) -> reasoning parser (thinking
out first) -> tool calls by ``tool_mode`` (``auto``: the card's parser; ``required``/``named``: the
constrained JSON, ``dynamo.frontend.forced_calls``) -> completions echo (prompt text and prompt
logprobs first; ``drop_output`` drops the one generated token). A plain choice (none of these, the
common case) skips it all: its delta is the detokenized text as is.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Protocol

import msgspec

from dynamo.frontend.forced_calls import NamedCall, RequiredCalls
from dynamo.llm.detokenizer import Detokenizer
from dynamo.llm.errors import RequestError, bad_request
from dynamo.llm.parsers import (
    ReasoningParser,
    ToolCall,
    ToolCallDelta,
    reasoning_parser,
    tool_call_parser,
)
from dynamo.llm.preprocessor import PreprocessedOutput, Preprocessor
from dynamo.llm.protocols import ERROR_INVALID_REQUEST, FINISH_ERROR

log = logging.getLogger(__name__)

# One token's logprob as the engine sent it (``TokenLogprob`` on the wire, an array):
# (token id, logprob, [(alternative id, logprob), ...]). In echoed prompt logprobs the first
# prompt token has no logprob: (token id, None, None).
LogprobEntry = Sequence[Any]
Batch = list[dict[str, Any]]


class ChoiceDelta(msgspec.Struct, gc=False):
    """What one step of a choice added (see the module docstring)."""

    index: int
    text: str = ""
    reasoning: str = ""
    tool_calls: Sequence[ToolCallDelta] = ()
    logprobs: list[LogprobEntry] | None = None
    finish_reason: str | None = None
    # The tokens before ``logprobs``' first entry (at most 4): what completes a token's partial
    # UTF-8 text in its logprob (``Preprocessor.token_text``).
    logprob_context: tuple[int, ...] = ()


class _CallSource(Protocol):
    """Where a choice's tool calls come from: a parser of ``dynamo.llm.parsers`` or a forced call."""

    def feed(self, delta: str) -> tuple[str, list[ToolCallDelta]]: ...
    def finish(self) -> tuple[str, list[ToolCallDelta]]: ...


class ChoiceStream:
    """One choice: its engine outputs -> ``ChoiceDelta``s (see the module docstring)."""

    __slots__ = (
        "_called",
        "_calls",
        "_detok",
        "_echo",
        "_logprob_tail",
        "_plain",
        "_reasoning",
        "_single_call",
        "_want_logprobs",
        "cached_tokens",
        "completion_tokens",
        "finish_reason",
        "index",
        "pre",
        "prompt_tokens",
    )

    def __init__(self, pre: PreprocessedOutput, preprocessor: Preprocessor) -> None:
        """``RequestError(500)`` if the model's card names a parser this frontend does not have."""
        self.pre = pre
        self.index = pre.index
        self.prompt_tokens = pre.prompt_len
        self.completion_tokens = 0
        self.cached_tokens: int | None = None
        self.finish_reason: str | None = None
        self._detok: Detokenizer = preprocessor.make_detokenizer(pre)
        self._want_logprobs = pre.logprobs is not None
        self._logprob_tail: tuple[int, ...] = ()
        self._echo = pre.echo_text is not None  # still to prepend
        self._called = False  # a tool call was emitted
        # parallel_tool_calls: false keeps the first call only (as vLLM filters them).
        self._single_call = pre.parallel_tool_calls is False
        try:
            self._reasoning: ReasoningParser | None = (
                reasoning_parser(pre.reasoning_parser, thinking=pre.thinking)
                if pre.reasoning_parser
                else None
            )
            self._calls: _CallSource | None = _call_source(pre)
        except ValueError as exc:  # the card names a parser unknown here (version skew)
            raise RequestError(500, str(exc), type="internal_error", code="unknown_parser") from None
        self._plain = (
            self._reasoning is None and self._calls is None and not self._echo and not pre.drop_output
        )

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def step(self, batch: Batch) -> ChoiceDelta:
        """The delta of one batch of engine outputs (that came together)."""
        ids: list[int] = []
        logprobs: list[LogprobEntry] | None = None
        finish: str | None = None
        prompt_logprobs = None
        for out in batch:
            new = out.get("token_ids")
            if new:
                ids.extend(new)
            if self.cached_tokens is None and out.get("cached_tokens") is not None:
                self.cached_tokens = out["cached_tokens"]
            lp = out.get("logprobs")
            if lp:
                logprobs = (logprobs or []) + lp
            if out.get("prompt_logprobs") is not None:
                prompt_logprobs = out["prompt_logprobs"]
            if out.get("finish_reason") is not None:
                finish = out["finish_reason"]
                if finish == FINISH_ERROR:
                    raise _engine_error(out)
        self.completion_tokens += len(ids)
        result = self._detok.add(ids)
        text = result.text
        reason: str | None = None
        if result.stopped:
            reason = "stop"
        elif finish is not None:
            text += self._detok.flush()
            reason = "length" if finish == "length" else "stop"
        if logprobs is not None and not self._want_logprobs:
            logprobs = None
        if self._plain:
            if reason is None and logprobs is None:
                return ChoiceDelta(self.index, text)  # the hot path: plain text, nothing else
            self.finish_reason = reason
            return ChoiceDelta(self.index, text, "", (), logprobs, reason, self._context(logprobs))
        return self._shape(text, logprobs, reason, prompt_logprobs)

    def end(self) -> ChoiceDelta:
        """The engine ended the stream without a finish reason: flush, finish with ``stop``."""
        text = self._detok.flush()
        if self._plain:
            self.finish_reason = "stop"
            return ChoiceDelta(self.index, text, finish_reason="stop")
        return self._shape(text, None, "stop", None)

    def _shape(
        self,
        text: str,
        logprobs: list[LogprobEntry] | None,
        reason: str | None,
        prompt_logprobs: list[Any] | None,
    ) -> ChoiceDelta:
        final = reason is not None
        pre = self.pre
        if pre.drop_output:  # echo with max_tokens 0: the one generated token is not output
            text, logprobs = "", None
        reasoning = ""
        if self._reasoning is not None:
            reasoning, text = self._reasoning.feed(text) if text else ("", "")
            if final:
                more_reasoning, more_text = self._reasoning.finish()
                reasoning += more_reasoning
                text += more_text
        calls: list[ToolCallDelta] = []
        if self._calls is not None:
            text, calls = self._calls.feed(text) if text else ("", [])
            if final:
                more_text, more_calls = self._calls.finish()
                text += more_text
                calls += more_calls
            if calls:
                if self._single_call:
                    calls = [c for c in calls if c.index == 0]
                self._called = self._called or bool(calls)
        if self._echo:
            self._echo = False
            text = (pre.echo_text or "") + text
            if self._want_logprobs:
                logprobs = self._prompt_entries(prompt_logprobs) + (logprobs or [])
        if reason == "stop" and self._called and pre.tool_mode in ("auto", "required"):
            reason = "tool_calls"  # named: "stop" (OpenAI's and vLLM's answer)
        self.finish_reason = reason
        return ChoiceDelta(self.index, text, reasoning, calls, logprobs, reason, self._context(logprobs))

    def _context(self, logprobs: list[LogprobEntry] | None) -> tuple[int, ...]:
        """The tokens before these entries (see ``ChoiceDelta.logprob_context``); remembers theirs."""
        before = self._logprob_tail
        if logprobs:
            self._logprob_tail = (*before, *(entry[0] for entry in logprobs[-4:]))[-4:]
        return before

    def _prompt_entries(self, prompt_logprobs: list[Any] | None) -> list[LogprobEntry]:
        """The echoed prompt's logprob entries: (token id, logprob, top) per prompt token, the
        first without a logprob (nothing precedes it), as vLLM lays them out."""
        ids = self.pre.request.token_ids
        if prompt_logprobs is None or len(prompt_logprobs) != len(ids):
            raise RequestError(
                500,
                "the engine did not return the prompt's logprobs that 'echo' with 'logprobs' needs",
                type="internal_error",
                code="engine_error",
            )
        return [
            entry if entry is not None else (token_id, None, None)
            for token_id, entry in zip(ids, prompt_logprobs, strict=True)
        ]


def _engine_error(out: dict[str, Any]) -> RequestError:
    """An error chunk as the answer: 400 when the engine refused the request's content (a schema or
    grammar it cannot compile), else 500."""
    if out.get("error_code") == ERROR_INVALID_REQUEST:
        return bad_request(out.get("error") or "the engine refused this request")
    message = out.get("error") or "the engine failed this request"
    return RequestError(500, message, type="internal_error", code="engine_error")


def _call_source(pre: PreprocessedOutput) -> _CallSource | None:
    mode = pre.tool_mode
    if mode == "auto" and pre.tool_parser:
        return tool_call_parser(pre.tool_parser, pre.tools)
    if mode == "required":
        return RequiredCalls()
    if mode == "named":
        if not pre.tool_name:
            raise ValueError("tool_mode 'named' without a tool_name")
        return NamedCall(pre.tool_name)
    return None


class ChoiceResult:
    """A whole choice, accumulated from its deltas (for responses that are not streamed)."""

    __slots__ = (
        "_arguments",
        "_calls",
        "_reasoning",
        "_text",
        "finish_reason",
        "index",
        "logprobs",
        "mode",
        "reasons",
    )

    def __init__(self, stream: ChoiceStream) -> None:
        self.index = stream.index
        pre = stream.pre
        # How an empty content is answered: "" for plain text and forced calls, None once a
        # parser may have taken all the text (as vLLM answers each case).
        self.mode = "forced" if pre.tool_mode in ("required", "named") else "plain"
        if pre.reasoning_parser or (pre.tool_mode == "auto" and pre.tool_parser):
            self.mode = "parsed" if self.mode == "plain" else self.mode
        self.reasons = bool(pre.reasoning_parser)  # reasoning is answered, null or not
        self._text: list[str] = []
        self._reasoning: list[str] = []
        self._calls: list[ToolCallDelta] = []  # first delta of each call, in index order
        self._arguments: list[list[str]] = []
        self.logprobs: list[LogprobEntry] = []
        self.finish_reason: str | None = None

    def add(self, delta: ChoiceDelta) -> None:
        if delta.text:
            self._text.append(delta.text)
        if delta.reasoning:
            self._reasoning.append(delta.reasoning)
        for call in delta.tool_calls:
            if call.id is not None:
                self._calls.append(call)
                self._arguments.append([call.arguments])
            elif call.index < len(self._arguments):
                self._arguments[call.index].append(call.arguments)
        if delta.logprobs:
            self.logprobs.extend(delta.logprobs)
        if delta.finish_reason is not None:
            self.finish_reason = delta.finish_reason

    @property
    def content(self) -> str | None:
        text = "".join(self._text)
        if text or self.mode == "plain":
            return text
        return "" if self.mode == "forced" else None

    @property
    def reasoning(self) -> str | None:
        return "".join(self._reasoning) or None

    @property
    def tool_calls(self) -> list[ToolCall]:
        return [
            ToolCall(call.id or "", call.name or "", "".join(args))
            for call, args in zip(self._calls, self._arguments, strict=True)
        ]
