"""Request shapes and answer checks shared by the SDK tests (real vLLM worker and mocker alike).

The shapes are the ones ``benchmarks/api_conformance.py`` sends: a weather tool with a strict
parameter schema, a person JSON schema, a regex, a choice list, a grammar, two completion
prompts. Streams are folded into the same summary a non-streamed answer gives, so one assertion
checks both.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jsonschema
import openai

MODEL = "SmolLM2-135M-Instruct"
MOCK_MODEL = "smol-mock"

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
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": WEATHER_PARAMS,
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Get the current time in a timezone",
        "parameters": TIME_PARAMS,
    },
}
TOOLS = [WEATHER, TIME]
NAMED = {"type": "function", "function": {"name": "get_weather"}}
ASK_WEATHER = [{"role": "user", "content": "What is the weather like in Paris today?"}]
HI = [{"role": "user", "content": "Say hello."}]
DESCRIBE = [{"role": "user", "content": "Describe a fictional person as JSON with a name and an age."}]

TOOL_RESULT = json.dumps(
    {
        "city": "Paris",
        "temperature": 18,
        "unit": "celsius",
        "forecast": [
            {"day": d, "sky": s}
            for d, s in [("monday", "sunny"), ("tuesday", "cloudy"), ("wednesday", "light rain")]
        ],
    }
)
CALL_ID = "call_abc123def456ghi789jkl012"
TOOL_HISTORY = [
    *ASK_WEATHER,
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": CALL_ID,
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": CALL_ID, "content": TOOL_RESULT},
]

PERSON_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 30},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}
PERSON_FORMAT = {
    "type": "json_schema",
    "json_schema": {"name": "person", "schema": PERSON_SCHEMA, "strict": True},
}
REGEX = r"[0-9]{3}-[a-z]{2}"
CHOICES = ["zebra-alpha", "zebra-beta", "zebra-gamma"]
GRAMMAR = 'root ::= ("yes" | "no") " " [0-9] [0-9]'
GRAMMAR_AS_REGEX = r"(yes|no) [0-9][0-9]"
THINK_REGEX = r"<think>[a-z ]{3,40}</think>[A-Za-z ]{3,40}"
PROMPTS = ["The capital of France is", "One, two, three, four,"]
REMOVED_GUIDED = {
    "guided_json": PERSON_SCHEMA,
    "guided_regex": REGEX,
    "guided_choice": CHOICES,
    "guided_grammar": GRAMMAR,
}


# ----- folding answers ---------------------------------------------------------------------------


def chat_summary(answer: Any) -> dict[int, dict[str, Any]]:
    """Per choice index: content, reasoning, tool_calls [{id, name, arguments}], finish_reason and
    logprobs (token entries), from a ``ChatCompletion`` or from a list of streamed chunks. Streamed
    tool calls also record ``first_delta`` (the keys of each call's first delta)."""
    if not isinstance(answer, list):
        body = answer.model_dump() if hasattr(answer, "model_dump") else answer
        out = {}
        for c in body["choices"]:
            msg = c["message"]
            out[c["index"]] = {
                "content": msg.get("content"),
                "reasoning": msg.get("reasoning_content") or msg.get("reasoning"),
                "tool_calls": [
                    {"id": t["id"], "name": t["function"]["name"], "arguments": t["function"]["arguments"]}
                    for t in msg.get("tool_calls") or []
                ],
                "finish_reason": c["finish_reason"],
                "logprobs": (c.get("logprobs") or {}).get("content"),
            }
        return out
    folded: dict[int, dict[str, Any]] = {}
    for chunk in answer:
        body = chunk.model_dump() if hasattr(chunk, "model_dump") else chunk
        for c in body.get("choices") or []:
            ch = folded.setdefault(
                c["index"],
                {
                    "content": None,
                    "reasoning": None,
                    "tool_calls": [],
                    "finish_reason": None,
                    "logprobs": None,
                },
            )
            delta = c.get("delta") or {}
            if delta.get("content"):
                ch["content"] = (ch["content"] or "") + delta["content"]
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if reasoning:
                ch["reasoning"] = (ch["reasoning"] or "") + reasoning
            for d in delta.get("tool_calls") or []:
                fn = d.get("function") or {}
                if d["index"] == len(ch["tool_calls"]):
                    ch["tool_calls"].append(
                        {
                            "id": d.get("id"),
                            "name": fn.get("name"),
                            "arguments": "",
                            "first_delta": sorted(k for k in ("id", "name") if (d.get(k) or fn.get(k))),
                        }
                    )
                ch["tool_calls"][d["index"]]["arguments"] += fn.get("arguments") or ""
            if (c.get("logprobs") or {}).get("content"):
                ch["logprobs"] = (ch["logprobs"] or []) + c["logprobs"]["content"]
            if c.get("finish_reason"):
                ch["finish_reason"] = c["finish_reason"]
    return folded


def completion_summary(answer: Any) -> dict[int, dict[str, Any]]:
    """Per choice index: text, finish_reason and logprobs ({tokens, token_logprobs, top_logprobs})."""
    chunks = answer if isinstance(answer, list) else [answer]
    folded: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        body = chunk.model_dump() if hasattr(chunk, "model_dump") else chunk
        for c in body.get("choices") or []:
            ch = folded.setdefault(c["index"], {"text": "", "finish_reason": None, "logprobs": None})
            ch["text"] += c.get("text") or ""
            lp = c.get("logprobs")
            if lp and lp.get("tokens") is not None:
                acc = ch["logprobs"] or {"tokens": [], "token_logprobs": [], "top_logprobs": []}
                for key in acc:
                    acc[key] += lp.get(key) or []
                ch["logprobs"] = acc
            if c.get("finish_reason"):
                ch["finish_reason"] = c["finish_reason"]
    return folded


def usage_of(answer: Any) -> dict[str, Any] | None:
    """The usage of an answer, or of the stream's usage chunk."""
    chunks = answer if isinstance(answer, list) else [answer]
    for chunk in reversed(chunks):
        body = chunk.model_dump() if hasattr(chunk, "model_dump") else chunk
        if body.get("usage"):
            return body["usage"]
    return None


# ----- checks ------------------------------------------------------------------------------------


def tool_call_problems(
    calls: list[dict[str, Any]], tools: list[dict[str, Any]], named: str | None = None
) -> list[str]:
    """Why these calls do not satisfy the tools: unknown or other than the named function,
    arguments that are not JSON or do not validate against the function's parameters."""
    params = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
    problems = []
    for call in calls:
        if call["name"] not in params:
            problems.append(f"unknown function {call['name']!r}")
            continue
        if named is not None and call["name"] != named:
            problems.append(f"called {call['name']!r}, not {named!r}")
        try:
            jsonschema.validate(json.loads(call["arguments"]), params[call["name"]])
        except (ValueError, jsonschema.ValidationError) as exc:
            problems.append(f"{call['arguments']!r}: {exc}")
    return problems


def error_body(exc: openai.APIStatusError) -> dict[str, Any]:
    """The ``error`` object of a refusal, checked to have OpenAI's four keys."""
    body = exc.response.json()
    err = body["error"]
    assert set(err) >= {"message", "type", "param", "code"}, body
    assert isinstance(err["message"], str) and err["message"], body
    return err


def assert_names(err: dict[str, Any], *names: str) -> None:
    """Each name appears, as a whole word, in the error's ``param`` or message; ``a|b``: either."""
    said = f"{err.get('param') or ''} {err['message']}"
    for name in names:
        assert any(
            re.search(rf"(?<![A-Za-z0-9_]){re.escape(alt)}(?![A-Za-z0-9_])", said) for alt in name.split("|")
        ), f"{name!r} not named in {err}"


def create(client: openai.OpenAI, endpoint: str, body: dict[str, Any]) -> Any:
    """``client.<endpoint>.create(**body)``; fields the SDK has no parameter for go in ``extra_body``.
    A streamed answer is returned as the list of its chunks or events."""
    fn = {
        "chat": client.chat.completions.create,
        "completions": client.completions.create,
        "responses": client.responses.create,
        "embeddings": client.embeddings.create,
    }[endpoint]
    known = inspect.signature(fn).parameters
    kwargs = {k: v for k, v in body.items() if k in known}
    extra = {k: v for k, v in body.items() if k not in known}
    answer = fn(**kwargs, extra_body=extra or None)  # type: ignore[operator]
    return list(answer) if body.get("stream") else answer


def refusal(client: openai.OpenAI, endpoint: str, body: dict[str, Any], status: int = 400) -> dict[str, Any]:
    """Send ``body``, expect an ``APIStatusError`` with ``status`` and OpenAI's error shape; its ``error``."""
    try:
        answer = create(client, endpoint, body)
    except openai.APIStatusError as exc:
        assert exc.status_code == status, (exc.status_code, exc.response.text)
        return error_body(exc)
    raise AssertionError(f"accepted instead of a {status}: {str(answer)[:300]}")


BASES: dict[str, dict[str, Any]] = {
    "chat": {"messages": HI, "max_tokens": 4},
    "completions": {"prompt": PROMPTS[0], "max_tokens": 4},
    "responses": {"input": "Say hello.", "max_output_tokens": 8},
}
# (id, endpoint, fields on top of BASES[endpoint], what the 400 must name): the limits the OpenAI
# API reference documents, and fields nobody serves.
LIMITS: list[tuple[str, str, dict[str, Any], tuple[str, ...]]] = [
    ("chat temperature 3", "chat", {"temperature": 3}, ("temperature",)),
    ("chat top_p 1.5", "chat", {"top_p": 1.5}, ("top_p",)),
    ("chat presence_penalty 3", "chat", {"presence_penalty": 3}, ("presence_penalty",)),
    ("chat frequency_penalty -3", "chat", {"frequency_penalty": -3}, ("frequency_penalty",)),
    ("chat top_logprobs 21", "chat", {"logprobs": True, "top_logprobs": 21}, ("top_logprobs",)),
    ("chat n 0", "chat", {"n": 0}, ("n",)),
    ("chat n 129", "chat", {"n": 129}, ("n",)),
    ("chat logit_bias 150", "chat", {"logit_bias": {"100": 150}}, ("logit_bias",)),
    ("chat logit_bias not a token id", "chat", {"logit_bias": {"banana": 1}}, ("logit_bias",)),
    ("chat logit_bias id beyond the vocabulary", "chat", {"logit_bias": {"99999999": 1}}, ("logit_bias",)),
    ("chat stop with 5 sequences", "chat", {"stop": ["a", "b", "c", "d", "e"]}, ("stop",)),
    ("chat messages empty", "chat", {"messages": []}, ("messages",)),
    ("chat max_tokens -1", "chat", {"max_tokens": -1}, ("max_tokens",)),
    (
        "chat tool name with a space",
        "chat",
        {"tools": [{"type": "function", "function": {"name": "get weather", "parameters": WEATHER_PARAMS}}]},
        ("tools",),
    ),
    ("chat tool_choice without tools", "chat", {"tool_choice": "required"}, ("tool_choice",)),
    (
        "chat named tool not in tools",
        "chat",
        {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
        ("tool_choice",),
    ),
    ("chat unknown field", "chat", {"frobnicate_level": 3}, ("frobnicate_level",)),
    ("completions logprobs 21", "completions", {"logprobs": 21}, ("logprobs",)),
    ("completions n 0", "completions", {"n": 0}, ("n",)),
    ("completions temperature 3", "completions", {"temperature": 3}, ("temperature",)),
    ("completions unknown field", "completions", {"frobnicate_level": 3}, ("frobnicate_level",)),
    ("responses temperature 3", "responses", {"temperature": 3}, ("temperature",)),
    ("responses top_p 1.5", "responses", {"top_p": 1.5}, ("top_p",)),
    ("responses unknown field", "responses", {"frobnicate_level": 3}, ("frobnicate_level",)),
]


def fetch_all(calls: dict[str, Callable[[], Any]], workers: int = 16) -> dict[str, Any]:
    """Run independent requests at once (the engine batches them); each value is the answer or the
    exception the call raised. Streams must be consumed inside the callable (``list(stream)``)."""

    def run(fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as exc:  # kept and raised by the test that reads it
            return exc

    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {name: pool.submit(run, fn) for name, fn in calls.items()}
        return {name: f.result() for name, f in futures.items()}


def get(answers: dict[str, Any], name: str) -> Any:
    """An answer from ``fetch_all``, raising the exception it ended with."""
    value = answers[name]
    if isinstance(value, BaseException):
        raise value
    return value


def stream_list(stream: Iterable[Any]) -> list[Any]:
    return list(stream)
