"""OpenAI API conformance: one list of requests against any OpenAI server, judged by what each asked.

Every row of ``CASES`` is one request shape (issue 11's sections: tools, structured output,
reasoning, sampling and scoring, endpoints, limits), sent with the official ``openai`` SDK (raw
``httpx`` for the few rows marked ``via="http"``), streamed and not where both exist. Each answer
gets one outcome:

- ``honoured``: accepted and the output satisfies what was asked (tool calls validate against the
  tool's parameters with ``jsonschema``, a ``json_schema`` output validates, a regex matches, ``n``
  choices with distinct indices, ...);
- ``refused``: a 4xx in OpenAI's error shape (``{"error": {"message", "type", "param", "code"}}``)
  that names the field (in ``param`` or the message);
- ``ignored``: accepted, but the constraint was not honoured -- the bad case;
- ``error``: anything else (5xx, a broken stream, a 4xx that does not name the field, ...).

A row passes when its outcome is one it allows (``expect``): ``honoured`` for features; ``refused``
for limits, unknown fields and vLLM's removed ``guided_*`` fields (whose 400 must also name
``structured_outputs``); either for ``best_of``. The rows and their rules are data: no server gets
a code path of its own.

Modes:

    .venv/bin/python benchmarks/api_conformance.py --url http://127.0.0.1:8000
    flock /tmp/dynamo-vllm.lock .venv/bin/python benchmarks/api_conformance.py --side-by-side \\
        --out /tmp/api_conformance.md

``--side-by-side`` starts, one after the other on the same engine flags (``vllm_overhead.py``'s),
vLLM's own server (``vllm.entrypoints.openai.api_server --enable-auto-tool-choice
--tool-call-parser hermes``, with ``VLLM_ENABLE_RESPONSES_API_STORE=1`` so that
``previous_response_id`` can work) and ours (``dynamo.frontend`` + ``dynamo.vllm
--dyn-tool-call-parser hermes --dyn-reasoning-parser basic``, file discovery), runs every row on
each and prints both columns, plus whether greedy or seeded rows gave the same output on both. vLLM's
think-tag reasoning parsers need ``<think>`` in the vocabulary, which SmolLM2 lacks, so its server
runs without one (its reasoning row then reads ``ignored``). With ``--embedding-model-path DIR``
each stack is started a second time with ``--runner pooling`` for the ``/v1/embeddings`` rows.
A stack that does not start (e.g. a flag it does not know) gets ``error`` on every row.
"""

from __future__ import annotations

import argparse
import datetime
import inspect
import json
import math
import os
import re
import sys
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ROOT = Path(__file__).resolve().parents[1]
HONOURED, REFUSED, IGNORED, ERROR, SKIPPED = "honoured", "refused", "ignored", "error", "n/a"
TIMEOUT_S = 300.0

# ----- request material --------------------------------------------------------------------------

WEATHER_PARAMS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 40},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TIME_PARAMS: dict[str, Any] = {
    "type": "object",
    "properties": {"timezone": {"type": "string", "maxLength": 40}},
    "required": ["timezone"],
    "additionalProperties": False,
}


def tool(name: str, description: str, params: dict[str, Any], strict: bool | None = None) -> dict[str, Any]:
    fn: dict[str, Any] = {"name": name, "description": description, "parameters": params}
    if strict is not None:
        fn["strict"] = strict
    return {"type": "function", "function": fn}


WEATHER = tool("get_weather", "Get the current weather in a city", WEATHER_PARAMS)
WEATHER_STRICT = tool("get_weather", "Get the current weather in a city", WEATHER_PARAMS, strict=True)
TIME = tool("get_time", "Get the current time in a timezone", TIME_PARAMS)
ASK_WEATHER = [{"role": "user", "content": "What is the weather like in Paris today?"}]
NAMED = {"type": "function", "function": {"name": "get_weather"}}

# A tool result long enough that a server which drops it from the prompt is caught by prompt_tokens.
TOOL_RESULT = json.dumps(
    {
        "city": "Paris",
        "temperature": 18,
        "unit": "celsius",
        "forecast": [
            {"day": d, "sky": s, "high": h, "low": lo}
            for d, s, h, lo in [
                ("monday", "sunny", 21, 12),
                ("tuesday", "cloudy", 19, 11),
                ("wednesday", "light rain", 16, 10),
                ("thursday", "thunderstorms", 17, 12),
                ("friday", "sunny", 22, 13),
            ]
        ],
    }
)
TOOL_HISTORY = [
    *ASK_WEATHER,
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_abc123def456ghi789jkl012",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_abc123def456ghi789jkl012", "content": TOOL_RESULT},
]
TOOL_RESULT_MIN_TOKENS = 80  # the tool result alone is ~130 tokens with SmolLM2's tokenizer

PERSON_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 30},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}
DESCRIBE = [{"role": "user", "content": "Describe a fictional person as JSON with a name and an age."}]
REGEX = r"[0-9]{3}-[a-z]{2}"
CHOICES = ["zebra-alpha", "zebra-beta", "zebra-gamma"]
GRAMMAR = 'root ::= ("yes" | "no") " " [0-9] [0-9]'
GRAMMAR_AS_REGEX = r"(yes|no) [0-9][0-9]"
THINK_REGEX = r"<think>[a-z ]{3,40}</think>[A-Za-z ]{3,40}"
PROMPTS = ["The capital of France is", "One, two, three, four,"]
HI = [{"role": "user", "content": "Say hello."}]


# ----- normalized replies ------------------------------------------------------------------------


@dataclass
class Call:
    id: str | None
    name: str | None
    arguments: str


@dataclass
class Choice:
    index: int
    text: str | None = None  # chat content or completion text
    reasoning: str | None = None
    tool_calls: list[Call] = field(default_factory=list)
    finish_reason: str | None = None
    logprobs: Any = None  # chat: list of token entries; completions: {tokens, token_logprobs, ...}


@dataclass
class Reply:
    """A 2xx answer in one shape whatever the endpoint or streaming: judges read only this."""

    body: dict[str, Any]  # the response body, or for a stream the last event's
    choices: dict[int, Choice] = field(default_factory=dict)
    usage: dict[str, Any] | None = None
    events: list[dict[str, Any]] = field(default_factory=list)  # streamed chunks / events
    problems: list[str] = field(default_factory=list)  # malformed stream pieces

    @property
    def only(self) -> Choice:
        return self.choices[min(self.choices)] if self.choices else Choice(-1)


class Refusal(Exception):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.body = body


def _reasoning(msg: dict[str, Any]) -> str | None:
    return msg.get("reasoning_content") or msg.get("reasoning")


def chat_reply(body: dict[str, Any]) -> Reply:
    reply = Reply(body, usage=body.get("usage"))
    for c in body.get("choices") or []:
        msg = c.get("message") or {}
        calls = [
            Call(
                tc.get("id"),
                (tc.get("function") or {}).get("name"),
                (tc.get("function") or {}).get("arguments") or "",
            )
            for tc in msg.get("tool_calls") or []
        ]
        reply.choices[c["index"]] = Choice(
            c["index"],
            msg.get("content"),
            _reasoning(msg),
            calls,
            c.get("finish_reason"),
            (c.get("logprobs") or {}).get("content"),
        )
    return reply


