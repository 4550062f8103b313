"""The frontend's half of ``/v1/embeddings`` without an engine: request parsing and limits, the
tokenization against the model card's real tokenizer (SmolLM2's), the response body in both
encodings, and the OpenAPI description. The engine's half is in ``test_embeddings_vllm``."""

from __future__ import annotations

import array
import base64
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest

from dynamo.frontend.app import create_app
from dynamo.frontend.args import FrontendConfig, build_parser
from dynamo.frontend.embeddings import response_body, tokenize
from dynamo.llm.endpoints import EmbedOutput, EmbedRequest
from dynamo.llm.errors import RequestError
from dynamo.llm.model_card import ModelDeploymentCard
from dynamo.llm.openai_embeddings import MAX_INPUTS, EmbeddingResponse, parse_embedding_request
from dynamo.llm.preprocessor import Preprocessor


def _parse(body: dict[str, Any]):
    return parse_embedding_request(json.dumps({"model": "m", **body}))


def _refusal(body: dict[str, Any]) -> RequestError:
    with pytest.raises(RequestError) as err:
        _parse(body)
    assert err.value.status == 400
    return err.value


@pytest.mark.parametrize(
    ("value", "inputs", "batch"),
    [
        ("hello", ["hello"], False),
        (["a", "b"], ["a", "b"], True),
        ([1, 2, 3], [[1, 2, 3]], False),
        ([[1], [2, 3]], [[1], [2, 3]], True),
    ],
)
def test_every_input_form_is_a_list_of_inputs(value, inputs, batch):
    req = _parse({"input": value})
    assert req.texts_or_ids() == inputs and req.is_batch is batch
    assert req.encoding_format == "float" and req.add_special_tokens is True


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"input": "x", "normalize": True}, "normalize", "unknown_parameter"),
        ({"input": "x", "truncate_prompt_tokens": 3}, "truncate_prompt_tokens", "unknown_parameter"),
        ({"input": ""}, "input", None),
        ({"input": []}, "input", None),
        ({"input": ["a", ""]}, "input[1]", None),
        ({"input": [[1], []]}, "input[1]", None),
        ({"input": ["a"] * (MAX_INPUTS + 1)}, "input", None),
        ({"input": [-1]}, "input[0]", "invalid_value"),
        ({"input": 3}, "input", "invalid_value"),
        ({"input": ["a", 1]}, "input[1]", "invalid_value"),
        ({"input": "x", "encoding_format": "bytes"}, "encoding_format", "invalid_value"),
        ({"input": "x", "dimensions": 0}, "dimensions", "invalid_value"),
        ({"input": "x", "dimensions": "8"}, "dimensions", "invalid_value"),
        ({"input": "x", "user": 1}, "user", "invalid_value"),
        ({}, "input", "missing_required_parameter"),
    ],
)
def test_refusals_name_the_field(body, param, code):
    err = _refusal(body)
    assert err.param == param and err.code == code, err


def test_the_most_inputs_allowed_parse():
    assert len(_parse({"input": ["a"] * MAX_INPUTS}).texts_or_ids()) == MAX_INPUTS


@pytest.fixture(scope="module")
def model(smollm2_tokenizer_dir: Path) -> SimpleNamespace:
    """What ``tokenize`` reads of a served model: its card and preprocessor (SmolLM2's real files),
    with a short context so the limits are cheap to reach."""
    card = ModelDeploymentCard.from_local_path(
        smollm2_tokenizer_dir, "smol-embed", context_length=16, model_type=["embeddings"]
    )
    files = card.try_read_local_files()
    assert files is not None
    return SimpleNamespace(card=card, preprocessor=Preprocessor.from_card(card, files))


