"""``/openapi.json`` of a running frontend (real frontend + mocker processes, file discovery): every
route the server answers is described with its request body and response schemas, and real
responses -- JSON bodies, each streamed event, errors -- validate against those schemas."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from fastapi.routing import APIRoute

from dynamo.frontend.app import create_app
from dynamo.frontend.args import FrontendConfig, build_parser
from dynamo.frontend.endpoints import ENDPOINTS
from dynamo.frontend.responses import ResponseBuilder
from dynamo.llm.model_card import ModelDeploymentCard
from dynamo.llm.openai import parse_chat_request, parse_completion_request
from dynamo.llm.preprocessor import PreprocessedOutput, Preprocessor
from dynamo.llm.protocols import PreprocessedRequest
from tests.support.graph import Frontend, discovery_env, start_mocker
from tests.support.procs import ManagedProcess

pytestmark = [pytest.mark.timeout(180)]
MODEL = "smol-openapi"
CHAT = [{"role": "user", "content": "What is the capital of France?"}]
MAX_BODY = 200_000
# FastAPI's own pages about the API, not part of it.
DOC_ROUTES = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}


@dataclass
class Served:
    frontend: Frontend
    worker: ManagedProcess
    doc: dict[str, Any]

    @property
    def url(self) -> str:
        return self.frontend.url


@pytest.fixture(scope="module")
def served(log_dir: Path, smollm2_tokenizer_dir: Path, tmp_path_factory) -> Iterator[Served]:
    env = discovery_env("file")
    env["DYN_FILE_DISCOVERY_DIR"] = str(tmp_path_factory.mktemp("discovery-openapi"))
    worker = start_mocker(
        log_dir, env, smollm2_tokenizer_dir, "mocker-openapi", "--model-name", MODEL, "--speedup-ratio", "50"
    )
    frontend = Frontend(log_dir, env, "--max-body-size", str(MAX_BODY), name="frontend-openapi")
    try:
        frontend.wait_for_instances(1)
        doc = httpx.get(f"{frontend.url}/openapi.json", timeout=10).json()
        yield Served(frontend, worker, doc)
    finally:
        frontend.stop()
        worker.stop()


def _validator(doc: dict[str, Any], schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    """A validator for ``schema``, a part of ``doc`` whose refs point into ``doc``'s components."""
    return jsonschema.Draft202012Validator({**schema, "components": doc["components"]})


def _check(doc: dict[str, Any], schema: dict[str, Any], instance: Any) -> None:
    errors = sorted(_validator(doc, schema).iter_errors(instance), key=str)
    assert not errors, f"{instance!r} does not match its schema: {errors[0]}"


def response_schema(doc: dict[str, Any], method: str, path: str, status: int, media: str) -> dict[str, Any]:
    content = doc["paths"][path][method.lower()]["responses"][str(status)]["content"][media]
    return content["x-itemSchema"] if media == "text/event-stream" else content["schema"]


def check_response(
    doc: dict[str, Any], method: str, path: str, r: httpx.Response, doc_path: str = ""
) -> None:
    """``r``'s status is documented for the operation and its JSON body matches that status's schema."""
    assert r.headers["content-type"].startswith("application/json"), r.headers
    _check(doc, response_schema(doc, method, doc_path or path, r.status_code, "application/json"), r.json())


def check_stream(doc: dict[str, Any], path: str, r: httpx.Response) -> list[dict[str, Any]]:
    """Every ``data:`` event of a streamed response matches the documented item schema; the events."""
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    schema = response_schema(doc, "POST", path, 200, "text/event-stream")
    lines = [line for line in r.text.splitlines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(line[6:]) for line in lines[:-1]]
    for event in events:
        _check(doc, schema, event)
    return events


def answered_routes() -> set[tuple[str, str]]:
    """(method, path) of every route the application serves, taken from the application itself."""
    app = create_app(FrontendConfig.from_args(build_parser().parse_args([])))
    routes = {
        (method, route.path_format)
        for route in app.api.routes
        if isinstance(route, APIRoute) and route.path not in DOC_ROUTES
        for method in route.methods
    }
    return routes | {("POST", path) for path in ENDPOINTS}