def chat_stream_reply(chunks: list[dict[str, Any]]) -> Reply:
    reply = Reply(chunks[-1] if chunks else {}, events=chunks)
    for chunk in chunks:
        if chunk.get("error"):
            reply.problems.append(f"error event: {chunk['error']}")
            continue
        if chunk.get("usage"):
            reply.usage = chunk["usage"]
        for c in chunk.get("choices") or []:
            ch = reply.choices.setdefault(c["index"], Choice(c["index"]))
            delta = c.get("delta") or {}
            if delta.get("content"):
                ch.text = (ch.text or "") + delta["content"]
            if _reasoning(delta):
                ch.reasoning = (ch.reasoning or "") + (_reasoning(delta) or "")
            for d in delta.get("tool_calls") or []:
                i, fn = d.get("index"), d.get("function") or {}
                if i is None:
                    reply.problems.append("tool-call delta without index")
                    continue
                if i >= len(ch.tool_calls):
                    if i != len(ch.tool_calls):
                        reply.problems.append(f"tool call {i} started before call {len(ch.tool_calls)}")
                    if not d.get("id") or not fn.get("name"):
                        reply.problems.append(f"first delta of tool call {i} lacks its id or function name")
                    ch.tool_calls.append(Call(d.get("id"), fn.get("name"), ""))
                ch.tool_calls[min(i, len(ch.tool_calls) - 1)].arguments += fn.get("arguments") or ""
            if c.get("logprobs") and c["logprobs"].get("content"):
                ch.logprobs = (ch.logprobs or []) + c["logprobs"]["content"]
            if c.get("finish_reason"):
                ch.finish_reason = c["finish_reason"]
    return reply


def completion_reply(body: dict[str, Any]) -> Reply:
    reply = Reply(body, usage=body.get("usage"))
    for c in body.get("choices") or []:
        reply.choices[c["index"]] = Choice(
            c["index"], c.get("text"), finish_reason=c.get("finish_reason"), logprobs=c.get("logprobs")
        )
    return reply


def completion_stream_reply(chunks: list[dict[str, Any]]) -> Reply:
    reply = Reply(chunks[-1] if chunks else {}, events=chunks)
    for chunk in chunks:
        if chunk.get("error"):
            reply.problems.append(f"error event: {chunk['error']}")
            continue
        if chunk.get("usage"):
            reply.usage = chunk["usage"]
        for c in chunk.get("choices") or []:
            ch = reply.choices.setdefault(c["index"], Choice(c["index"], ""))
            ch.text = (ch.text or "") + (c.get("text") or "")
            lp = c.get("logprobs")
            if lp:
                acc = ch.logprobs or {
                    "tokens": [],
                    "token_logprobs": [],
                    "top_logprobs": [],
                    "text_offset": [],
                }
                for key in acc:
                    acc[key] += lp.get(key) or []
                ch.logprobs = acc
            if c.get("finish_reason"):
                ch.finish_reason = c["finish_reason"]
    return reply


def response_text(resp: dict[str, Any]) -> str:
    return "".join(
        part.get("text") or ""
        for item in resp.get("output") or []
        if item.get("type") == "message"
        for part in item.get("content") or []
        if part.get("type") == "output_text"
    )


def responses_reply(body: dict[str, Any]) -> Reply:
    return Reply(body, {0: Choice(0, response_text(body))}, body.get("usage"))


def responses_stream_reply(events: list[dict[str, Any]]) -> Reply:
    ends = ("response.completed", "response.incomplete")
    final = next((e.get("response") for e in events if e.get("type") in ends), None)
    reply = Reply(final or {}, events=events, usage=(final or {}).get("usage"))
    deltas = "".join(e.get("delta") or "" for e in events if e.get("type") == "response.output_text.delta")
    reply.choices[0] = Choice(0, deltas)
    types = [e.get("type") for e in events]
    for needed in ("response.created", "response.output_text.delta"):
        if needed not in types:
            reply.problems.append(f"no {needed} event")
    if final is None:
        reply.problems.append("no response.completed or response.incomplete event")
    if final is not None and response_text(final) != deltas:
        reply.problems.append("joined output_text deltas differ from the completed response's text")
    return reply


# ----- transport ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A server under test: its base URL (no ``/v1``) and the model names it serves."""

    name: str
    url: str
    model: str
    embedding_model: str | None = None


