"""Sampling and scoring request shapes against frontend + mocker (issue 11, section 4): the
frontend's fan-out of ``n`` and of a list of prompts (indices, summed usage, one usage chunk),
``echo``, ``/v1/models``; and what the mocker cannot do (``logit_bias``, prompt logprobs) is a 400
naming the field. The mocker gives exactly ``max_tokens`` tokens when asked for a number.
"""

from __future__ import annotations

import time
from typing import Any

import openai
import pytest

from tests.openai_sdk.shapes import (
    HI,
    MOCK_MODEL,
    PROMPTS,
    assert_names,
    chat_summary,
    completion_summary,
    create,
    refusal,
    usage_of,
)

pytestmark = [pytest.mark.timeout(120)]
MODES = ["plain", "stream"]


def body(mode: str, **fields: Any) -> dict[str, Any]:
    out = {"model": MOCK_MODEL, **fields}
    if mode == "stream":
        out.update(stream=True, stream_options={"include_usage": True})
    return out


@pytest.mark.parametrize("mode", MODES)
def test_chat_n_choices_with_their_indices_and_summed_usage(mock_sdk: openai.OpenAI, mode: str):
    answer = create(mock_sdk, "chat", body(mode, messages=HI, n=3, max_tokens=5, seed=3))
    choices = chat_summary(answer)
    assert sorted(choices) == [0, 1, 2] and all(c["content"] for c in choices.values())
    assert usage_of(answer)["completion_tokens"] == 15
    if mode == "stream":
        assert [c for c in answer if c.usage is not None] == [answer[-1]] and not answer[-1].choices


@pytest.mark.parametrize("mode", MODES)
def test_completion_prompts_times_n(mock_sdk: openai.OpenAI, mode: str):
    answer = create(mock_sdk, "completions", body(mode, prompt=PROMPTS, n=2, max_tokens=4))
    choices = completion_summary(answer)
    assert sorted(choices) == [0, 1, 2, 3] and all(c["text"] for c in choices.values())
    usage = usage_of(answer)
    assert usage["completion_tokens"] == 16
    singles = [
        usage_of(create(mock_sdk, "completions", body("plain", prompt=p, max_tokens=1))) for p in PROMPTS
    ]
    assert usage["prompt_tokens"] == sum(u["prompt_tokens"] for u in singles)


@pytest.mark.parametrize("mode", MODES)
def test_a_list_of_prompts(mock_sdk: openai.OpenAI, mode: str):
    choices = completion_summary(create(mock_sdk, "completions", body(mode, prompt=PROMPTS, max_tokens=3)))
    assert sorted(choices) == [0, 1]


@pytest.mark.parametrize("mode", MODES)
def test_echo_puts_the_prompt_first(mock_sdk: openai.OpenAI, mode: str):
    text = completion_summary(
        create(mock_sdk, "completions", body(mode, prompt=PROMPTS[0], echo=True, max_tokens=3))
    )[0]["text"]
    assert text.startswith(PROMPTS[0]) and len(text) > len(PROMPTS[0])


@pytest.mark.parametrize("mode", MODES)
def test_echo_with_max_tokens_0_returns_the_prompt(mock_sdk: openai.OpenAI, mode: str):
    choices = completion_summary(
        create(mock_sdk, "completions", body(mode, prompt=PROMPTS[0], echo=True, max_tokens=0))
    )
    assert choices[0]["text"] == PROMPTS[0]


def test_logit_bias_is_refused_by_an_engine_that_cannot_apply_it(mock_sdk: openai.OpenAI):
    err = refusal(mock_sdk, "chat", body("plain", messages=HI, max_tokens=4, logit_bias={"100": 50}))
    assert_names(err, "logit_bias")


def test_prompt_logprobs_are_refused_by_an_engine_that_cannot_compute_them(mock_sdk: openai.OpenAI):
    err = refusal(
        mock_sdk, "completions", body("plain", prompt=PROMPTS[0], echo=True, logprobs=1, max_tokens=2)
    )
    assert_names(err, "logprobs|echo")


@pytest.mark.parametrize("mode", MODES)
def test_logprobs_are_given_or_refused_never_dropped(mock_sdk: openai.OpenAI, mode: str):
    try:
        answer = create(
            mock_sdk, "chat", body(mode, messages=HI, max_tokens=4, logprobs=True, top_logprobs=2)
        )
    except openai.BadRequestError as exc:
        assert_names(exc.response.json()["error"], "logprobs|top_logprobs")
        return
    entries = chat_summary(answer)[0]["logprobs"]
    assert entries and len(entries) == 4 and all(len(e["top_logprobs"]) == 2 for e in entries)


def test_best_of_is_served_or_refused_naming_it(mock_sdk: openai.OpenAI):
    try:
        answer = create(mock_sdk, "completions", body("plain", prompt=PROMPTS[0], best_of=2, max_tokens=4))
    except openai.BadRequestError as exc:
        assert_names(exc.response.json()["error"], "best_of")
        return
    assert len(answer.choices) == 1 and answer.usage.completion_tokens == 8


def test_models_have_a_real_created_time_and_an_owner(mock_sdk: openai.OpenAI):
    (model,) = mock_sdk.models.list().data
    assert model.id == MOCK_MODEL and model.object == "model" and model.owned_by
    assert 1_600_000_000 < model.created <= time.time() + 1
