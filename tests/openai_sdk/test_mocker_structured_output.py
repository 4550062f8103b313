"""Structured-output request shapes against frontend + mocker (issue 11, sections 2 and 3): the
mocker has no guided decoding, so every constraint is a clear 400 naming the field -- never an
unconstrained answer -- while ``response_format: text`` (no constraint) is served. The removed
``guided_*`` fields are refused naming ``structured_outputs`` whatever the engine.
"""

from __future__ import annotations

from typing import Any

import openai
import pytest

from tests.openai_sdk.shapes import (
    CHOICES,
    DESCRIBE,
    GRAMMAR,
    HI,
    MOCK_MODEL,
    PERSON_FORMAT,
    PERSON_SCHEMA,
    REGEX,
    REMOVED_GUIDED,
    THINK_REGEX,
    assert_names,
    chat_summary,
    create,
    refusal,
)

pytestmark = [pytest.mark.timeout(120)]
MODES = ["plain", "stream"]
CONSTRAINTS: dict[str, tuple[str, dict[str, Any], str]] = {
    "json_object": ("chat", {"response_format": {"type": "json_object"}}, "response_format"),
    "json_schema": ("chat", {"response_format": PERSON_FORMAT}, "response_format"),
    "so json": ("chat", {"structured_outputs": {"json": PERSON_SCHEMA}}, "structured_outputs"),
    "so regex": ("chat", {"structured_outputs": {"regex": REGEX}}, "structured_outputs"),
    "so choice": ("chat", {"structured_outputs": {"choice": CHOICES}}, "structured_outputs"),
    "so grammar": ("chat", {"structured_outputs": {"grammar": GRAMMAR}}, "structured_outputs"),
    "reasoning regex": ("chat", {"structured_outputs": {"regex": THINK_REGEX}}, "structured_outputs"),
    "completion json_schema": ("completions", {"response_format": PERSON_FORMAT}, "response_format"),
    "completion so choice": (
        "completions",
        {"structured_outputs": {"choice": CHOICES}},
        "structured_outputs",
    ),
}


def base(endpoint: str, mode: str) -> dict[str, Any]:
    out: dict[str, Any] = {"model": MOCK_MODEL, "max_tokens": 8}
    out.update({"messages": DESCRIBE} if endpoint == "chat" else {"prompt": "A person as JSON:"})
    if mode == "stream":
        out["stream"] = True
    return out


@pytest.mark.parametrize("name", list(CONSTRAINTS))
@pytest.mark.parametrize("mode", MODES)
def test_constraint_is_refused_by_an_engine_without_guided_decoding(
    mock_sdk: openai.OpenAI, name: str, mode: str
):
    endpoint, fields, param = CONSTRAINTS[name]
    err = refusal(mock_sdk, endpoint, {**base(endpoint, mode), **fields})
    assert_names(err, param)


@pytest.mark.parametrize("mode", MODES)
def test_response_format_text_is_served(mock_sdk: openai.OpenAI, mode: str):
    answer = create(mock_sdk, "chat", {**base("chat", mode), "response_format": {"type": "text"}})
    assert chat_summary(answer)[0]["content"]


@pytest.mark.parametrize("field", list(REMOVED_GUIDED))
def test_removed_guided_fields_are_refused_naming_structured_outputs(mock_sdk: openai.OpenAI, field: str):
    err = refusal(
        mock_sdk, "chat", {"model": MOCK_MODEL, "messages": HI, "max_tokens": 4, field: REMOVED_GUIDED[field]}
    )
    assert_names(err, field, "structured_outputs")