class Client:
    """Sends one request shape with the SDK or raw HTTP and returns a ``Reply`` or raises ``Refusal``."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.sdk = openai.OpenAI(
            base_url=f"{target.url}/v1", api_key="none", max_retries=0, timeout=TIMEOUT_S
        )
        self.http = httpx.Client(base_url=target.url, timeout=TIMEOUT_S)

    def close(self) -> None:
        self.sdk.close()
        self.http.close()

    def send(self, endpoint: str, body: dict[str, Any], via: str = "sdk") -> Reply:
        body = dict(body)
        if endpoint != "models":
            body.setdefault(
                "model", self.target.embedding_model if endpoint == "embeddings" else self.target.model
            )
        stream = bool(body.get("stream"))
        try:
            if via == "http":
                raw = self._http(endpoint, body, stream)
            else:
                raw = self._sdk(endpoint, body, stream)
        except openai.APIStatusError as exc:
            try:
                payload: Any = exc.response.json()
            except Exception:
                payload = exc.body
            raise Refusal(exc.status_code, payload) from None
        return PARSERS[endpoint, stream](raw)

    def _sdk(self, endpoint: str, body: dict[str, Any], stream: bool) -> Any:
        if endpoint == "models":
            return self.sdk.models.list().model_dump()
        creators: dict[str, Callable[..., Any]] = {
            "chat": self.sdk.chat.completions.create,
            "completions": self.sdk.completions.create,
            "responses": self.sdk.responses.create,
            "embeddings": self.sdk.embeddings.create,
        }
        create = creators[endpoint]
        known = inspect.signature(create).parameters
        kwargs = {k: v for k, v in body.items() if k in known}
        extra = {k: v for k, v in body.items() if k not in known}
        result = create(**kwargs, extra_body=extra or None)
        if stream:
            return [event.model_dump() for event in result]
        return result.model_dump()

    def _http(self, endpoint: str, body: dict[str, Any], stream: bool) -> Any:
        path = {
            "chat": "/v1/chat/completions",
            "completions": "/v1/completions",
            "responses": "/v1/responses",
            "embeddings": "/v1/embeddings",
            "models": "/v1/models",
        }[endpoint]
        if endpoint == "models":
            resp = self.http.get(path)
            self._raise_for(resp)
            return resp.json()
        if not stream:
            resp = self.http.post(path, json=body)
            self._raise_for(resp)
            return resp.json()
        events: list[dict[str, Any]] = []
        with self.http.stream("POST", path, json=body) as resp:
            if resp.status_code >= 400:
                resp.read()
                self._raise_for(resp)
            for line in resp.iter_lines():
                if line.startswith("data:"):
                    data = line[5:].strip()
                    if data and data != "[DONE]":
                        events.append(json.loads(data))
        return events

    @staticmethod
    def _raise_for(resp: httpx.Response) -> None:
        if resp.status_code >= 400:
            try:
                payload: Any = resp.json()
            except ValueError:
                payload = resp.text
            raise Refusal(resp.status_code, payload)


PARSERS: dict[tuple[str, bool], Callable[[Any], Reply]] = {
    ("chat", False): chat_reply,
    ("chat", True): chat_stream_reply,
    ("completions", False): completion_reply,
    ("completions", True): completion_stream_reply,
    ("responses", False): responses_reply,
    ("responses", True): responses_stream_reply,
    ("embeddings", False): lambda body: Reply(body),
    ("models", False): lambda body: Reply(body),
}


# ----- judges ------------------------------------------------------------------------------------

Verdict = tuple[str, str]  # (outcome, note)


@dataclass
class Ctx:
    """What a judge may use besides the reply: the client (for a baseline request) and the case."""

    client: Client
    case: Case
    facts: Facts


Judge = Callable[[Reply, Ctx], Verdict]


def honoured_if(problems: list[str], ok_note: str = "") -> Verdict:
    return (IGNORED, "; ".join(problems)) if problems else (HONOURED, ok_note)


def has_text(reply: Reply, ctx: Ctx) -> Verdict:
    texts = [c.text for c in reply.choices.values()]
    return honoured_if([] if texts and all(texts) else ["no text in the answer"])


def tool_problems(calls: list[Call], tools: list[dict[str, Any]], only: str | None = None) -> list[str]:
    params = {t["function"]["name"]: t["function"].get("parameters") or {} for t in tools}
    out = []
    for call in calls:
        if call.name not in params:
            out.append(f"call to unknown function {call.name!r}")
            continue
        if only is not None and call.name != only:
            out.append(f"call to {call.name!r}, not the named {only!r}")
        try:
            args = json.loads(call.arguments)
        except (TypeError, ValueError):
            out.append(f"arguments are not JSON: {call.arguments!r:.80}")
            continue
        try:
            jsonschema.validate(args, params[call.name])
        except jsonschema.ValidationError as exc:
            out.append(f"arguments {call.arguments!r:.80} do not validate: {exc.message:.80}")
    return out


def no_tool_calls(reply: Reply, ctx: Ctx) -> Verdict:
    ch = reply.only
    if ch.tool_calls:
        return IGNORED, f"tool_choice none, yet {len(ch.tool_calls)} tool call(s)"
    return honoured_if([] if ch.text else ["no content"])


def auto_tool_calls(reply: Reply, ctx: Ctx) -> Verdict:
    ch = reply.only
    if not ch.tool_calls:
        return honoured_if([] if ch.text else ["neither content nor tool calls"], "answered in text")
    problems = tool_problems(ch.tool_calls, ctx.case.body["tools"])
    if ch.finish_reason != "tool_calls":
        problems.append(f"finish_reason {ch.finish_reason!r} with tool calls, not 'tool_calls'")
    return honoured_if(problems, f"{len(ch.tool_calls)} valid tool call(s)")


def forced_tool_calls(named: str | None, max_calls: int | None = None) -> Judge:
    """``required`` (``named`` None) or a named function: valid calls, only that one when named."""

    def judge(reply: Reply, ctx: Ctx) -> Verdict:
        ch = reply.only
        if not ch.tool_calls:
            return IGNORED, f"no tool_calls; content {ch.text!r:.80} (finish {ch.finish_reason})"
        problems = tool_problems(ch.tool_calls, ctx.case.body["tools"], named)
        if max_calls is not None and len(ch.tool_calls) > max_calls:
            problems.append(f"{len(ch.tool_calls)} calls with parallel_tool_calls false")
        if named is None and ch.finish_reason != "tool_calls":
            problems.append(f"finish_reason {ch.finish_reason!r}, not 'tool_calls'")
        ids = [c.id for c in ch.tool_calls]
        if not all(ids) or len(set(ids)) != len(ids):
            problems.append(f"tool call ids missing or repeated: {ids}")
        return honoured_if(problems, f"{len(ch.tool_calls)} valid call(s) to {ch.tool_calls[0].name}")

    return judge


def answered_with_history(reply: Reply, ctx: Ctx) -> Verdict:
    ch = reply.only
    problems = [] if ch.text or ch.tool_calls else ["no answer"]
    prompt_tokens = (reply.usage or {}).get("prompt_tokens") or 0
    if prompt_tokens < TOOL_RESULT_MIN_TOKENS:
        problems.append(f"prompt_tokens {prompt_tokens}: the tool message was not rendered")
    return honoured_if(problems, f"prompt_tokens {prompt_tokens}")


def _json_text(ch: Choice) -> tuple[Any, str | None]:
    try:
        return json.loads(ch.text or ""), None
    except ValueError:
        return None, f"not JSON: {ch.text!r:.80} (finish {ch.finish_reason})"


def json_object(reply: Reply, ctx: Ctx) -> Verdict:
    value, problem = _json_text(reply.only)
    if problem:
        return IGNORED, problem
    return honoured_if([] if isinstance(value, dict) else [f"JSON but not an object: {value!r:.60}"])


def json_schema(schema: dict[str, Any]) -> Judge:
    def judge(reply: Reply, ctx: Ctx) -> Verdict:
        value, problem = _json_text(reply.only)
        if problem:
            return IGNORED, problem
        try:
            jsonschema.validate(value, schema)
        except jsonschema.ValidationError as exc:
            return IGNORED, f"{reply.only.text!r:.60} does not validate: {exc.message:.80}"
        return HONOURED, reply.only.text or ""

    return judge


def full_match(pattern: str) -> Judge:
    def judge(reply: Reply, ctx: Ctx) -> Verdict:
        text = reply.only.text or ""
        ok = re.fullmatch(pattern, text) is not None
        return (HONOURED, repr(text)) if ok else (IGNORED, f"{text!r:.80} does not match {pattern!r}")

    return judge


def one_of(options: list[str]) -> Judge:
    def judge(reply: Reply, ctx: Ctx) -> Verdict:
        text = reply.only.text or ""
        return (
            (HONOURED, repr(text))
            if text in options
            else (IGNORED, f"{text!r:.80} is not one of the choices")
        )

    return judge


def reasoning_split(reply: Reply, ctx: Ctx) -> Verdict:
    ch = reply.only
    problems = []
    if not ch.reasoning:
        problems.append("no reasoning_content")
    if "<think>" in (ch.text or "") or "</think>" in (ch.text or ""):
        problems.append(f"think tags left in content: {ch.text!r:.80}")
    if ch.reasoning and "<think>" in ch.reasoning:
        problems.append("think tag left in reasoning_content")
    return honoured_if(problems, f"reasoning {ch.reasoning!r:.40}, content {ch.text!r:.40}")


def n_choices(n: int, prompts: int = 1) -> Judge:
    def judge(reply: Reply, ctx: Ctx) -> Verdict:
        want = n * prompts
        problems = []
        if sorted(reply.choices) != list(range(want)):
            problems.append(f"choice indices {sorted(reply.choices)}, want 0..{want - 1}")
        if not all(c.text for c in reply.choices.values()):
            problems.append("a choice has no text")
        completion_tokens = (reply.usage or {}).get("completion_tokens")
        max_tokens = ctx.case.body.get("max_tokens") or ctx.case.body.get("max_completion_tokens")
        if all(c.finish_reason == "length" for c in reply.choices.values()) and max_tokens:
            if completion_tokens != want * max_tokens:
                problems.append(f"usage.completion_tokens {completion_tokens}, want {want} x {max_tokens}")
        elif reply.usage is not None and (completion_tokens or 0) < want:
            problems.append(f"usage.completion_tokens {completion_tokens} < {want} choices")
        return honoured_if(problems, f"{len(reply.choices)} choices")

    return judge


def prompts_in_order(reply: Reply, ctx: Ctx) -> Verdict:
    """Each choice equals the same prompt sent alone (greedy), in prompt order."""
    problems = []
    n = ctx.case.body.get("n") or 1
    for p, prompt in enumerate(ctx.case.body["prompt"]):
        body = {k: v for k, v in ctx.case.body.items() if k not in ("stream", "stream_options")}
        alone = ctx.client.send("completions", {**body, "prompt": prompt, "n": 1})
        for i in range(n):
            got = reply.choices.get(p * n + i)
            if got is None or got.text != alone.only.text:
                problems.append(f"choice {p * n + i}: {got and got.text!r:.40} != prompt {p} alone")
    return honoured_if(problems, f"{len(reply.choices)} choices match their prompts")


def biased_to(token_text: str) -> Judge:
    def judge(reply: Reply, ctx: Ctx) -> Verdict:
        text = reply.only.text or ""
        tokens = (reply.usage or {}).get("completion_tokens") or 0
        ok = tokens > 0 and text == token_text * tokens
        return (HONOURED, repr(text)) if ok else (IGNORED, f"{text!r:.60}, want {tokens} x {token_text!r}")

    return judge


def chat_logprobs(k: int) -> Judge:
    def judge(reply: Reply, ctx: Ctx) -> Verdict:
        ch = reply.only
        entries = ch.logprobs or []
        problems = []
        completion_tokens = (reply.usage or {}).get("completion_tokens")
        if not entries:
            problems.append("no logprobs.content")
        elif completion_tokens is not None and len(entries) != completion_tokens:
            problems.append(f"{len(entries)} logprob entries for {completion_tokens} tokens")
        if entries and "".join(e["token"] for e in entries) != (ch.text or ""):
            problems.append("logprob tokens do not spell the content")
        for e in entries:
            if not (e.get("logprob") is not None and e["logprob"] <= 0):
                problems.append(f"bad logprob {e.get('logprob')}")
                break
            if len(e.get("top_logprobs") or []) != k:
                problems.append(f"{len(e.get('top_logprobs') or [])} top_logprobs, want {k}")
                break
        return honoured_if(problems, f"{len(entries)} tokens with {k} alternatives")

    return judge


def completion_logprobs(k: int, echo: bool = False, generated: bool = True) -> Judge:
    """``echo``: the prompt's tokens come first (the first without a logprob); ``generated`` False:
    ``max_tokens`` 0, only the prompt."""

    def judge(reply: Reply, ctx: Ctx) -> Verdict:
        ch = reply.only
        lp = ch.logprobs or {}
        tokens, values, tops = (
            lp.get("tokens") or [],
            lp.get("token_logprobs") or [],
            lp.get("top_logprobs") or [],
        )
        prompt = ctx.case.body.get("prompt") if echo else None
        problems = []
        if not tokens:
            return IGNORED, "no logprobs"
        if "".join(tokens) != (ch.text or ""):
            problems.append("logprob tokens do not spell the text")
        if not (len(tokens) == len(values) == len(tops)):
            problems.append(f"{len(tokens)} tokens, {len(values)} logprobs, {len(tops)} top_logprobs")
        if isinstance(prompt, str):
            if not (ch.text or "").startswith(prompt):
                problems.append(f"text {ch.text!r:.40} does not start with the prompt")
            if values and values[0] is not None:
                problems.append("the first prompt token has a logprob (want null)")
            if not generated and ch.text != prompt:
                problems.append(f"max_tokens 0 yet text {ch.text!r:.60} is not just the prompt")
        rest = values[1:] if isinstance(prompt, str) else values
        if any(v is None or v > 0 for v in rest):
            problems.append("a token without a valid logprob")
        if k and any(t is not None and len(t) < k for t in tops[1 if isinstance(prompt, str) else 0 :]):
            problems.append(f"fewer than {k} top_logprobs")
        # usage.completion_tokens may count the one token generated and dropped (vLLM reports 1).
        return honoured_if(problems, f"{len(tokens)} tokens")

    return judge


def echoed(reply: Reply, ctx: Ctx) -> Verdict:
    text, prompt = reply.only.text or "", ctx.case.body["prompt"]
    if not text.startswith(prompt):
        return IGNORED, f"{text!r:.60} does not start with the prompt"
    return honoured_if([] if len(text) > len(prompt) else ["nothing generated after the prompt"])


def best_of_counted(reply: Reply, ctx: Ctx) -> Verdict:
    """OpenAI bills every ``best_of`` candidate: usage is the only observable trace of them."""
    best_of, max_tokens = ctx.case.body["best_of"], ctx.case.body["max_tokens"]
    tokens = (reply.usage or {}).get("completion_tokens") or 0
    if tokens > max_tokens:
        return HONOURED, f"{tokens} completion tokens for {best_of} candidates"
    return IGNORED, f"usage counts {tokens} tokens: no trace of {best_of} candidates"


def models_listed(reply: Reply, ctx: Ctx) -> Verdict:
    problems, now = [], time.time()
    data = reply.body.get("data") or []
    if not any(m.get("id") == ctx.client.target.model for m in data):
        problems.append(f"{ctx.client.target.model} not listed")
    for m in data:
        created = m.get("created")
        if not isinstance(created, int) or not 1_600_000_000 < created <= now + 86400:
            problems.append(f"{m.get('id')}: created {created!r} is not a real time")
        if not isinstance(m.get("owned_by"), str) or not m.get("owned_by"):
            problems.append(f"{m.get('id')}: owned_by {m.get('owned_by')!r}")
        if m.get("object") != "model":
            problems.append(f"{m.get('id')}: object {m.get('object')!r}")
    return honoured_if(problems, ", ".join(f"{m.get('id')} owned_by {m.get('owned_by')}" for m in data))


def response_created(reply: Reply, ctx: Ctx) -> Verdict:
    problems = list(reply.problems)
    if reply.body.get("object") != "response":
        problems.append(f"object {reply.body.get('object')!r}")
    if reply.body.get("status") not in ("completed", "incomplete"):  # incomplete: max_output_tokens
        problems.append(f"status {reply.body.get('status')!r}")
    if not reply.only.text:
        problems.append("no output_text")
    return honoured_if(problems, f"{reply.only.text!r:.40}")


def follows_previous(reply: Reply, ctx: Ctx) -> Verdict:
    """The follow-up's input must hold the first turn: its input tokens cover both turns."""
    verdict = response_created(reply, ctx)
    if verdict[0] != HONOURED:
        return verdict
    first_usage = ctx.facts.scratch.get("first_response_usage") or {}
    need = (first_usage.get("input_tokens") or 0) + (first_usage.get("output_tokens") or 0)
    got = (reply.usage or {}).get("input_tokens") or 0
    if got < need:
        return IGNORED, f"input_tokens {got} < {need} of the first turn: the history was not used"
    return HONOURED, f"input_tokens {got} >= {need}"