def test_every_route_the_server_answers_is_described_with_its_bodies(served: Served):
    doc = served.doc
    assert doc["openapi"].startswith("3.1")
    described = {(method.upper(), path) for path, item in doc["paths"].items() for method in item}
    assert described == answered_routes()
    for schema in doc["components"]["schemas"].values():
        jsonschema.Draft202012Validator.check_schema(schema)
    for path, item in doc["paths"].items():
        for method, op in item.items():
            assert op["responses"]["200"]["content"], (method, path)
            if method == "post":
                schema = op["requestBody"]["content"]["application/json"]["schema"]
                name = schema["$ref"].rsplit("/", 1)[-1]
                body = doc["components"]["schemas"][name]
                assert body["type"] == "object" and {"model"} <= set(body["required"]), (path, body)
    chat = doc["components"]["schemas"]["ChatCompletionRequest"]
    assert {"model", "messages"} <= set(chat["required"])
    assert {"temperature", "max_tokens", "stream", "stream_options", "nvext"} <= set(chat["properties"])
    with httpx.Client(timeout=10) as http:
        # What is not described is not answered.
        for method, path in [("GET", "/v1/embeddings"), ("POST", "/v1/audio/speech"), ("DELETE", "/health")]:
            r = http.request(method, f"{served.url}{path}")
            assert r.status_code in (404, 405) and set(r.json()["error"]) == {
                "message",
                "type",
                "param",
                "code",
            }
        r = http.get(f"{served.url}/v1/chat/completions")
        assert r.status_code == 405 and r.headers["allow"] == "POST" and "error" in r.json()