def test_text_is_tokenized_with_the_cards_tokenizer(model):
    tok = model.preprocessor.tokenizer
    text = "The capital of France"
    assert tokenize(model, _parse({"input": text})) == [tok.encode(text, add_special_tokens=True).ids]
    no_special = _parse({"input": [text, "Paris"], "add_special_tokens": False})
    assert tokenize(model, no_special) == [
        tok.encode(text, add_special_tokens=False).ids,
        tok.encode("Paris", add_special_tokens=False).ids,
    ]
    assert tokenize(model, _parse({"input": [[1, 2], [3]]})) == [[1, 2], [3]]


def test_tokenized_limits(model):
    cases = [
        ({"input": list(range(17))}, "input", "context_length_exceeded"),
        ({"input": [[1], list(range(17))]}, "input[1]", "context_length_exceeded"),
        ({"input": ["word " * 40]}, "input[0]", "context_length_exceeded"),
        ({"input": [model.preprocessor.vocab_size]}, "input", None),
    ]
    for body, param, code in cases:
        with pytest.raises(RequestError) as err:
            tokenize(model, _parse(body))
        assert (err.value.status, err.value.param, err.value.code) == (400, param, code), err.value
    assert tokenize(model, _parse({"input": list(range(16))})) == [list(range(16))]  # the whole context


def test_the_request_token_sum_is_bounded(smollm2_tokenizer_dir: Path):
    card = ModelDeploymentCard.from_local_path(smollm2_tokenizer_dir, "big", context_length=1000)
    files = card.try_read_local_files()
    assert files is not None
    big = SimpleNamespace(card=card, preprocessor=Preprocessor.from_card(card, files))
    assert len(tokenize(big, _parse({"input": [[7] * 1000] * 300}))) == 300  # 300,000 tokens: allowed
    with pytest.raises(RequestError) as err:
        tokenize(big, _parse({"input": [[7] * 1000] * 300 + [[7]]}))
    assert err.value.code == "max_tokens_per_request" and err.value.param == "input"


def test_response_body_in_both_encodings():
    vectors = [[0.5, -1.25, 3.0], [0.1, 0.2, 0.3]]
    outputs = [
        EmbedOutput(index=i, embedding=array.array("f", v).tobytes(), prompt_tokens=4 + i)
        for i, v in enumerate(vectors)
    ]
    as_float = json.loads(response_body(_parse({"input": ["a", "b"]}), "m", outputs))
    EmbeddingResponse.model_validate(as_float)
    assert as_float["object"] == "list" and as_float["model"] == "m"
    assert as_float["usage"] == {"prompt_tokens": 9, "total_tokens": 9}
    assert [d["index"] for d in as_float["data"]] == [0, 1]
    assert as_float["data"][0] == {"object": "embedding", "index": 0, "embedding": [0.5, -1.25, 3.0]}
    float32 = [array.array("f", v).tolist() for v in vectors]
    assert [d["embedding"] for d in as_float["data"]] == float32
    as_b64 = json.loads(
        response_body(_parse({"input": ["a", "b"], "encoding_format": "base64"}), "m", outputs)
    )
    EmbeddingResponse.model_validate(as_b64)
    decoded = [array.array("f", base64.b64decode(d["embedding"])).tolist() for d in as_b64["data"]]
    assert decoded == float32


def test_wire_structs_round_trip():
    req = EmbedRequest(request_id="r", inputs=[[1, 2], [3]], dimensions=8)
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(req), type=EmbedRequest) == req
    out = EmbedOutput(index=2, error="no", error_kind="invalid", error_param="dimensions")
    assert msgspec.convert(msgspec.msgpack.decode(msgspec.msgpack.encode(out)), EmbedOutput) == out


def test_openapi_describes_the_route():
    app = create_app(FrontendConfig.from_args(build_parser().parse_args([])))
    doc = app.api.openapi()
    op = doc["paths"]["/v1/embeddings"]["post"]
    assert op["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/EmbeddingRequest"
    }
    request = doc["components"]["schemas"]["EmbeddingRequest"]
    assert request["additionalProperties"] is False and set(request["required"]) == {"model", "input"}
    assert {"400", "404", "413", "429", "500", "503"} <= set(op["responses"])
