"""One response's output: semantic deltas -> Responses API output items, and the events that
stream them (journey: engine -> choice deltas (``dynamo.frontend.choices``) -> **here** -> SSE
events or the Response object).

``OutputBuilder.add(delta)`` returns the events a delta causes, in the order the OpenAI API sends
them: thinking opens a ``reasoning`` item, content a ``message`` item with one ``output_text``
part, each tool call a ``function_call`` item; a change of kind (or the next call) closes the open
item first (``*.done`` events, then ``response.output_item.done``). The items are the same whether
the response is streamed or not (non-streamed responses drop the events), so a follow-up sees the
same ids. ``response_object`` writes the Response object around the items (echoing the request's
settings). Plain dicts throughout, shaped as ``dynamo.llm.openai_responses``' types.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from dynamo.frontend.choices import ChoiceDelta, LogprobEntry
from dynamo.llm.openai_responses import NamedToolChoice, ResponsesRequest

Event = dict[str, Any]


def new_id(prefix: str) -> str:
    """``<prefix>_`` and 32 hex digits (``resp``, ``msg``, ``rs``, ``fc``)."""
    return f"{prefix}_{uuid.uuid4().hex}"


class OutputBuilder:
    """Accumulates one choice's deltas into output items; numbers every event it returns."""

    def __init__(self, token_text: Callable[[int], str], top_logprobs: int | None) -> None:
        """``top_logprobs``: None when logprobs were not asked for, else alternatives per token."""
        self.items: list[dict[str, Any]] = []  # every item opened so far, in output order
        self.sequence = 0
        self._token_text = token_text
        self._top = top_logprobs
        self._open: dict[str, Any] | None = None  # the item being generated
        self._call_index: int | None = None  # of the open function_call
        self._text: list[str] = []  # of the open item: text, reasoning or arguments
        self._logprobs: list[dict[str, Any]] = []  # of the open message

    def event(self, kind: str, **fields: Any) -> Event:
        """An event of type ``kind``, numbered in the order events are made."""
        ev = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return ev

    # --- deltas -----------------------------------------------------------------------------
    def add(self, delta: ChoiceDelta) -> list[Event]:
        """The events of one delta (thinking, then content, then tool calls, as vLLM splits them)."""
        events: list[Event] = []
        if delta.reasoning:
            events += self._switch("reasoning")
            events += self._reasoning_delta(delta.reasoning)
        if delta.text:
            events += self._switch("message")
            events += self._text_delta(delta.text, delta.logprobs)
        for call in delta.tool_calls:
            if call.id is not None or self._call_index != call.index:
                events += self._close()
                events += self._open_call(call.id or new_id("call"), call.name or "", call.index)
            if call.arguments:
                self._text.append(call.arguments)
                events.append(self._at("response.function_call_arguments.delta", delta=call.arguments))
        return events

    def close(self, status: str = "completed") -> list[Event]:
        """Close the open item at the end of the output: ``incomplete`` when generation was cut
        at ``max_output_tokens`` (as OpenAI marks it)."""
        return self._close(status)

    # --- items ------------------------------------------------------------------------------
    def _switch(self, kind: str) -> list[Event]:
        if self._open is not None and self._open["type"] == kind:
            return []
        return self._close() + self._open_item(kind)

    def _open_item(self, kind: str) -> list[Event]:
        if kind == "message":
            item: dict[str, Any] = {
                "type": "message",
                "id": new_id("msg"),
                "role": "assistant",
                "status": "in_progress",
                "content": [],
            }
            part: dict[str, Any] = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        else:
            item = {
                "type": "reasoning",
                "id": new_id("rs"),
                "summary": [],
                "content": [],
                "status": "in_progress",
            }
            part = {"type": "reasoning_text", "text": ""}
        self._begin(item)
        return [
            self.event("response.output_item.added", output_index=len(self.items) - 1, item=dict(item)),
            self._at("response.content_part.added", content_index=0, part=part),
        ]

    def _open_call(self, call_id: str, name: str, index: int) -> list[Event]:
        item = {
            "type": "function_call",
            "id": new_id("fc"),
            "call_id": call_id,
            "name": name,
            "arguments": "",
            "status": "in_progress",
        }
        self._begin(item)
        self._call_index = index
        return [self.event("response.output_item.added", output_index=len(self.items) - 1, item=dict(item))]

    def _begin(self, item: dict[str, Any]) -> None:
        self.items.append(item)
        self._open = item
        self._text = []
        self._logprobs = []

    def _at(self, kind: str, **fields: Any) -> Event:
        """An event about the open item."""
        item = self._open
        assert item is not None
        return self.event(kind, output_index=len(self.items) - 1, item_id=item["id"], **fields)

    def _reasoning_delta(self, text: str) -> list[Event]:
        self._text.append(text)
        return [self._at("response.reasoning_text.delta", content_index=0, delta=text)]

    def _text_delta(self, text: str, entries: list[LogprobEntry] | None) -> list[Event]:
        self._text.append(text)
        stream_lps: list[dict[str, Any]] = []
        if self._top is not None and entries:
            lps = [self._logprob(e) for e in entries]
            self._logprobs += lps
            stream_lps = [
                {
                    "token": lp["token"],
                    "logprob": lp["logprob"],
                    "top_logprobs": [
                        {"token": t["token"], "logprob": t["logprob"]} for t in lp["top_logprobs"]
                    ],
                }
                for lp in lps
            ]
        return [self._at("response.output_text.delta", content_index=0, delta=text, logprobs=stream_lps)]

    def _logprob(self, entry: LogprobEntry) -> dict[str, Any]:
        token_id, logprob, *rest = entry
        token = self._token_text(token_id)
        top = rest[0] if rest and rest[0] else []
        return {
            "token": token,
            "logprob": max(logprob, -9999.0),
            "bytes": list(token.encode()),
            "top_logprobs": [
                {
                    "token": (t := self._token_text(tid)),
                    "logprob": max(lp, -9999.0),
                    "bytes": list(t.encode()),
                }
                for tid, lp in top[: self._top]
            ],
        }

    def _close(self, status: str = "completed") -> list[Event]:
        item = self._open
        if item is None:
            return []
        self._open = None
        self._call_index = None
        text = "".join(self._text)
        kind = item["type"]
        events: list[Event] = []
        if kind == "message":
            part = {
                "type": "output_text",
                "text": text,
                "annotations": [],
                "logprobs": self._logprobs if self._top is not None else None,
            }
            item["content"] = [part]
            events.append(self._done_event("response.output_text.done", item, text=text, logprobs=[]))
            events.append(self._done_event("response.content_part.done", item, part=part))
        elif kind == "reasoning":
            part = {"type": "reasoning_text", "text": text}
            item["content"] = [part]
            events.append(self._done_event("response.reasoning_text.done", item, text=text))
            events.append(self._done_event("response.content_part.done", item, part=part))
        else:
            item["arguments"] = text
            events.append(
                self.event(
                    "response.function_call_arguments.done",
                    output_index=self.items.index(item),
                    item_id=item["id"],
                    name=item["name"],
                    arguments=text,
                )
            )
        item["status"] = status
        events.append(self.event("response.output_item.done", output_index=self.items.index(item), item=item))
        return events

    def _done_event(self, kind: str, item: dict[str, Any], **fields: Any) -> Event:
        return self.event(
            kind, output_index=self.items.index(item), item_id=item["id"], content_index=0, **fields
        )

    # --- the conversation -------------------------------------------------------------------
    def as_messages(self) -> list[dict[str, Any]]:
        """The output as chat messages, for the conversation a follow-up continues: one assistant
        message with the text and the calls (thinking is not carried over, as vLLM does)."""
        text = "".join(p["text"] for i in self.items if i["type"] == "message" for p in i["content"])
        calls = [
            {
                "id": i["call_id"],
                "type": "function",
                "function": {"name": i["name"], "arguments": i["arguments"]},
            }
            for i in self.items
            if i["type"] == "function_call"
        ]
        if not text and not calls:
            return [{"role": "assistant", "content": ""}]
        message: dict[str, Any] = {"role": "assistant", "content": text or None}
        if calls:
            message["tool_calls"] = calls
        return [message]

    @property
    def reasoning_text(self) -> str:
        return "".join(p["text"] for i in self.items if i["type"] == "reasoning" for p in i["content"])


