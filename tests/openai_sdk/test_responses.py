"""``/v1/responses`` through the official SDK on the real model (issue 11, section 5).

Create, the streamed events, and ``previous_response_id``: the follow-up's input holds the first
turn whichever frontend process receives it (a second frontend on the same discovery store), and
an unknown id is a clear 4xx naming it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.openai_sdk.conftest import OursStack
from tests.openai_sdk.shapes import MODEL, assert_names, error_body, fetch_all, get
from tests.support.graph import Frontend
from tests.support.procs import wait_until

pytest.importorskip("vllm")
pytestmark = [pytest.mark.vllm, pytest.mark.timeout(300)]

FIRST = "My name is Zorblax. Remember it."


def output_text(response) -> str:
    return "".join(
        part.text
        for item in response.output
        if item.type == "message"
        for part in item.content
        if part.type == "output_text"
    )


@pytest.fixture(scope="module")
def second_frontend(ours: OursStack, log_dir: Path) -> Iterator[str]:
    """Another frontend process of the same graph (its base URL)."""
    if ours.frontend is None:
        yield ours.base_url  # DYN_SDK_TESTS_URL: one server only
        return
    frontend = Frontend(log_dir, ours.env, name="sdk-frontend-2")
    try:
        wait_until(
            lambda: bool(frontend.health().get("instances")), 30, "the second frontend seeing the worker"
        )
        yield f"{frontend.url}/v1"
    finally:
        frontend.stop()


@pytest.fixture(scope="module")
def answers(sdk: openai.OpenAI, second_frontend: str) -> dict[str, Any]:
    """The module's requests, each wave sent at once: create (plain, streamed) and a first turn;
    then its follow-up on this frontend and on the other, and the question alone."""
    say = {"model": MODEL, "input": "Say hello.", "max_output_tokens": 12, "temperature": 0}
    first_wave = fetch_all(
        {
            "plain": lambda: sdk.responses.create(**say),
            "stream": lambda: list(sdk.responses.create(**say, stream=True)),
            "first": lambda: sdk.responses.create(
                model=MODEL, input=FIRST, max_output_tokens=12, temperature=0
            ),
        }
    )
    first = get(first_wave, "first")
    other = openai.OpenAI(base_url=second_frontend, api_key="none", max_retries=0)
    ask = {"model": MODEL, "input": "What is my name?", "max_output_tokens": 4, "temperature": 0}
    second_wave = fetch_all(
        {
            "same frontend": lambda: sdk.responses.create(**ask, previous_response_id=first.id),
            "another frontend": lambda: other.responses.create(**ask, previous_response_id=first.id),
            "alone": lambda: sdk.responses.create(**ask),
        }
    )
    return {**first_wave, **second_wave}


def test_create_returns_a_completed_response(answers):
    resp = get(answers, "plain")
    assert resp.object == "response" and resp.id and resp.model == MODEL
    assert resp.status in ("completed", "incomplete")
    assert output_text(resp)
    assert resp.usage.input_tokens > 0 and 0 < resp.usage.output_tokens <= 12


def test_streamed_events_build_the_same_response(answers):
    events = get(answers, "stream")
    types = [e.type for e in events]
    assert types[0] == "response.created" and types[-1] in ("response.completed", "response.incomplete")
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == output_text(events[-1].response) == output_text(get(answers, "plain"))
    assert [e.sequence_number for e in events] == list(range(len(events)))


@pytest.mark.parametrize("where", ["same frontend", "another frontend"])
def test_previous_response_id_carries_the_conversation(answers, where: str):
    first, follow, alone = (get(answers, k) for k in ("first", where, "alone"))
    assert follow.previous_response_id == first.id
    # The follow-up's prompt holds the first turn, its input and its output, then the new question.
    assert follow.usage.input_tokens >= first.usage.input_tokens + first.usage.output_tokens
    assert follow.usage.input_tokens > alone.usage.input_tokens


def test_unknown_previous_response_id_is_a_clear_4xx(sdk: openai.OpenAI):
    with pytest.raises(openai.APIStatusError) as info:
        sdk.responses.create(
            model=MODEL, input="Hi", previous_response_id="resp_doesnotexist0000", max_output_tokens=4
        )
    assert info.value.status_code in (400, 404)
    assert_names(error_body(info.value), "previous_response_id|resp_doesnotexist0000")