def test_request_bodies_the_schema_accepts_are_the_ones_the_server_accepts(served: Served):
    doc = served.doc
    chat_schema = doc["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]["application/json"]
    good = {"model": MODEL, "messages": CHAT, "max_tokens": 3, "temperature": 0.5, "nvext": {"top_k": 5}}
    bad = [
        {**good, "temperature": 9},
        {**good, "messages": []},
        {**good, "n": 129},
        {**good, "unknown_field": 1},
        {"model": MODEL},
        {**good, "max_tokens": 0},
    ]
    _check(doc, chat_schema["schema"], good)
    with httpx.Client(timeout=30) as http:
        assert http.post(f"{served.url}/v1/chat/completions", json=good).status_code == 200
        for body in bad:
            assert not _validator(doc, chat_schema["schema"]).is_valid(body), body
            r = http.post(f"{served.url}/v1/chat/completions", json=body)
            assert r.status_code == 400, (body, r.text)
            check_response(doc, "POST", "/v1/chat/completions", r)
    completion_schema = doc["paths"]["/v1/completions"]["post"]["requestBody"]["content"]["application/json"]
    _check(doc, completion_schema["schema"], {"model": MODEL, "prompt": [1, 2, 3], "max_tokens": 2})
    for body in [{"model": MODEL, "prompt": "x", "suffix": "y"}, {"model": MODEL, "prompt": []}]:
        assert not _validator(doc, completion_schema["schema"]).is_valid(body), body


def test_real_responses_match_their_schemas(served: Served):
    doc = served.doc
    url = served.url
    chat_path, completions_path = "/v1/chat/completions", "/v1/completions"
    with httpx.Client(timeout=30) as http:
        r = http.post(f"{url}{chat_path}", json={"model": MODEL, "messages": CHAT, "max_tokens": 5})
        check_response(doc, "POST", chat_path, r)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 5
        events = check_stream(
            doc,
            chat_path,
            http.post(
                f"{url}{chat_path}",
                json={
                    "model": MODEL,
                    "messages": CHAT,
                    "max_tokens": 6,
                    "stream": True,
                    "stream_options": {"include_usage": True},
                },
            ),
        )
        assert events[-1]["usage"]["completion_tokens"] == 6 and events[-1]["choices"] == []
        events = check_stream(
            doc,
            chat_path,
            http.post(f"{url}{chat_path}", json={"model": MODEL, "messages": CHAT, "stream": True}),
        )
        assert "usage" not in events[0]
        r = http.post(
            f"{url}{completions_path}", json={"model": MODEL, "prompt": "Once upon", "max_tokens": 4}
        )
        check_response(doc, "POST", completions_path, r)
        assert r.status_code == 200 and r.json()["object"] == "text_completion"
        check_stream(
            doc,
            completions_path,
            http.post(
                f"{url}{completions_path}",
                json={"model": MODEL, "prompt": [1, 2, 3], "max_tokens": 4, "stream": True},
            ),
        )
        # errors, each with its documented status and the error body
        for path, body, status in [
            (chat_path, {"model": "no-such-model", "messages": CHAT}, 404),
            (chat_path, {"model": MODEL, "messages": CHAT, "top_p": 0}, 400),
            (completions_path, {"model": MODEL, "prompt": "x", "suffix": "y"}, 400),
            (completions_path, {"model": MODEL, "prompt": "x" * (MAX_BODY + 1)}, 413),
        ]:
            r = http.post(f"{url}{path}", json=body)
            assert r.status_code == status, r.text
            check_response(doc, "POST", path, r)
        r = http.post(f"{url}{chat_path}", content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 400
        check_response(doc, "POST", chat_path, r)

        r = http.get(f"{url}/v1/models")
        check_response(doc, "GET", "/v1/models", r)
        assert [m["id"] for m in r.json()["data"]] == [MODEL]
        ready = "/v1/models/{model}/ready"
        r = http.get(f"{url}/v1/models/{MODEL}/ready")
        assert r.status_code == 200
        check_response(doc, "GET", r.url.path, r, ready)
        r = http.get(f"{url}/v1/models/nobody/ready")
        assert r.status_code == 404
        check_response(doc, "GET", r.url.path, r, ready)
        r = http.get(f"{url}/health")
        assert r.status_code == 200
        check_response(doc, "GET", "/health", r)
        r = http.get(f"{url}/live")
        check_response(doc, "GET", "/live", r)
        r = http.get(f"{url}/metrics")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        assert "text/plain" in doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
        assert "dynamo_frontend_requests_total" in r.text


@pytest.mark.parametrize("endpoint", list(ENDPOINTS.values()), ids=lambda e: e.kind)
def test_logprobs_and_cached_tokens_match_the_schemas(served: Served, endpoint, smollm2_tokenizer_dir: Path):
    """The mocker sends no logprobs: the builder's logprob and cached-token fields are checked on
    outputs shaped as an engine's (token id, logprob, top alternatives), with the model's tokenizer."""
    doc = served.doc
    card = ModelDeploymentCard.from_local_path(smollm2_tokenizer_dir, MODEL)
    files = card.try_read_local_files()
    assert files is not None
    preprocessor = Preprocessor.from_card(card, files)
    tok = preprocessor.tokenizer.encode("Paris is the capital", add_special_tokens=False).ids
    entries = [[t, -0.5, [[t, -0.5], [t + 1, -1.5]]] for t in tok]
    outputs = [
        [{"token_ids": tok[:2], "logprobs": entries[:2], "cached_tokens": 16}],
        [{"token_ids": tok[2:], "logprobs": entries[2:], "finish_reason": "length"}],
    ]
    if endpoint.kind == "chat":
        body = {"model": MODEL, "messages": CHAT, "logprobs": True, "top_logprobs": 2, "max_tokens": len(tok)}
        req = parse_chat_request(
            json.dumps({**body, "stream": True, "stream_options": {"include_usage": True}})
        )
    else:
        body = {"model": MODEL, "prompt": "The capital of France:", "logprobs": 2, "max_tokens": len(tok)}
        req = parse_completion_request(
            json.dumps({**body, "stream": True, "stream_options": {"include_usage": True}})
        )

    def builder() -> ResponseBuilder:
        choices = endpoint.preprocess(preprocessor, req, "r1")
        return ResponseBuilder(endpoint.kind, "id-r1", MODEL, choices, preprocessor, include_usage=True)

    streaming = builder()
    schema = response_schema(doc, "POST", endpoint.path, 200, "text/event-stream")
    events = []
    for batch in outputs:
        raw = streaming.stream(0, batch)
        events += [json.loads(line[6:]) for line in raw.decode().splitlines() if line.startswith("data: ")]
    for event in events:
        _check(doc, schema, event)
    assert events[-1]["usage"]["prompt_tokens_details"] == {"cached_tokens": 16}
    assert any(e["choices"] and e["choices"][0]["logprobs"] for e in events)

    whole = builder()
    for batch in outputs:
        whole.collect(0, batch)
    full = whole.full_response()
    _check(doc, response_schema(doc, "POST", endpoint.path, 200, "application/json"), full)
    assert full["choices"][0]["logprobs"]


def test_several_choices_and_echo_match_the_schemas(served: Served):
    doc = served.doc
    chat, completions = "/v1/chat/completions", "/v1/completions"
    with httpx.Client(timeout=30) as http:
        r = http.post(f"{served.url}{chat}", json={"model": MODEL, "messages": CHAT, "max_tokens": 3, "n": 2})
        check_response(doc, "POST", chat, r)
        assert [c["index"] for c in r.json()["choices"]] == [0, 1]
        body = {"model": MODEL, "messages": CHAT, "max_tokens": 3, "n": 2, "stream": True}
        body["stream_options"] = {"include_usage": True, "continuous_usage_stats": True}
        events = check_stream(doc, chat, http.post(f"{served.url}{chat}", json=body))
        assert {e["choices"][0]["index"] for e in events if e["choices"]} == {0, 1}
        for body in (
            {"model": MODEL, "prompt": ["Once upon", "a time"], "max_tokens": 2, "echo": True},
            {"model": MODEL, "prompt": "Once upon", "max_tokens": 0, "echo": True},
        ):
            r = http.post(f"{served.url}{completions}", json=body)
            check_response(doc, "POST", completions, r)
            assert r.json()["choices"][0]["text"].startswith("Once upon")
            check_stream(
                doc, completions, http.post(f"{served.url}{completions}", json={**body, "stream": True})
            )


def test_tool_calls_reasoning_and_echoed_logprobs_match_the_schemas(
    served: Served, smollm2_tokenizer_dir: Path
):
    """The mocker writes neither tool calls nor thinking, nor prompt logprobs: the builder's are checked
    on outputs shaped as an engine's, with the model's tokenizer."""
    doc = served.doc
    card = ModelDeploymentCard.from_local_path(smollm2_tokenizer_dir, MODEL)
    files = card.try_read_local_files()
    assert files is not None
    preprocessor = Preprocessor.from_card(card, files)

    def outputs(text: str, **first: Any) -> list[list[dict[str, Any]]]:
        ids = preprocessor.tokenizer.encode(text, add_special_tokens=False).ids
        batches: list[list[dict[str, Any]]] = [[{"token_ids": [t]}] for t in ids]
        batches[-1][0]["finish_reason"] = "stop"
        batches[0][0].update(first)
        return batches

    def check(endpoint: Any, pres: list[PreprocessedOutput], batches: list[list[dict[str, Any]]]) -> dict:
        streaming = ResponseBuilder(endpoint.kind, "id", MODEL, pres, preprocessor, include_usage=True)
        raw = b"".join(streaming.stream(0, batch) for batch in batches)
        events = [json.loads(line[6:]) for line in raw.decode().splitlines() if line.startswith("data: ")]
        for event in events:
            _check(doc, response_schema(doc, "POST", endpoint.path, 200, "text/event-stream"), event)
        whole = ResponseBuilder(endpoint.kind, "id", MODEL, pres, preprocessor)
        for batch in batches:
            whole.collect(0, batch)
        body = whole.full_response()
        _check(doc, response_schema(doc, "POST", endpoint.path, 200, "application/json"), body)
        return body

    ids = preprocessor.tokenizer.encode("What is the weather?", add_special_tokens=False).ids
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    text = 'Hmm.</think><tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    pre = PreprocessedOutput(
        PreprocessedRequest("r", MODEL, ids),
        len(ids),
        tool_mode="auto",
        tool_parser="hermes",
        tools=tools,
        reasoning_parser="deepseek_r1",
    )
    message = check(ENDPOINTS["/v1/chat/completions"], [pre], outputs(text))["choices"][0]["message"]
    assert message["content"] is None and message["reasoning_content"] == "Hmm." and message["tool_calls"]
    pre = PreprocessedOutput(
        PreprocessedRequest("r", MODEL, ids), len(ids), tool_mode="required", tools=tools
    )
    body = check(
        ENDPOINTS["/v1/chat/completions"], [pre], outputs('[{"name": "get_weather", "parameters": {}}]')
    )
    assert body["choices"][0]["finish_reason"] == "tool_calls"
    prompt_logprobs = [None] + [[t, -1.0, [[t, -1.0]]] for t in ids[1:]]
    pre = PreprocessedOutput(
        PreprocessedRequest("r", MODEL, ids),
        len(ids),
        logprobs=1,
        echo_text="What is the weather?",
        prompt_logprobs=1,
    )
    batches = outputs(" Sunny", prompt_logprobs=prompt_logprobs)
    for batch in batches:
        batch[0]["logprobs"] = [[t, -0.5, [[t, -0.5]]] for t in batch[0]["token_ids"]]
    body = check(ENDPOINTS["/v1/completions"], [pre], batches)
    assert body["choices"][0]["logprobs"]["token_logprobs"][0] is None