def embedded(reply: Reply, ctx: Ctx) -> Verdict:
    data = sorted(reply.body.get("data") or [], key=lambda d: d.get("index", 0))
    inputs = ctx.case.body["input"]
    problems = []
    if [d.get("index") for d in data] != list(range(len(inputs))):
        problems.append(f"indices {[d.get('index') for d in data]}")
    vecs = [d.get("embedding") for d in data]
    if not all(isinstance(v, list) and v and all(isinstance(x, float) for x in v) for v in vecs):
        return IGNORED, "embeddings are not lists of floats"
    if len({len(v) for v in vecs if v}) != 1:
        problems.append("vectors of different sizes")
    if any(not all(math.isfinite(x) for x in v) for v in vecs if v):
        problems.append("non-finite values")
    if len(vecs) > 1 and vecs[0] == vecs[1]:
        problems.append("different inputs gave the same vector")
    return honoured_if(problems, f"{len(vecs)} vectors of {len(vecs[0]) if vecs and vecs[0] else 0} floats")


def accepted_means_ignored(reply: Reply, ctx: Ctx) -> Verdict:
    """For limits and unknown fields: answering at all means the limit or field was ignored."""
    return IGNORED, "accepted"


# ----- the rows ----------------------------------------------------------------------------------


@dataclass
class Facts:
    """Model-specific values some rows need, found once per run (tokenizer-based)."""

    bias_token_id: int
    bias_token_text: str
    scratch: dict[str, Any] = field(default_factory=dict)  # values a setup hands to its judge


