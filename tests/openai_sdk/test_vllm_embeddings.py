"""``/v1/embeddings`` through the official SDK (issue 11, section 5): SmolLM2 served by
``dynamo.vllm --runner pooling`` as an embedding model gives the vectors vLLM's own server gives
for the same input, and ``/v1/models`` and the other endpoints stay truthful about it.

These tests run last (``conftest.pytest_collection_modifyitems``): the pooling engine replaces the
generating one.
"""

from __future__ import annotations

import array
import base64
import math

import openai
import pytest

from tests.openai_sdk.conftest import EMBED_INPUTS, EMBED_MODEL, OursStack
from tests.openai_sdk.shapes import HI

pytest.importorskip("vllm")
pytestmark = [pytest.mark.vllm, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def client(embed_stack: OursStack):
    c = openai.OpenAI(base_url=embed_stack.base_url, api_key="none", max_retries=0, timeout=120)
    yield c
    c.close()


@pytest.mark.parametrize("encoding", ["float", "base64"])
def test_vectors_equal_vllms_own_server(
    client: openai.OpenAI, embed_reference: list[list[float]], encoding: str
):
    resp = client.embeddings.create(model=EMBED_MODEL, input=EMBED_INPUTS, encoding_format=encoding)  # type: ignore[arg-type]
    assert [d.index for d in resp.data] == list(range(len(EMBED_INPUTS)))
    assert resp.model == EMBED_MODEL and resp.usage.prompt_tokens > 0
    if encoding == "base64":  # asked for explicitly, the SDK hands the string over as it came
        for d in resp.data:
            d.embedding = array.array("f", base64.b64decode(d.embedding)).tolist()  # type: ignore[arg-type]
    for got, want in zip((d.embedding for d in resp.data), embed_reference, strict=True):
        assert len(got) == len(want)
        assert max(abs(a - b) for a, b in zip(got, want, strict=True)) < 1e-4
    vecs = [d.embedding for d in resp.data]
    assert vecs[1] == vecs[2] and vecs[0] != vecs[1]  # same input, same vector
    assert all(math.isfinite(x) for v in vecs for x in v)


def test_single_string_input(client: openai.OpenAI, embed_reference: list[list[float]]):
    resp = client.embeddings.create(model=EMBED_MODEL, input=EMBED_INPUTS[0], encoding_format="float")
    assert len(resp.data) == 1
    assert max(abs(a - b) for a, b in zip(resp.data[0].embedding, embed_reference[0], strict=True)) < 1e-4


def test_models_lists_the_embedding_model(client: openai.OpenAI):
    assert EMBED_MODEL in [m.id for m in client.models.list().data]


def test_chat_on_an_embedding_model_is_a_clear_4xx(client: openai.OpenAI):
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model=EMBED_MODEL, messages=HI, max_tokens=4)  # type: ignore[arg-type]
    assert info.value.status_code in (400, 404)
    err = info.value.response.json()["error"]
    assert set(err) >= {"message", "type", "param", "code"} and EMBED_MODEL in err["message"]
