"""Several choices per request, end to end (real frontend + mocker processes, file discovery): ``n``
and lists of prompts fan out to separate generations and come back as one response (streamed:
merged events, each with its index, one usage event; not streamed: choices in index order), usage
counts each prompt once, completions ``echo`` puts the prompt first, reasoning is split out, and
one request is one request in the metrics. Every body and event is checked against the response
types ``/openapi.json`` publishes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from dynamo.llm import openai
from tests.support.graph import Frontend, discovery_env, metric_value, start_mocker
from tests.support.procs import ManagedProcess

pytestmark = [pytest.mark.timeout(180)]
PLAIN = "smol-choices"
THINKING = "smol-choices-think"  # served with a reasoning parser (and a tool-call parser)
CHAT = [{"role": "user", "content": "What is the capital of France?"}]


@dataclass
class Stack:
    frontend: Frontend
    workers: list[ManagedProcess]

    @property
    def url(self) -> str:
        return self.frontend.url


@pytest.fixture(scope="module")
def stack(log_dir: Path, smollm2_tokenizer_dir: Path, tmp_path_factory) -> Iterator[Stack]:
    env = discovery_env("file")
    env["DYN_FILE_DISCOVERY_DIR"] = str(tmp_path_factory.mktemp("discovery-choices"))
    workers: list[ManagedProcess] = []
    frontend: Frontend | None = None
    try:
        workers.append(
            start_mocker(
                log_dir,
                env,
                smollm2_tokenizer_dir,
                "mocker-choices",
                "--model-name",
                PLAIN,
                "--speedup-ratio",
                "50",
            )
        )
        workers.append(
            start_mocker(
                log_dir,
                env,
                smollm2_tokenizer_dir,
                "mocker-choices-think",
                "--model-name",
                THINKING,
                "--speedup-ratio",
                "50",
                "--dyn-reasoning-parser",
                "deepseek_r1",
                "--dyn-tool-call-parser",
                "hermes",
            )
        )
        frontend = Frontend(log_dir, env, name="frontend-choices")
        frontend.wait_for_instances(2)
        yield Stack(frontend, workers)
    finally:
        if frontend is not None:
            frontend.stop()
        for worker in workers:
            worker.stop()


def post(stack: Stack, path: str, body: dict[str, Any]) -> dict[str, Any]:
    r = httpx.post(f"{stack.url}{path}", json=body, timeout=60)
    assert r.status_code == 200, r.text
    response_type = openai.ChatCompletionResponse if "chat" in path else openai.CompletionResponse
    response_type.model_validate(r.json())
    return r.json()


def stream(stack: Stack, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    r = httpx.post(f"{stack.url}{path}", json={**body, "stream": True}, timeout=60)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream"), r.text
    lines = [line for line in r.text.splitlines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(line[6:]) for line in lines[:-1]]
    chunk_type = openai.ChatCompletionChunk if "chat" in path else openai.CompletionChunk
    for event in events:
        assert "error" not in event, event
        chunk_type.model_validate(event)
    return events


def prompt_tokens(stack: Stack, prompt: Any) -> int:
    """Prompt tokens of one completions prompt, as the frontend counts them (a 1-token request)."""
    body = post(stack, "/v1/completions", {"model": PLAIN, "prompt": prompt, "max_tokens": 1})
    return int(body["usage"]["prompt_tokens"])


def test_n_chat_choices_come_back_in_index_order_with_usage_summed(stack: Stack) -> None:
    single = post(stack, "/v1/chat/completions", {"model": PLAIN, "messages": CHAT, "max_tokens": 4})
    body = post(stack, "/v1/chat/completions", {"model": PLAIN, "messages": CHAT, "max_tokens": 4, "n": 3})
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    assert all(
        c["finish_reason"] == "length" and c["message"]["role"] == "assistant" for c in body["choices"]
    )
    assert body["usage"]["prompt_tokens"] == single["usage"]["prompt_tokens"]  # the prompt, once
    assert body["usage"]["completion_tokens"] == 3 * 4
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + 12


def test_n_streamed_choices_merge_into_one_stream_with_one_usage_event(stack: Stack) -> None:
    events = stream(
        stack,
        "/v1/chat/completions",
        {
            "model": PLAIN,
            "messages": CHAT,
            "max_tokens": 5,
            "n": 2,
            "stream_options": {"include_usage": True},
        },
    )
    usage = [e for e in events if e.get("usage")]
    assert len(usage) == 1 and usage[0] is events[-1] and usage[0]["choices"] == []
    assert usage[0]["usage"]["completion_tokens"] == 10
    by_index: dict[int, list[dict[str, Any]]] = {}
    for e in events[:-1]:
        assert len(e["choices"]) == 1 and e["usage"] is None
        by_index.setdefault(e["choices"][0]["index"], []).append(e["choices"][0])
    assert sorted(by_index) == [0, 1]
    for chunks in by_index.values():
        assert [c["delta"].get("role") for c in chunks].count("assistant") == 1
        assert chunks[0]["delta"].get("role") == "assistant"
        assert [c["finish_reason"] for c in chunks][-1] == "length"
        assert all(c["finish_reason"] is None for c in chunks[:-1])


def test_continuous_usage_stats_put_each_choices_usage_on_its_events(stack: Stack) -> None:
    options = {"include_usage": True, "continuous_usage_stats": True}
    body = {"model": PLAIN, "messages": CHAT, "max_tokens": 5, "n": 2, "stream_options": options}
    events = stream(stack, "/v1/chat/completions", body)
    last = {0: 0, 1: 0}
    for e in events[:-1]:
        (c,) = e["choices"]
        usage = e["usage"]
        assert usage["completion_tokens"] >= last[c["index"]] and usage["total_tokens"] == (
            usage["prompt_tokens"] + usage["completion_tokens"]
        )
        last[c["index"]] = usage["completion_tokens"]
    assert last == {0: 5, 1: 5} and events[-1]["usage"]["completion_tokens"] == 10


def test_a_list_of_prompts_is_one_choice_per_prompt_and_n(stack: Stack) -> None:
    prompts = ["Once upon a time", "The capital of France is"]
    body = post(stack, "/v1/completions", {"model": PLAIN, "prompt": prompts, "max_tokens": 3, "n": 2})
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    expected_prompt = sum(prompt_tokens(stack, p) for p in prompts)  # each prompt once, not per n
    assert body["usage"]["prompt_tokens"] == expected_prompt
    assert body["usage"]["completion_tokens"] == 4 * 3
    events = stream(stack, "/v1/completions", {"model": PLAIN, "prompt": prompts, "max_tokens": 3})
    assert {e["choices"][0]["index"] for e in events} == {0, 1}
    assert sorted(e["choices"][0]["index"] for e in events if e["choices"][0]["finish_reason"]) == [0, 1]


def test_echo_puts_the_prompt_first_streamed_and_not(stack: Stack) -> None:
    prompt = "The capital of France is"
    body = post(stack, "/v1/completions", {"model": PLAIN, "prompt": prompt, "max_tokens": 3, "echo": True})
    text = body["choices"][0]["text"]
    assert text.startswith(prompt) and len(text) > len(prompt)
    events = stream(
        stack, "/v1/completions", {"model": PLAIN, "prompt": prompt, "max_tokens": 3, "echo": True}
    )
    assert events[0]["choices"][0]["text"].startswith(prompt)  # in the first chunk, as vLLM
    assert "".join(e["choices"][0]["text"] for e in events).startswith(prompt)
    # Prompt scoring: max_tokens 0 answers the prompt only (the engine's one token is dropped).
    body = post(stack, "/v1/completions", {"model": PLAIN, "prompt": prompt, "max_tokens": 0, "echo": True})
    assert body["choices"][0]["text"] == prompt and body["choices"][0]["finish_reason"] == "length"
    events = stream(
        stack, "/v1/completions", {"model": PLAIN, "prompt": prompt, "max_tokens": 0, "echo": True}
    )
    assert "".join(e["choices"][0]["text"] for e in events) == prompt
    # Token prompts are echoed as their text.
    ids = [504, 3575, 282, 4649, 314]
    body = post(stack, "/v1/completions", {"model": PLAIN, "prompt": ids, "max_tokens": 0, "echo": True})
    assert body["choices"][0]["text"] and body["usage"]["prompt_tokens"] == len(ids)


def test_reasoning_is_split_out_for_a_model_served_with_a_reasoning_parser(stack: Stack) -> None:
    # The mocker's text never closes a </think>: deepseek_r1 reads all of it as reasoning.
    body = post(stack, "/v1/chat/completions", {"model": THINKING, "messages": CHAT, "max_tokens": 6, "n": 2})
    for choice in body["choices"]:
        message = choice["message"]
        assert message["content"] is None
        assert message["reasoning_content"] and message["reasoning_content"] == message["reasoning"]
    events = stream(stack, "/v1/chat/completions", {"model": THINKING, "messages": CHAT, "max_tokens": 6})
    deltas = [e["choices"][0]["delta"] for e in events]
    assert any(d.get("reasoning_content") for d in deltas)
    assert all(d.get("reasoning_content") == d.get("reasoning") and not d.get("content") for d in deltas)


def test_one_http_request_is_one_request_in_the_metrics(stack: Stack) -> None:
    labels = {"model": PLAIN, "endpoint": "chat_completions", "status": "200"}
    before = metric_value(stack.frontend.metrics(), "dynamo_frontend_requests_total", **labels)
    post(stack, "/v1/chat/completions", {"model": PLAIN, "messages": CHAT, "max_tokens": 2, "n": 4})
    stream(stack, "/v1/chat/completions", {"model": PLAIN, "messages": CHAT, "max_tokens": 2, "n": 4})
    text = stack.frontend.metrics()
    assert metric_value(text, "dynamo_frontend_requests_total", **labels) == before + 2
    assert metric_value(text, "dynamo_frontend_inflight_requests", model=PLAIN) == 0