@dataclass(frozen=True)
class Case:
    row: str
    section: str
    endpoint: str
    body: dict[str, Any]
    judge: Judge
    expect: frozenset[str] = frozenset({HONOURED})
    names: tuple[str, ...] = ()  # what a refusal must name (param or message), all of them
    via: str = "sdk"
    needs: str | None = None  # "embeddings": only with an embedding model
    deterministic: bool = False  # greedy or seeded: the output is compared across servers
    setup: Callable[[Client, Facts], dict[str, Any]] | None = None  # extra body fields, after a first call

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream"))

    @property
    def label(self) -> str:
        return f"{self.row} (stream)" if self.stream else self.row


def both(case: Case) -> list[Case]:
    """The case as sent, and streamed (usage included)."""
    streamed = {**case.body, "stream": True}
    if case.endpoint in ("chat", "completions"):
        streamed["stream_options"] = {"include_usage": True}
    return [case, replace(case, body=streamed)]


REFUSE = frozenset({REFUSED})
HONOUR_OR_REFUSE = frozenset({HONOURED, REFUSED})


def first_response(client: Client, facts: Facts) -> dict[str, Any]:
    first = client.send(
        "responses", {"input": "My name is Zorblax. Remember it.", "max_output_tokens": 16, "temperature": 0}
    )
    facts.scratch["first_response_usage"] = first.usage
    return {"previous_response_id": first.body.get("id")}