def response_object(
    req: ResponsesRequest,
    response_id: str,
    model: str,
    created_at: int,
    status: str,
    output: list[dict[str, Any]],
    usage: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The Response object in ``status`` with ``output``, echoing the request's settings."""
    fmt = req.text.format if req.text and req.text.format else None
    text = {"format": fmt.model_dump(by_alias=True, exclude_none=True) if fmt else {"type": "text"}}
    tool_choice: Any = req.tool_choice or "auto"
    if isinstance(tool_choice, NamedToolChoice):
        tool_choice = tool_choice.model_dump()
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "completed_at": None,
        "status": status,
        "error": error,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": req.instructions,
        "max_output_tokens": req.max_output_tokens,
        "model": model,
        "output": output,
        "parallel_tool_calls": req.parallel_tool_calls is not False,
        "previous_response_id": req.previous_response_id,
        "reasoning": req.reasoning.model_dump() if req.reasoning else None,
        "store": req.store is not False,
        "temperature": req.temperature,
        "text": text,
        "tool_choice": tool_choice,
        "tools": [t.model_dump() for t in req.tools or []],
        "top_p": req.top_p,
        "top_logprobs": req.top_logprobs if req.wants_logprobs else None,
        "truncation": "disabled",
        "usage": usage,
        "user": req.user,
        "metadata": req.metadata or {},
        "background": False,
        "service_tier": "default",
        "prompt_cache_key": req.prompt_cache_key,
        "safety_identifier": req.safety_identifier,
    }
