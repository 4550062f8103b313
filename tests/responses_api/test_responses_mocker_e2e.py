"""``/v1/responses`` end to end: real frontends + a mocker worker on a real etcd, driven by the
official ``openai`` SDK. The mocker's text is random, but shapes, events, the store across
frontends, TTL expiry and the size bound are the real ones (tool calls, reasoning and structured
output of a real model are exercised against vLLM by tests/openai_sdk)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import jsonschema
import openai
import openai.types.responses as sdk
import pytest
from pydantic import TypeAdapter

from dynamo.llm.openai_responses import ResponseObject, ResponseStreamEvent
from tests.support.graph import Frontend, discovery_env, metric_value, start_mocker
from tests.support.procs import ManagedProcess

pytestmark = [pytest.mark.timeout(180)]
MODEL = "smol-responses"
THINKER = "smol-thinker"  # the same mocker with --dyn-reasoning-parser deepseek_r1: all its text is thinking
SHORT_TTL = 2.0
SMALL_STORE = 4000  # bytes: a short exchange fits, a long input does not
OURS = ResponseStreamEvent
SDK_EVENT = TypeAdapter(sdk.ResponseStreamEvent)


@dataclass
class Graph:
    workers: list[ManagedProcess]
    a: Frontend  # two frontends with the default store settings
    b: Frontend
    short: Frontend  # --response-ttl SHORT_TTL --max-stored-response-bytes SMALL_STORE

    def client(self, frontend: Frontend) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{frontend.url}/v1", api_key="none", max_retries=0)

    def stop(self) -> None:
        for f in (self.a, self.b, self.short):
            f.stop()
        for w in self.workers:
            w.stop()


@pytest.fixture(scope="module")
def graph(log_dir: Path, smollm2_tokenizer_dir: Path, etcd) -> Iterator[Graph]:
    env = discovery_env("etcd", etcd.endpoint)
    env["DYN_NAMESPACE"] = "responses-e2e"
    workers: list[ManagedProcess] = []
    started: list[Frontend] = []
    try:
        for name, args in (
            # tool_choice "auto" needs a tool-call parser (random text holds no calls)
            (MODEL, ("--dyn-tool-call-parser", "hermes")),
            # deepseek_r1 takes text without </think> for thinking: every output is one reasoning item
            (THINKER, ("--dyn-reasoning-parser", "deepseek_r1")),
        ):
            workers.append(
                start_mocker(
                    log_dir,
                    env,
                    smollm2_tokenizer_dir,
                    f"mocker-{name}",
                    "--model-name",
                    name,
                    "--speedup-ratio",
                    "20",
                    *args,
                )
            )
        for name, args in (
            ("frontend-responses-a", ()),
            ("frontend-responses-b", ()),
            (
                "frontend-responses-short",
                ("--response-ttl", str(SHORT_TTL), "--max-stored-response-bytes", str(SMALL_STORE)),
            ),
        ):
            started.append(Frontend(log_dir, env, *args, name=name))
        for f in started:
            f.wait_for_instances(2)
        g = Graph(workers, *started)
    except BaseException:
        for f in started:
            f.stop()
        for w in workers:
            w.stop()
        raise
    yield g
    g.stop()


def post(frontend: Frontend, body: dict) -> httpx.Response:
    return httpx.post(f"{frontend.url}/v1/responses", json={"model": MODEL, **body}, timeout=60)


def test_a_response_is_the_openai_response_object(graph: Graph):
    r = post(
        graph.a,
        {
            "input": "What is the capital of France?",
            "instructions": "Be brief.",
            "max_output_tokens": 6,
            "metadata": {"k": "v"},
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    ResponseObject.model_validate(body)
    resp = sdk.Response.model_validate(body)
    assert resp.id.startswith("resp_") and resp.object == "response" and resp.model == MODEL
    assert (
        resp.status == "incomplete"
        and resp.incomplete_details
        and resp.incomplete_details.reason == "max_output_tokens"
    )
    assert resp.instructions == "Be brief." and resp.metadata == {"k": "v"} and body["store"] is True
    (message,) = resp.output
    assert message.type == "message" and message.role == "assistant" and message.id.startswith("msg_")
    assert message.content[0].type == "output_text" and message.content[0].text
    assert resp.usage is not None and resp.usage.output_tokens == 6
    assert resp.usage.total_tokens == resp.usage.input_tokens + 6

    # The SDK's own call, and a stop string (vLLM's extension) that ends it "completed".
    done = graph.client(graph.a).responses.create(
        model=MODEL, input="Say something.", max_output_tokens=60, extra_body={"stop": ["e"], "seed": 3}
    )
    assert done.status == "completed" and done.incomplete_details is None
    assert "e" not in done.output_text and done.usage is not None and done.usage.output_tokens < 60


def test_a_streamed_response_sends_numbered_events_the_sdk_parses(graph: Graph):
    client = graph.client(graph.a)
    events = list(
        client.responses.create(model=MODEL, input="Tell me a story.", max_output_tokens=12, stream=True)
    )
    assert [e.sequence_number for e in events] == list(range(len(events)))
    for e in events:
        OURS.model_validate(e.to_dict())
        SDK_EVENT.validate_python(e.to_dict())
    kinds = [e.type for e in events]
    assert kinds[:5] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.incomplete",  # cut at max_output_tokens, as OpenAI ends such a stream
    ]
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1].response  # type: ignore[union-attr]
    assert final.output_text == text and text
    assert final.usage is not None and final.usage.output_tokens == 12
    assert final.id == events[0].response.id  # type: ignore[union-attr]
    assert final.output[0].status == "incomplete"

    # The SDK's stream helper accumulates the events into the final response.
    with client.responses.stream(
        model=MODEL, input="Go on.", max_output_tokens=60, extra_body={"stop": ["e"], "seed": 3}
    ) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        response = stream.get_final_response()
    assert response.status == "completed" and response.output_text == "".join(deltas)


def test_a_follow_up_on_another_frontend_continues_the_conversation(graph: Graph):
    first = graph.client(graph.a).responses.create(
        model=MODEL, input="Hello, who are you?", max_output_tokens=8
    )
    second = graph.client(graph.b).responses.create(
        model=MODEL, input="And what can you do?", previous_response_id=first.id, max_output_tokens=8
    )
    assert second.previous_response_id == first.id
    assert first.usage is not None and second.usage is not None
    # The second prompt holds the first exchange: its input, output, and the new question.
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    third = graph.client(graph.a).responses.create(
        model=MODEL, input="Thanks.", previous_response_id=second.id, max_output_tokens=4
    )
    assert third.usage is not None
    assert third.usage.input_tokens > second.usage.input_tokens + second.usage.output_tokens
    # Either frontend retrieves either response, as it was answered.
    got = graph.client(graph.b).responses.retrieve(third.id)
    assert got.id == third.id and got.output_text == third.output_text
    assert graph.client(graph.a).responses.retrieve(first.id).output_text == first.output_text


def test_thinking_split_by_the_reasoning_parser_is_a_reasoning_item(graph: Graph):
    client = graph.client(graph.a)
    whole = client.responses.create(
        model=THINKER, input="Think.", max_output_tokens=10, reasoning={"effort": "low"}
    )
    (item,) = whole.output
    assert item.type == "reasoning" and item.id.startswith("rs_") and item.content and item.content[0].text
    assert whole.output_text == "" and whole.reasoning is not None and whole.reasoning.effort == "low"
    assert whole.usage is not None and 0 < whole.usage.output_tokens_details.reasoning_tokens <= 10
    events = list(client.responses.create(model=THINKER, input="Think.", max_output_tokens=10, stream=True))
    for e in events:
        OURS.model_validate(e.to_dict())
    kinds = [e.type for e in events]
    assert kinds[2:4] == ["response.output_item.added", "response.content_part.added"]
    assert "response.reasoning_text.done" in kinds and "response.output_text.delta" not in kinds
    thought = "".join(e.delta for e in events if e.type == "response.reasoning_text.delta")
    final = events[-1].response  # type: ignore[union-attr]
    assert final.output[0].type == "reasoning" and final.output[0].content[0].text == thought  # type: ignore[union-attr,index]
    # Thinking is not carried into a follow-up (as vLLM): the follow-up still works from it.
    follow = graph.client(graph.b).responses.create(
        model=THINKER, input="Go on.", previous_response_id=whole.id, max_output_tokens=3
    )
    assert follow.usage is not None and whole.usage is not None
    assert follow.usage.input_tokens > whole.usage.input_tokens


def test_function_call_outputs_continue_a_stored_response(graph: Graph):
    tools = [
        {
            "type": "function",
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        }
    ]
    client = graph.client(graph.a)
    first = client.responses.create(model=MODEL, input="Weather in Paris?", tools=tools, max_output_tokens=5)  # type: ignore[arg-type]
    follow = graph.client(graph.b).responses.create(
        model=MODEL,
        previous_response_id=first.id,
        tools=tools,  # type: ignore[arg-type]
        input=[
            {
                "type": "function_call",
                "call_id": "call_1",
                "name": "get_weather",
                "arguments": '{"city": "Paris"}',
            },
            {"type": "function_call_output", "call_id": "call_1", "output": "Sunny, 21 C"},
        ],
        max_output_tokens=5,
    )
    assert follow.status == "incomplete" and follow.output_text
    assert follow.tools[0].type == "function" and follow.tools[0].name == "get_weather"


def test_an_expired_or_unknown_response_cannot_be_continued(graph: Graph):
    short = graph.client(graph.short)
    made = short.responses.create(model=MODEL, input="Remember this.", max_output_tokens=3)
    assert made.model_dump()["store"] is True
    graph.client(graph.a).responses.retrieve(made.id)  # there now, from another frontend
    time.sleep(SHORT_TTL + 0.5)
    for frontend in (graph.a, graph.short):
        r = post(frontend, {"input": "What did I say?", "previous_response_id": made.id})
        assert r.status_code == 404, r.text
        assert r.json()["error"] == {
            "message": f"Previous response with id '{made.id}' not found.",
            "type": "invalid_request_error",
            "param": "previous_response_id",
            "code": "previous_response_not_found",
        }
    with pytest.raises(openai.NotFoundError):
        graph.client(graph.b).responses.retrieve(made.id)
    with pytest.raises(openai.NotFoundError) as info:
        graph.client(graph.b).responses.create(
            model=MODEL, input="x", previous_response_id="resp_never_made", max_output_tokens=2
        )
    assert info.value.body["param"] == "previous_response_id"  # type: ignore[index]
    bad = post(graph.a, {"input": "x", "previous_response_id": "msg_123"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "previous_response_id"


def test_unstored_responses_say_so_and_cannot_be_continued(graph: Graph):
    not_asked = post(graph.a, {"input": "Private.", "store": False, "max_output_tokens": 3}).json()
    too_big = post(graph.short, {"input": "word " * 1000, "max_output_tokens": 3}).json()
    for body in (not_asked, too_big):
        assert body["status"] == "incomplete" and body["store"] is False, body
        r = post(graph.b, {"input": "More.", "previous_response_id": body["id"]})
        assert r.status_code == 404 and r.json()["error"]["param"] == "previous_response_id"
    streamed = list(
        graph.client(graph.short).responses.create(
            model=MODEL, input="word " * 1000, max_output_tokens=2, stream=True
        )
    )
    assert streamed[0].response.model_dump()["store"] is True  # type: ignore[union-attr]  # asked for
    assert streamed[-1].response.model_dump()["store"] is False  # type: ignore[union-attr]  # over the bound


def test_store_null_is_the_default_and_stores(graph: Graph):
    made = post(graph.a, {"input": "Remember me.", "store": None, "max_output_tokens": 3}).json()
    assert made["store"] is True, made
    assert graph.client(graph.b).responses.retrieve(made["id"]).id == made["id"]


def test_a_deleted_response_is_gone(graph: Graph):
    client = graph.client(graph.a)
    made = client.responses.create(model=MODEL, input="Forget me.", max_output_tokens=2)
    deleted = httpx.delete(f"{graph.b.url}/v1/responses/{made.id}", timeout=10)
    assert deleted.status_code == 200 and deleted.json() == {
        "id": made.id,
        "object": "response",
        "deleted": True,
    }
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(made.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(made.id)


REFUSED = [
    (
        {
            "input": "x",
            "text": {"format": {"type": "json_schema", "name": "o", "schema": {"type": "object"}}},
        },
        "text.format",
    ),
    ({"input": "x", "tools": [{"type": "function", "name": "f"}], "tool_choice": "required"}, "tool_choice"),
    (
        {
            "input": "x",
            "tools": [{"type": "function", "name": "f"}],
            "tool_choice": {"type": "function", "name": "g"},
        },
        "tool_choice.name",
    ),
    ({"input": "x", "tools": [{"type": "file_search"}]}, "tools[0].type"),
    ({"input": "x", "background": True}, "background"),
    ({"input": "x", "truncation": "auto"}, "truncation"),
    ({"input": "x", "include": ["reasoning.encrypted_content"]}, "include[0]"),
    ({"input": "x", "conversation": "conv_1"}, "conversation"),
    ({"input": "x", "max_output_tokens": 100000}, "max_output_tokens"),
    ({"input": "x " * 9000}, "input"),
]


def test_what_cannot_be_served_is_a_400_naming_the_field(graph: Graph):
    before = metric_value(graph.a.metrics(), "dynamo_frontend_requests_total", endpoint="responses")
    for body, param in REFUSED:
        r = post(graph.a, body)
        assert r.status_code == 400, (body, r.text)
        assert r.json()["error"]["param"] == param, (body, r.text)
    r = httpx.post(f"{graph.a.url}/v1/responses", json={"model": "no-such-model", "input": "x"}, timeout=10)
    assert r.status_code == 404 and r.json()["error"]["param"] == "model"
    with pytest.raises(openai.BadRequestError) as info:
        graph.client(graph.a).responses.create(model=MODEL, input="x", temperature=3)
    assert info.value.body["param"] == "temperature"  # type: ignore[index]
    # Counted per status under the endpoint label "responses" (as the other endpoints are).
    post(graph.a, {"input": "ok", "max_output_tokens": 1})
    after = metric_value(graph.a.metrics(), "dynamo_frontend_requests_total", endpoint="responses")
    assert after >= before + 1


def test_real_answers_match_the_openapi_document(graph: Graph):
    doc = httpx.get(f"{graph.a.url}/openapi.json", timeout=10).json()
    ops = doc["paths"]["/v1/responses"]
    item = doc["paths"]["/v1/responses/{response_id}"]

    def check(schema: dict, instance: object) -> None:
        validator = jsonschema.Draft202012Validator({**schema, "components": doc["components"]})
        errors = list(validator.iter_errors(instance))
        assert not errors, f"{instance!r} does not match its schema: {errors[0]}"

    def schema(op: dict, status: int, media: str = "application/json") -> dict:
        content = op["responses"][str(status)]["content"][media]
        return content["x-itemSchema"] if media == "text/event-stream" else content["schema"]

    body = {"model": MODEL, "input": [{"role": "user", "content": "Hi"}], "max_output_tokens": 3}
    check(ops["post"]["requestBody"]["content"]["application/json"]["schema"], body)
    r = post(graph.a, body)
    check(schema(ops["post"], 200), r.json())
    stream = httpx.post(f"{graph.a.url}/v1/responses", json={**body, "stream": True}, timeout=60)
    data = [json.loads(line[6:]) for line in stream.text.splitlines() if line.startswith("data: ")]
    names = [line[7:] for line in stream.text.splitlines() if line.startswith("event: ")]
    assert names == [e["type"] for e in data] and data
    for event in data:
        check(schema(ops["post"], 200, "text/event-stream"), event)
    got = httpx.get(f"{graph.a.url}/v1/responses/{r.json()['id']}", timeout=10)
    check(schema(item["get"], 200), got.json())
    gone = httpx.delete(f"{graph.a.url}/v1/responses/{r.json()['id']}", timeout=10)
    check(schema(item["delete"], 200), gone.json())
    for method, url, status, op in [
        ("GET", f"{graph.a.url}/v1/responses/{r.json()['id']}", 404, item["get"]),
        ("DELETE", f"{graph.a.url}/v1/responses/resp_x", 404, item["delete"]),
        ("POST", f"{graph.a.url}/v1/responses", 400, ops["post"]),
    ]:
        answer = httpx.request(
            method, url, json={"model": MODEL, "input": "x", "truncation": "auto"}, timeout=10
        )
        assert answer.status_code == status, answer.text
        check(schema(op, status), answer.json())
