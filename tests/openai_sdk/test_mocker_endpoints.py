"""``/v1/responses`` and ``/v1/embeddings`` against frontend + mocker (issue 11, section 5):
create, streamed events, ``previous_response_id`` through this frontend and another one of the
same graph, a clear 4xx for an unknown id; and ``/v1/embeddings`` on a model no worker serves as
an embedding model is a clear 4xx, not an answer.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.openai_sdk.conftest import MockGraph
from tests.openai_sdk.shapes import MOCK_MODEL, assert_names, error_body
from tests.support.graph import Frontend
from tests.support.procs import wait_until

pytestmark = [pytest.mark.timeout(120)]


def text(response) -> str:
    return "".join(
        p.text
        for item in response.output
        if item.type == "message"
        for p in item.content
        if p.type == "output_text"
    )


@pytest.fixture(scope="module")
def other_frontend(mock: MockGraph, log_dir: Path) -> Iterator[openai.OpenAI]:
    frontend = Frontend(log_dir, mock.env, name="sdk-mock-frontend-2")
    try:
        wait_until(
            lambda: bool(frontend.health().get("instances")), 30, "the second frontend seeing the mocker"
        )
        yield openai.OpenAI(base_url=f"{frontend.url}/v1", api_key="none", max_retries=0)
    finally:
        frontend.stop()


def test_responses_create(mock_sdk: openai.OpenAI):
    resp = mock_sdk.responses.create(model=MOCK_MODEL, input="Say hello.", max_output_tokens=6)
    assert resp.object == "response" and resp.id and resp.status in ("completed", "incomplete")
    assert text(resp) and resp.usage.output_tokens == 6


def test_responses_stream(mock_sdk: openai.OpenAI):
    events = list(
        mock_sdk.responses.create(model=MOCK_MODEL, input="Say hello.", max_output_tokens=6, stream=True)
    )
    types = [e.type for e in events]
    assert types[0] == "response.created" and types[-1] in ("response.completed", "response.incomplete")
    assert "response.output_text.delta" in types
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == text(events[-1].response)


@pytest.mark.parametrize("where", ["same frontend", "another frontend"])
def test_previous_response_id(mock_sdk: openai.OpenAI, other_frontend: openai.OpenAI, where: str):
    first = mock_sdk.responses.create(model=MOCK_MODEL, input="My name is Zorblax.", max_output_tokens=6)
    client = mock_sdk if where == "same frontend" else other_frontend
    follow = client.responses.create(
        model=MOCK_MODEL, input="My name?", previous_response_id=first.id, max_output_tokens=2
    )
    alone = mock_sdk.responses.create(model=MOCK_MODEL, input="My name?", max_output_tokens=2)
    assert follow.previous_response_id == first.id
    assert follow.usage.input_tokens >= first.usage.input_tokens + first.usage.output_tokens
    assert follow.usage.input_tokens > alone.usage.input_tokens


def test_unknown_previous_response_id_is_a_clear_4xx(mock_sdk: openai.OpenAI):
    with pytest.raises(openai.APIStatusError) as info:
        mock_sdk.responses.create(model=MOCK_MODEL, input="Hi", previous_response_id="resp_doesnotexist0000")
    assert info.value.status_code in (400, 404)
    assert_names(error_body(info.value), "previous_response_id|resp_doesnotexist0000")


def test_embeddings_on_a_generation_model_is_a_clear_4xx(mock_sdk: openai.OpenAI):
    with pytest.raises(openai.APIStatusError) as info:
        mock_sdk.embeddings.create(model=MOCK_MODEL, input="Hi", encoding_format="float")
    assert info.value.status_code in (400, 404)
    assert MOCK_MODEL in error_body(info.value)["message"]
