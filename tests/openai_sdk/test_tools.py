"""Tool calling through the official SDK on the real model (issue 11, section 1).

Worker flag ``--dyn-tool-call-parser hermes``. ``required`` and a named function must give calls
whose arguments validate against the tool's parameters even on a 135M model (the engine's guided
decoding does it, not the model's goodwill); streamed calls start with a delta carrying the call's
id and function name, and their joined arguments equal the non-streamed call's.
"""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from tests.openai_sdk.shapes import (
    ASK_WEATHER,
    MODEL,
    NAMED,
    TOOL_HISTORY,
    TOOLS,
    chat_summary,
    create,
    fetch_all,
    get,
    tool_call_problems,
    usage_of,
)

pytest.importorskip("vllm")
pytestmark = [pytest.mark.vllm, pytest.mark.timeout(300)]

SHAPES: dict[str, dict[str, Any]] = {
    "none": {"messages": ASK_WEATHER, "tools": TOOLS, "tool_choice": "none", "max_tokens": 24},
    "auto": {"messages": ASK_WEATHER, "tools": TOOLS, "tool_choice": "auto", "max_tokens": 96},
    "required": {"messages": ASK_WEATHER, "tools": TOOLS, "tool_choice": "required", "max_tokens": 160},
    "named": {"messages": ASK_WEATHER, "tools": TOOLS, "tool_choice": NAMED, "max_tokens": 160},
    "single": {
        "messages": ASK_WEATHER,
        "tools": TOOLS,
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "max_tokens": 160,
    },
    "history": {"messages": TOOL_HISTORY, "tools": TOOLS, "max_tokens": 24},
    "question only": {"messages": ASK_WEATHER, "tools": TOOLS, "tool_choice": "none", "max_tokens": 1},
}
MODES = ["plain", "stream"]


@pytest.fixture(scope="module")
def answers(sdk: openai.OpenAI) -> dict[str, Any]:
    """Every shape, plain and streamed, sent at once (greedy)."""
    calls = {}
    for name, body in SHAPES.items():
        base = {"model": MODEL, "temperature": 0, **body}
        calls[f"{name} plain"] = lambda b=base: create(sdk, "chat", b)
        streamed = {**base, "stream": True, "stream_options": {"include_usage": True}}
        calls[f"{name} stream"] = lambda b=streamed: create(sdk, "chat", b)
    return fetch_all(calls)


def only(answers: dict[str, Any], key: str) -> dict[str, Any]:
    choices = chat_summary(get(answers, key))
    assert list(choices) == [0], choices
    return choices[0]


@pytest.mark.parametrize("mode", MODES)
def test_tool_choice_none_answers_in_text(answers, mode):
    choice = only(answers, f"none {mode}")
    assert choice["tool_calls"] == []
    assert choice["content"]
    assert choice["finish_reason"] in ("stop", "length")


@pytest.mark.parametrize("mode", MODES)
def test_tool_choice_auto_gives_text_or_valid_calls(answers, mode):
    choice = only(answers, f"auto {mode}")
    if choice["tool_calls"]:
        assert tool_call_problems(choice["tool_calls"], TOOLS) == []
        assert choice["finish_reason"] == "tool_calls"
    else:
        assert choice["content"]


@pytest.mark.parametrize("mode", MODES)
def test_required_tool_calls_validate_against_the_parameters(answers, mode):
    choice = only(answers, f"required {mode}")
    assert choice["tool_calls"], choice
    assert tool_call_problems(choice["tool_calls"], TOOLS) == []
    assert choice["finish_reason"] == "tool_calls"
    ids = [c["id"] for c in choice["tool_calls"]]
    assert all(ids) and len(set(ids)) == len(ids)


@pytest.mark.parametrize("mode", MODES)
def test_named_tool_call_calls_that_function_with_valid_arguments(answers, mode):
    choice = only(answers, f"named {mode}")
    assert choice["tool_calls"], choice
    assert tool_call_problems(choice["tool_calls"], TOOLS, named="get_weather") == []


@pytest.mark.parametrize("mode", MODES)
def test_parallel_tool_calls_false_gives_one_call(answers, mode):
    choice = only(answers, f"single {mode}")
    assert len(choice["tool_calls"]) == 1, choice
    assert tool_call_problems(choice["tool_calls"], TOOLS) == []


@pytest.mark.parametrize("shape", ["required", "named", "single"])
def test_streamed_calls_start_with_id_and_name_and_join_to_the_plain_call(answers, shape):
    streamed, plain = only(answers, f"{shape} stream"), only(answers, f"{shape} plain")
    assert [c["first_delta"] for c in streamed["tool_calls"]] == [["id", "name"]] * len(
        streamed["tool_calls"]
    )
    assert [c["name"] for c in streamed["tool_calls"]] == [c["name"] for c in plain["tool_calls"]]
    assert [json.loads(c["arguments"]) for c in streamed["tool_calls"]] == [
        json.loads(c["arguments"]) for c in plain["tool_calls"]
    ]


@pytest.mark.parametrize("mode", MODES)
def test_tool_call_and_tool_result_in_the_history_are_rendered(answers, mode):
    choice = only(answers, f"history {mode}")
    assert choice["content"] or choice["tool_calls"]
    with_history = usage_of(get(answers, f"history {mode}"))["prompt_tokens"]
    question_only = usage_of(get(answers, "question only plain"))["prompt_tokens"]
    # The assistant's call and the tool's JSON result (~60 tokens) are in the prompt.
    assert with_history >= question_only + 50, (with_history, question_only)
