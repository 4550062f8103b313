"""Structured output through the official SDK on the real model (issue 11, section 2).

``response_format`` (``json_object``, ``json_schema`` strict) and vLLM's ``structured_outputs``
extension (json, regex, choice, grammar) reach vLLM's guided decoding: the output satisfies the
constraint, checked with ``jsonschema`` / ``re.fullmatch``. vLLM 0.32 dropped the old ``guided_*``
fields (its server now ignores them); ours refuses them with a 400 naming the replacement.
"""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema
import openai
import pytest

from tests.openai_sdk.shapes import (
    CHOICES,
    DESCRIBE,
    GRAMMAR,
    GRAMMAR_AS_REGEX,
    HI,
    MODEL,
    PERSON_FORMAT,
    PERSON_SCHEMA,
    REGEX,
    REMOVED_GUIDED,
    assert_names,
    chat_summary,
    completion_summary,
    create,
    fetch_all,
    get,
    refusal,
)

pytest.importorskip("vllm")
pytestmark = [pytest.mark.vllm, pytest.mark.timeout(300)]

CHAT_SHAPES: dict[str, dict[str, Any]] = {
    "json_object": {"messages": DESCRIBE, "response_format": {"type": "json_object"}, "max_tokens": 160},
    "json_schema": {"messages": DESCRIBE, "response_format": PERSON_FORMAT, "max_tokens": 160},
    "so json": {"messages": DESCRIBE, "structured_outputs": {"json": PERSON_SCHEMA}, "max_tokens": 160},
    "so regex": {"messages": HI, "structured_outputs": {"regex": REGEX}, "max_tokens": 16},
    "so choice": {"messages": HI, "structured_outputs": {"choice": CHOICES}, "max_tokens": 16},
    "so grammar": {"messages": HI, "structured_outputs": {"grammar": GRAMMAR}, "max_tokens": 16},
}
COMPLETION_SHAPES: dict[str, dict[str, Any]] = {
    "completion json_schema": {
        "prompt": "A person as JSON:",
        "response_format": PERSON_FORMAT,
        "max_tokens": 160,
    },
    "completion so regex": {"prompt": "A code:", "structured_outputs": {"regex": REGEX}, "max_tokens": 16},
}
MODES = ["plain", "stream"]


@pytest.fixture(scope="module")
def answers(sdk: openai.OpenAI) -> dict[str, Any]:
    calls = {}
    for endpoint, shapes in (("chat", CHAT_SHAPES), ("completions", COMPLETION_SHAPES)):
        for name, body in shapes.items():
            base = {"model": MODEL, "temperature": 0, **body}
            calls[f"{name} plain"] = lambda e=endpoint, b=base: create(sdk, e, b)
            calls[f"{name} stream"] = lambda e=endpoint, b=base: create(sdk, e, {**b, "stream": True})
    return fetch_all(calls)


def content(answers: dict[str, Any], key: str) -> str:
    choices = chat_summary(get(answers, key))
    assert list(choices) == [0]
    assert choices[0]["finish_reason"] == "stop", choices[0]  # not cut short: the constraint completed
    return choices[0]["content"] or ""


@pytest.mark.parametrize("mode", MODES)
def test_json_object_output_is_a_json_object(answers, mode):
    assert isinstance(json.loads(content(answers, f"json_object {mode}")), dict)


@pytest.mark.parametrize("shape", ["json_schema", "so json"])
@pytest.mark.parametrize("mode", MODES)
def test_json_schema_output_validates(answers, shape, mode):
    jsonschema.validate(json.loads(content(answers, f"{shape} {mode}")), PERSON_SCHEMA)


@pytest.mark.parametrize("mode", MODES)
def test_regex_output_matches(answers, mode):
    assert re.fullmatch(REGEX, content(answers, f"so regex {mode}"))


@pytest.mark.parametrize("mode", MODES)
def test_choice_output_is_one_of_the_choices(answers, mode):
    assert content(answers, f"so choice {mode}") in CHOICES


@pytest.mark.parametrize("mode", MODES)
def test_grammar_output_is_in_the_language(answers, mode):
    assert re.fullmatch(GRAMMAR_AS_REGEX, content(answers, f"so grammar {mode}"))


@pytest.mark.parametrize("mode", MODES)
def test_completions_honour_response_format_and_structured_outputs(answers, mode):
    text = completion_summary(get(answers, f"completion json_schema {mode}"))[0]["text"]
    jsonschema.validate(json.loads(text), PERSON_SCHEMA)
    assert re.fullmatch(REGEX, completion_summary(get(answers, f"completion so regex {mode}"))[0]["text"])


def test_streamed_structured_output_equals_the_plain_one(answers):
    for name in CHAT_SHAPES:
        assert content(answers, f"{name} stream") == content(answers, f"{name} plain"), name


@pytest.mark.parametrize("field", [*REMOVED_GUIDED, "guided_whitespace_pattern"])
def test_removed_guided_fields_are_refused_naming_structured_outputs(sdk, field):
    value = REMOVED_GUIDED.get(field, r"[\n ]*")
    err = refusal(sdk, "chat", {"model": MODEL, "messages": HI, "max_tokens": 4, field: value})
    assert_names(err, field, "structured_outputs")


def test_removed_guided_decoding_backend_is_refused(sdk):
    """No per-request replacement: vLLM picks the backend server-side."""
    err = refusal(
        sdk, "chat", {"model": MODEL, "messages": HI, "max_tokens": 4, "guided_decoding_backend": "xgrammar"}
    )
    assert_names(err, "guided_decoding_backend")


def test_removed_guided_field_on_completions_is_refused(sdk):
    err = refusal(
        sdk, "completions", {"model": MODEL, "prompt": "Hi", "max_tokens": 4, "guided_regex": REGEX}
    )
    assert_names(err, "guided_regex", "structured_outputs")


def test_two_structured_output_kinds_at_once_are_refused(sdk):
    body = {
        "model": MODEL,
        "messages": HI,
        "max_tokens": 4,
        "structured_outputs": {"regex": REGEX, "choice": CHOICES},
    }
    assert_names(refusal(sdk, "chat", body), "structured_outputs")


def test_json_schema_response_format_without_a_schema_is_refused(sdk):
    body = {"model": MODEL, "messages": HI, "max_tokens": 4, "response_format": {"type": "json_schema"}}
    assert_names(refusal(sdk, "chat", body), "response_format")
