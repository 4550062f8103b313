"""Responses API output from semantic deltas (thinking, text, tool calls, logprobs): the events
and the Response object hold to our published types and to the official SDK's, and the SDK's own
stream accumulator rebuilds the same final output from the events."""

from __future__ import annotations

import json

import openai.types.responses as sdk
import pytest
from openai._types import omit
from openai.lib.streaming.responses._responses import ResponseStreamState
from pydantic import TypeAdapter

from dynamo.frontend.choices import ChoiceDelta
from dynamo.frontend.responses_api.output import OutputBuilder, response_object
from dynamo.llm.openai_responses import ResponseObject, ResponseStreamEvent, parse_responses_request
from dynamo.llm.parsers import ToolCallDelta

OURS = ResponseStreamEvent
SDK_EVENT = TypeAdapter(sdk.ResponseStreamEvent)
TOOLS = [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}]
VOCAB = {1: "The", 2: " sky", 3: " is", 4: " blue", 9: "!"}


def token_text(token_id: int) -> str:
    return VOCAB[token_id]


def deltas() -> list[ChoiceDelta]:
    """Thinking, then text with logprobs, then two tool calls whose arguments come in pieces."""
    return [
        ChoiceDelta(0, reasoning="Let me think"),
        ChoiceDelta(0, reasoning=" about it."),
        ChoiceDelta(0, text="The sky", logprobs=[(1, -0.1, [(1, -0.1), (9, -2.5)]), (2, -0.2, [(2, -0.2)])]),
        ChoiceDelta(0, text=" is blue", logprobs=[(3, -0.3, []), (4, -0.4, [])]),
        ChoiceDelta(0, tool_calls=[ToolCallDelta(0, "call_a", "get_weather", '{"city": ')]),
        ChoiceDelta(0, tool_calls=[ToolCallDelta(0, arguments='"Paris"}')]),
        ChoiceDelta(
            0,
            tool_calls=[ToolCallDelta(1, "call_b", "get_weather", '{"city": "Rome"}')],
            finish_reason="tool_calls",
        ),
    ]


def run(top_logprobs: int | None, close_status: str = "completed") -> tuple[list[dict], list[dict], dict]:
    body = {"model": "m", "input": "hi", "tools": TOOLS}
    if top_logprobs is not None:
        body |= {"include": ["message.output_text.logprobs"], "top_logprobs": top_logprobs}
    req = parse_responses_request(json.dumps(body))
    out = OutputBuilder(token_text, top_logprobs)
    started = response_object(req, "resp_1", "m", 1700000000, "in_progress", [])
    events = [
        out.event("response.created", response=started),
        out.event("response.in_progress", response=started),
    ]
    for delta in deltas():
        events += out.add(delta)
    events += out.close(close_status)
    usage = {
        "input_tokens": 5,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": 9,
        "output_tokens_details": {"reasoning_tokens": 3},
        "total_tokens": 14,
    }
    status = "incomplete" if close_status == "incomplete" else "completed"
    final = response_object(req, "resp_1", "m", 1700000000, status, out.items, usage)
    final["completed_at"] = 1700000001
    kind = "response.incomplete" if status == "incomplete" else "response.completed"
    events.append(out.event(kind, response=final))
    return (
        json.loads(json.dumps(events)),
        json.loads(json.dumps(out.as_messages())),
        json.loads(json.dumps(final)),
    )


@pytest.mark.parametrize("top_logprobs", [None, 1])
def test_events_are_valid_numbered_and_rebuild_the_final_output(top_logprobs):
    events, _, final = run(top_logprobs)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    for e in events:
        OURS.model_validate(e)
        SDK_EVENT.validate_python(e)
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",  # reasoning
        "response.content_part.added",
        "response.reasoning_text.delta",
        "response.reasoning_text.delta",
        "response.reasoning_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",  # message
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",  # first call
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.output_item.added",  # second call
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    ResponseObject.model_validate(final)
    parsed = sdk.Response.model_validate(final)
    reasoning, message, call_a, call_b = parsed.output
    assert (
        reasoning.type == "reasoning"
        and reasoning.content
        and reasoning.content[0].text == "Let me think about it."
    )
    assert message.type == "message" and message.content[0].type == "output_text"
    assert message.content[0].text == "The sky is blue"
    assert call_a.type == "function_call" and (call_a.call_id, call_a.arguments) == (
        "call_a",
        '{"city": "Paris"}',
    )
    assert call_b.type == "function_call" and (call_b.call_id, call_b.arguments) == (
        "call_b",
        '{"city": "Rome"}',
    )
    assert len({i.id for i in parsed.output}) == 4
    # The SDK's own accumulator (client.responses.stream) takes the events and ends on the same output.
    state = ResponseStreamState(input_tools=TOOLS, text_format=omit)  # type: ignore[arg-type]
    for e in events:
        state.handle_event(SDK_EVENT.validate_python(e))
    done = state._completed_response
    assert done is not None and [i.id for i in done.output] == [i.id for i in parsed.output]
    assert done.output_text == "The sky is blue"


def test_logprobs_are_in_the_text_part_and_its_deltas_when_asked():
    events, _, final = run(top_logprobs=1)
    deltas_lp = [lp for e in events if e["type"] == "response.output_text.delta" for lp in e["logprobs"]]
    assert [(lp["token"], lp["logprob"]) for lp in deltas_lp] == [
        ("The", -0.1),
        (" sky", -0.2),
        (" is", -0.3),
        (" blue", -0.4),
    ]
    assert deltas_lp[0]["top_logprobs"] == [{"token": "The", "logprob": -0.1}]  # cut to top_logprobs
    part = final["output"][1]["content"][0]
    assert [lp["token"] for lp in part["logprobs"]] == ["The", " sky", " is", " blue"]
    assert part["logprobs"][0]["bytes"] == list(b"The")
    _, _, plain = run(top_logprobs=None)
    assert plain["output"][1]["content"][0]["logprobs"] is None


def test_the_conversation_keeps_text_and_calls_but_not_thinking():
    _, messages, _ = run(None)
    assert messages == [
        {
            "role": "assistant",
            "content": "The sky is blue",
            "tool_calls": [
                {
                    "id": "call_a",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                },
                {
                    "id": "call_b",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'},
                },
            ],
        }
    ]


def test_cut_at_max_output_tokens_the_last_item_and_the_response_are_incomplete():
    events, _, final = run(None, close_status="incomplete")
    assert events[-1]["type"] == "response.incomplete"
    assert final["incomplete_details"] == {"reason": "max_output_tokens"}
    assert [i["status"] for i in final["output"]] == ["completed", "completed", "completed", "incomplete"]
    sdk.Response.model_validate(final)


def test_an_empty_output_has_no_items():
    out = OutputBuilder(token_text, None)
    assert out.add(ChoiceDelta(0, finish_reason="stop")) == []
    assert out.close() == []
    assert out.items == [] and out.as_messages() == [{"role": "assistant", "content": ""}]