def build_cases(facts: Facts) -> list[Case]:
    bias = {str(facts.bias_token_id): 100}
    greedy: dict[str, Any] = {"temperature": 0}
    rows: list[Case] = []
    add = rows.extend

    # 1. tools
    add(both(Case("tools, tool_choice none", "tools", "chat", {"messages": ASK_WEATHER, "tools": [WEATHER], "tool_choice": "none", "max_tokens": 24, **greedy}, no_tool_calls)))  # fmt: skip
    add(both(Case("tools, tool_choice auto", "tools", "chat", {"messages": ASK_WEATHER, "tools": [WEATHER], "tool_choice": "auto", "max_tokens": 96, **greedy}, auto_tool_calls)))  # fmt: skip
    add(both(Case("tools, tool_choice required", "tools", "chat", {"messages": ASK_WEATHER, "tools": [WEATHER, TIME], "tool_choice": "required", "max_tokens": 200, **greedy}, forced_tool_calls(None))))  # fmt: skip
    add(both(Case("tools (strict), tool_choice required", "tools", "chat", {"messages": ASK_WEATHER, "tools": [WEATHER_STRICT], "tool_choice": "required", "max_tokens": 200, **greedy}, forced_tool_calls(None))))  # fmt: skip
    add(both(Case("tools, tool_choice named", "tools", "chat", {"messages": ASK_WEATHER, "tools": [WEATHER, TIME], "tool_choice": NAMED, "max_tokens": 200, **greedy}, forced_tool_calls("get_weather"))))  # fmt: skip
    add(both(Case("tools (strict), tool_choice named", "tools", "chat", {"messages": ASK_WEATHER, "tools": [WEATHER_STRICT], "tool_choice": NAMED, "max_tokens": 200, **greedy}, forced_tool_calls("get_weather"))))  # fmt: skip
    add(both(Case("parallel_tool_calls false, required", "tools", "chat", {"messages": ASK_WEATHER, "tools": [WEATHER, TIME], "tool_choice": "required", "parallel_tool_calls": False, "max_tokens": 200, **greedy}, forced_tool_calls(None, max_calls=1))))  # fmt: skip
    add(both(Case("tool call + tool message in history", "tools", "chat", {"messages": TOOL_HISTORY, "tools": [WEATHER], "max_tokens": 24, **greedy}, answered_with_history)))  # fmt: skip

    # 2. structured output
    schema_rf = {
        "type": "json_schema",
        "json_schema": {"name": "person", "schema": PERSON_SCHEMA, "strict": True},
    }
    add(both(Case("response_format json_object", "structured", "chat", {"messages": DESCRIBE, "response_format": {"type": "json_object"}, "max_tokens": 200, **greedy}, json_object)))  # fmt: skip
    add(both(Case("response_format json_schema strict", "structured", "chat", {"messages": DESCRIBE, "response_format": schema_rf, "max_tokens": 200, **greedy}, json_schema(PERSON_SCHEMA))))  # fmt: skip
    add([Case("completions response_format json_schema", "structured", "completions", {"prompt": "A person as JSON:", "response_format": schema_rf, "max_tokens": 200, **greedy}, json_schema(PERSON_SCHEMA))])  # fmt: skip
    add(both(Case("structured_outputs json", "structured", "chat", {"messages": DESCRIBE, "structured_outputs": {"json": PERSON_SCHEMA}, "max_tokens": 200, **greedy}, json_schema(PERSON_SCHEMA))))  # fmt: skip
    add(both(Case("structured_outputs regex", "structured", "chat", {"messages": HI, "structured_outputs": {"regex": REGEX}, "max_tokens": 20, **greedy}, full_match(REGEX))))  # fmt: skip
    add(both(Case("structured_outputs choice", "structured", "chat", {"messages": HI, "structured_outputs": {"choice": CHOICES}, "max_tokens": 20, **greedy}, one_of(CHOICES))))  # fmt: skip
    add(both(Case("structured_outputs grammar", "structured", "chat", {"messages": HI, "structured_outputs": {"grammar": GRAMMAR}, "max_tokens": 20, **greedy}, full_match(GRAMMAR_AS_REGEX))))  # fmt: skip
    for old, value, judge in [
        ("guided_json", PERSON_SCHEMA, json_schema(PERSON_SCHEMA)),
        ("guided_regex", REGEX, full_match(REGEX)),
        ("guided_choice", CHOICES, one_of(CHOICES)),
        ("guided_grammar", GRAMMAR, full_match(GRAMMAR_AS_REGEX)),
    ]:
        body = {"messages": HI, old: value, "max_tokens": 20, **greedy}
        add([Case(f"{old} (removed in vLLM 0.32)", "structured", "chat", body, judge, REFUSE, (old, "structured_outputs"))])  # fmt: skip

    # 3. reasoning: think tags forced by a regex, so that even a model that never thinks writes them
    add(both(Case("reasoning (think tags forced)", "reasoning", "chat", {"messages": HI, "structured_outputs": {"regex": THINK_REGEX}, "max_tokens": 60, **greedy}, reasoning_split)))  # fmt: skip

    # 4. sampling and scoring breadth
    sampled = {"temperature": 1.0, "seed": 7}
    add(both(Case("chat n=3", "sampling", "chat", {"messages": HI, "n": 3, "max_tokens": 8, **sampled}, n_choices(3), deterministic=True)))  # fmt: skip
    add(both(Case("completions n=2", "sampling", "completions", {"prompt": PROMPTS[0], "n": 2, "max_tokens": 8, **sampled}, n_choices(2), deterministic=True)))  # fmt: skip
    add(both(Case("chat logit_bias", "sampling", "chat", {"messages": HI, "logit_bias": bias, "max_tokens": 4, **greedy}, biased_to(facts.bias_token_text))))  # fmt: skip
    add([Case("completions logit_bias", "sampling", "completions", {"prompt": PROMPTS[0], "logit_bias": bias, "max_tokens": 4, **greedy}, biased_to(facts.bias_token_text))])  # fmt: skip
    add(both(Case("chat logprobs + top_logprobs 3", "sampling", "chat", {"messages": HI, "logprobs": True, "top_logprobs": 3, "max_tokens": 8, **greedy}, chat_logprobs(3), deterministic=True)))  # fmt: skip
    add(both(Case("completions logprobs 3", "sampling", "completions", {"prompt": PROMPTS[0], "logprobs": 3, "max_tokens": 8, **greedy}, completion_logprobs(3), deterministic=True)))  # fmt: skip
    # OpenAI documents at most 5 here, vLLM serves up to 20: either answer passes, the summary shows the gap.
    add([Case("completions logprobs 10 (OpenAI: max 5, vLLM: 20)", "sampling", "completions", {"prompt": PROMPTS[0], "logprobs": 10, "max_tokens": 4, **greedy}, completion_logprobs(10), HONOUR_OR_REFUSE, ("logprobs",), deterministic=True)])  # fmt: skip
    add(both(Case("completions list of prompts", "sampling", "completions", {"prompt": PROMPTS, "max_tokens": 6, **greedy}, prompts_in_order, deterministic=True)))  # fmt: skip
    add([Case("completions 2 prompts x n=2", "sampling", "completions", {"prompt": PROMPTS, "n": 2, "max_tokens": 6, **sampled}, n_choices(2, prompts=2), deterministic=True)])  # fmt: skip
    add(both(Case("completions echo", "sampling", "completions", {"prompt": PROMPTS[0], "echo": True, "max_tokens": 6, **greedy}, echoed, deterministic=True)))  # fmt: skip
    add([Case("completions echo + logprobs 1", "sampling", "completions", {"prompt": PROMPTS[0], "echo": True, "logprobs": 1, "max_tokens": 4, **greedy}, completion_logprobs(1, echo=True), deterministic=True)])  # fmt: skip
    add(both(Case("completions echo + logprobs + max_tokens 0", "sampling", "completions", {"prompt": PROMPTS[0], "echo": True, "logprobs": 1, "max_tokens": 0, **greedy}, completion_logprobs(1, echo=True, generated=False), deterministic=True)))  # fmt: skip
    add([Case("completions best_of 3", "sampling", "completions", {"prompt": PROMPTS[0], "best_of": 3, "max_tokens": 4, **sampled}, best_of_counted, HONOUR_OR_REFUSE, ("best_of",))])  # fmt: skip
    add([Case("/v1/models created + owned_by", "endpoints", "models", {}, models_listed, via="http")])  # fmt: skip

    # 5. more endpoints
    add(both(Case("/v1/responses create", "endpoints", "responses", {"input": "Say hello.", "max_output_tokens": 16, **greedy}, response_created)))  # fmt: skip
    add([Case("/v1/responses previous_response_id", "endpoints", "responses", {"input": "What is my name?", "max_output_tokens": 16, **greedy}, follows_previous, setup=first_response)])  # fmt: skip
    add([Case("/v1/responses unknown previous_response_id", "endpoints", "responses", {"input": "Hi", "previous_response_id": "resp_doesnotexist0000", "max_output_tokens": 8}, accepted_means_ignored, REFUSE, ("previous_response_id|resp_doesnotexist0000",))])  # fmt: skip
    add([Case("/v1/embeddings", "endpoints", "embeddings", {"input": ["The capital of France is Paris.", "Zebras have stripes."], "encoding_format": "float"}, embedded, needs="embeddings", deterministic=True)])  # fmt: skip

    # 6. limits and unknown fields: a 400 naming the field
    limit = {"messages": HI, "max_tokens": 4}
    limits: list[tuple[str, dict[str, Any], str]] = [
        ("temperature 3", {"temperature": 3}, "temperature"),
        ("top_p 1.5", {"top_p": 1.5}, "top_p"),
        ("presence_penalty 3", {"presence_penalty": 3}, "presence_penalty"),
        ("frequency_penalty -3", {"frequency_penalty": -3}, "frequency_penalty"),
        ("top_logprobs 21", {"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ("n 0", {"n": 0}, "n"),
        ("logit_bias 150", {"logit_bias": {str(facts.bias_token_id): 150}}, "logit_bias"),
        ("stop with 5 sequences", {"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ("messages empty", {"messages": []}, "messages"),
        ("max_tokens -1", {"max_tokens": -1}, "max_tokens"),
        ("tool name 'get weather!'", {"tools": [tool("get weather!", "bad name", WEATHER_PARAMS)]}, "tools"),
    ]
    for label, extra, name in limits:
        add([Case(f"limit: {label}", "limits", "chat", {**limit, **extra}, accepted_means_ignored, REFUSE, (name,))])  # fmt: skip
    add([Case("limit: completions logprobs 21", "limits", "completions", {"prompt": PROMPTS[0], "logprobs": 21, "max_tokens": 4}, accepted_means_ignored, REFUSE, ("logprobs",))])  # fmt: skip
    add([Case("unknown field", "limits", "chat", {**limit, "frobnicate_level": 3}, accepted_means_ignored, REFUSE, ("frobnicate_level",), via="http")])  # fmt: skip
    return rows


# ----- running -----------------------------------------------------------------------------------


@dataclass
class Result:
    case: Case
    outcome: str
    note: str
    seconds: float
    output: Any = None  # deterministic rows: what is compared across servers (``same_output``)

    @property
    def passed(self) -> bool:
        return self.outcome in self.case.expect

    def cell(self) -> str:
        if self.outcome == SKIPPED:
            return "n/a"
        mark = "PASS" if self.passed else "FAIL"
        return f"{mark} {self.outcome}"


def _mentions(text: str, name: str) -> bool:
    return re.search(rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])", text) is not None


def judge_refusal(status: int, payload: Any, names: Iterable[str]) -> Verdict:
    err = payload.get("error") if isinstance(payload, dict) else None
    if not (
        isinstance(err, dict)
        and isinstance(err.get("message"), str)
        and isinstance(err.get("type"), str)
        and "param" in err
        and "code" in err
    ):
        return ERROR, f"{status} without OpenAI's error shape: {str(payload)[:160]}"
    said = f"{err.get('param') or ''} {err['message']}"
    missing = [n for n in names if not any(_mentions(said, alt) for alt in n.split("|"))]
    note = f"{status} param={err.get('param')!r}: {err['message'][:160]}"
    if status >= 500:
        return ERROR, note
    if missing:
        return ERROR, f"{note} (does not name {', '.join(missing)})"
    return REFUSED, note


def comparable_output(reply: Reply) -> Any:
    """Per choice: index, text and logprob tokens; for embeddings, the vectors."""
    if "data" in reply.body and not reply.choices:
        return [d.get("embedding") for d in sorted(reply.body["data"], key=lambda d: d.get("index", 0))]
    out = []
    for i in sorted(reply.choices):
        ch = reply.choices[i]
        lp = ch.logprobs
        tokens = [e["token"] for e in lp] if isinstance(lp, list) else (lp or {}).get("tokens")
        out.append([i, ch.text, tokens])
    return out


def same_output(a: Any, b: Any) -> bool:
    """Equal, except vectors of floats: within 1e-4 of each other."""
    vectors = (
        isinstance(a, list) and a and all(isinstance(v, list) and v and isinstance(v[0], float) for v in a)
    )
    if not vectors or not isinstance(b, list) or len(a) != len(b):
        return bool(a == b)
    return all(
        len(u) == len(v) and all(abs(x - y) < 1e-4 for x, y in zip(u, v, strict=True))
        for u, v in zip(a, b, strict=True)
    )


def run_case(client: Client, case: Case, facts: Facts) -> Result:
    t0 = time.monotonic()
    if case.needs == "embeddings" and not client.target.embedding_model:
        return Result(case, SKIPPED, "no embedding model given", 0.0)
    try:
        body = dict(case.body)
        if case.setup is not None:
            body.update(case.setup(client, facts))
        reply = client.send(case.endpoint, body, case.via)
        if reply.problems:
            return Result(
                case, ERROR, "malformed stream: " + "; ".join(reply.problems), time.monotonic() - t0
            )
        outcome, note = case.judge(reply, Ctx(client, case, facts))
        out = comparable_output(reply) if case.deterministic else None
        return Result(case, outcome, note, time.monotonic() - t0, out)
    except Refusal as exc:
        outcome, note = judge_refusal(exc.status, exc.body, case.names)
    except (openai.APIError, httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
        outcome, note = ERROR, f"{type(exc).__name__}: {str(exc)[:200]}"
    except Exception as exc:  # one row's surprise must not stop the table
        outcome, note = (
            ERROR,
            f"{type(exc).__name__}: {str(exc)[:200]} ({traceback.format_exc(limit=-1).strip()[-160:]})",
        )
    return Result(case, outcome, note, time.monotonic() - t0)


def run_all(target: Target, cases: list[Case], facts: Facts, verbose: bool = True) -> list[Result]:
    client = Client(target)
    results = []
    try:
        for i, case in enumerate(cases, 1):
            res = run_case(client, case, facts)
            results.append(res)
            if verbose:
                print(
                    f"[{target.name}] {i:>3}/{len(cases)} {case.label:<55} {res.cell():<14} "
                    f"{res.seconds:5.1f}s  {one_line(res.note)[:140]}",
                    flush=True,
                )
    finally:
        client.close()
    return results


def failed_start(cases: list[Case], why: str) -> list[Result]:
    return [Result(c, ERROR, why, 0.0) for c in cases]


# ----- facts about the model ---------------------------------------------------------------------


def model_facts(tokenizer_dir: str, word: str = " banana") -> Facts:
    """The token whose logit ``logit_bias`` rows push: ``word`` as one token of this tokenizer."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(tokenizer_dir) / "tokenizer.json"))
    ids = tok.encode(word, add_special_tokens=False).ids
    token_id = ids[0]
    return Facts(token_id, tok.decode([token_id]))


def prepared_smollm2(tokenizer_only: bool) -> str:
    import subprocess

    argv = [sys.executable, "-m", "dynamo.models", "prepare", "smollm2", "--quiet"]
    if tokenizer_only:
        argv.append("--tokenizer-only")
    out = subprocess.run(argv, capture_output=True, text=True, check=True, cwd=ROOT, timeout=900)
    return out.stdout.strip().splitlines()[-1]


def served_model(url: str) -> str:
    data = httpx.get(f"{url}/v1/models", timeout=30).json()
    return str(data["data"][0]["id"])


# ----- report ------------------------------------------------------------------------------------


def table(columns: dict[str, list[Result]], compare: tuple[str, str] | None = None) -> list[str]:
    names = list(columns)
    head = "| # | section | request | endpoint | " + " | ".join(names) + " |"
    sep = "|---|---|---|---|" + "---|" * len(names)
    if compare:
        head += " same output |"
        sep += "---|"
    lines = [head, sep]
    first = columns[names[0]]
    for i, res in enumerate(first):
        cells = [columns[n][i].cell() for n in names]
        line = f"| {i + 1} | {res.case.section} | {res.case.label} | {res.case.endpoint} | " + " | ".join(
            cells
        )
        if compare:
            a, b = (columns[n][i].output for n in compare)
            line += " | " + ("" if a is None or b is None else "yes" if same_output(a, b) else "**no**")
        lines.append(line + " |")
    return lines


def one_line(text: str) -> str:
    return " ".join(text.split())


def notes(columns: dict[str, list[Result]]) -> list[str]:
    out = []
    for name, results in columns.items():
        out.append(f"{name}:")
        out += [f"  {i + 1:>3}. {r.outcome}: {one_line(r.note)}" for i, r in enumerate(results) if r.note]
    return out


def summary(columns: dict[str, list[Result]], ours: str = "ours", ref: str = "vllm") -> list[str]:
    out = []
    for name, results in columns.items():
        ran = [r for r in results if r.outcome != SKIPPED]
        passed = sum(r.passed for r in ran)
        out.append(f"- {name}: {passed}/{len(ran)} rows pass")
    if ours in columns and ref in columns:
        gaps = [
            f"{i + 1}. {a.case.label}"
            for i, (a, b) in enumerate(zip(columns[ours], columns[ref], strict=True))
            if b.outcome == HONOURED and a.outcome != HONOURED
        ]
        out.append(
            f"- rows {ref} honours and {ours} does not: {len(gaps)}"
            + (" (" + "; ".join(gaps) + ")" if gaps else "")
        )
    return out


def render(args: argparse.Namespace, header: list[str], columns: dict[str, list[Result]]) -> str:
    compare = ("ours", "vllm") if {"ours", "vllm"} <= set(columns) else None
    lines = [
        "# api_conformance (generated)",
        "",
        *header,
        f"- command: `{' '.join(sys.argv)}`",
        "",
        *summary(columns),
        "",
        *table(columns, compare),
        "",
        "<details><summary>notes per row</summary>",
        "",
        "```",
        *notes(columns),
        "```",
        "</details>",
        "",
    ]
    return "\n".join(lines)


# ----- side by side ------------------------------------------------------------------------------


def side_by_side(
    args: argparse.Namespace, cases: list[Case], facts: Facts
) -> tuple[list[str], dict[str, list[Result]]]:
    from benchmarks.vllm_overhead import Engine, Stack, hold_engine_lock, start_ours, start_vllm

    model_path = args.model_path or prepared_smollm2(tokenizer_only=False)
    engine = Engine(
        model_path=model_path,
        served_name=args.model or "smollm2",
        cores=args.cores,
        dtype=args.dtype,
        max_model_len=args.max_model_len,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        kv_cache_gib=args.kv_cache_gib,
    )
    os.environ["VLLM_ENABLE_RESPONSES_API_STORE"] = "1"  # vLLM's previous_response_id needs its store
    ours_worker = [*args.ours_worker_arg]
    if args.tool_call_parser:
        ours_worker += ["--dyn-tool-call-parser", args.tool_call_parser]
    if args.ours_reasoning_parser:
        ours_worker += ["--dyn-reasoning-parser", args.ours_reasoning_parser]
    vllm_extra = [*args.vllm_arg]
    if args.tool_call_parser:
        vllm_extra += ["--enable-auto-tool-choice", "--tool-call-parser", args.tool_call_parser]
    if args.vllm_reasoning_parser:
        vllm_extra += ["--reasoning-parser", args.vllm_reasoning_parser]
    starters: dict[str, Callable[[Engine, list[str]], Stack]] = {
        "vllm": lambda e, extra: start_vllm(e, [*vllm_extra, *extra]),
        "ours": lambda e, extra: start_ours(e, [*ours_worker, *extra], args.frontend_arg),
    }
    header = [
        f"- date: {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- engine (both stacks): `{' '.join(engine.flags()[2:])}`, "
        f"`VLLM_CPU_KVCACHE_SPACE={engine.kv_cache_gib}`, cores {engine.cores}",
        f"- vllm: `vllm.entrypoints.openai.api_server {' '.join(vllm_extra)}`, "
        "`VLLM_ENABLE_RESPONSES_API_STORE=1`",
        f"- ours: `dynamo.frontend {' '.join(args.frontend_arg)}` + `dynamo.vllm {' '.join(ours_worker)}` "
        "(file discovery, TCP request plane)",
        f"- logit_bias token: {facts.bias_token_id} ({facts.bias_token_text!r})",
    ]
    gen_cases = [c for c in cases if c.needs != "embeddings"]
    emb_cases = [c for c in cases if c.needs == "embeddings"]
    emb_engine = None
    if args.embedding_model_path:
        emb_engine = replace(
            engine, model_path=args.embedding_model_path, served_name=engine.served_name + "-embed"
        )
        header.append(
            f"- embeddings: `{args.embedding_model_path}` with `{' '.join(args.embedding_arg)}` on both"
        )
    lock = hold_engine_lock()
    columns: dict[str, list[Result]] = {}
    try:
        for name in [s.strip() for s in args.stacks.split(",")]:
            phases: list[tuple[Engine, list[str], list[Case]]] = [(engine, [], gen_cases)]
            if emb_engine is not None:
                phases.append((emb_engine, list(args.embedding_arg), emb_cases))
            results: dict[int, Result] = {}
            for eng, extra, phase_cases in phases:
                stack = starters[name](eng, extra)
                try:
                    t0 = time.monotonic()
                    try:
                        stack.wait_ready(args.start_timeout)
                    except (RuntimeError, TimeoutError) as exc:
                        print(f"{name}: {exc}\n{stack.log_tails()}", file=sys.stderr, flush=True)
                        for c, r in zip(
                            phase_cases, failed_start(phase_cases, f"stack did not start: {exc}"), strict=True
                        ):
                            results[id(c)] = r
                        continue
                    print(f"{name} ready in {time.monotonic() - t0:.0f} s", flush=True)
                    target = Target(
                        name,
                        stack.url,
                        engine.served_name,
                        emb_engine.served_name if eng is emb_engine and emb_engine is not None else None,
                    )
                    for c, r in zip(phase_cases, run_all(target, phase_cases, facts), strict=True):
                        results[id(c)] = r
                finally:
                    stack.stop()
            columns[name] = [
                results.get(id(c)) or Result(c, SKIPPED, "no embedding model given", 0.0) for c in cases
            ]
    finally:
        if lock is not None:
            os.close(lock)
    return header, columns


# ----- main --------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from dynamo.vllm.args import CPU_DEFAULT_DTYPE, CPU_DEFAULT_KVCACHE_SPACE_GIB

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--url", help="an OpenAI server's base URL (without /v1)")
    mode.add_argument(
        "--side-by-side", action="store_true", help="start vLLM's server and ours, one after the other"
    )
    p.add_argument(
        "--model", default=None, help="served model name (default: the server's first; side-by-side: smollm2)"
    )
    p.add_argument(
        "--embedding-model", default=None, help="--url: the served embedding model (else those rows are n/a)"
    )
    p.add_argument(
        "--tokenizer",
        default=None,
        help="tokenizer folder for the logit_bias rows (default: the model's, else SmolLM2's)",
    )
    p.add_argument("--name", default="server", help="--url: the column's name")
    p.add_argument(
        "--rows", default=None, help="only rows whose label contains one of these comma-separated words"
    )
    p.add_argument("--out", default=None, help="also write the table as markdown here")
    side = p.add_argument_group("--side-by-side")
    side.add_argument("--stacks", default="vllm,ours", help="which stacks, in order")
    side.add_argument("--model-path", default=None, help="model folder (default: the prepared smollm2)")
    side.add_argument(
        "--embedding-model-path",
        default=None,
        help="also start each stack as an embedding server on this model",
    )
    side.add_argument(
        "--embedding-arg",
        action="append",
        default=None,
        help="flags for the embedding phase (default: --runner pooling)",
    )
    side.add_argument(
        "--tool-call-parser",
        default="hermes",
        help="ours: --dyn-tool-call-parser, vLLM: --tool-call-parser ('' for none)",
    )
    side.add_argument(
        "--ours-reasoning-parser", default="basic", help="ours: --dyn-reasoning-parser ('' for none)"
    )
    side.add_argument(
        "--vllm-reasoning-parser",
        default="",
        help="vLLM: --reasoning-parser (SmolLM2 has no think tokens: none)",
    )
    side.add_argument("--ours-worker-arg", action="append", default=[], help="extra flag for dynamo.vllm")
    side.add_argument("--frontend-arg", action="append", default=[], help="extra flag for dynamo.frontend")
    side.add_argument("--vllm-arg", action="append", default=[], help="extra flag for vLLM's server")
    side.add_argument("--cores", default="0-1")
    side.add_argument("--dtype", default=CPU_DEFAULT_DTYPE)
    side.add_argument("--max-model-len", type=int, default=2048)
    side.add_argument("--max-num-seqs", type=int, default=8)
    side.add_argument("--max-num-batched-tokens", type=int, default=2048)
    side.add_argument("--kv-cache-gib", default=CPU_DEFAULT_KVCACHE_SPACE_GIB)
    side.add_argument("--start-timeout", type=float, default=300.0)
    return p


def main() -> None:
    args = build_parser().parse_args()
    if args.embedding_arg is None:
        args.embedding_arg = ["--runner", "pooling"]
    tokenizer = args.tokenizer or args.model_path or prepared_smollm2(tokenizer_only=True)
    facts = model_facts(tokenizer)
    cases = build_cases(facts)
    if args.rows:
        words = [w.strip() for w in args.rows.split(",") if w.strip()]
        cases = [c for c in cases if any(w in c.label for w in words)]
    if args.side_by_side:
        header, columns = side_by_side(args, cases, facts)
    else:
        target = Target(
            args.name, args.url.rstrip("/"), args.model or served_model(args.url), args.embedding_model
        )
        header = [
            f"- date: {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
            f"- server: {target.url}, model {target.model}",
            f"- logit_bias token: {facts.bias_token_id} ({facts.bias_token_text!r})",
        ]
        columns = {args.name: run_all(target, cases, facts)}
    text = render(args, header, columns)
    print("\n" + text)
    if args.out:
        Path(args.out).write_text(text)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
