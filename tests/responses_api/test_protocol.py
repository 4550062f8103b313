"""``/v1/responses`` requests: validation (every unserved field or kind a 400 naming it) and the
translation into the chat completion request the chat path serves (messages as vLLM builds them
from input items, tools, tool choice, structured output, logprobs, reasoning effort)."""

from __future__ import annotations

import json

import pytest

from dynamo.llm.errors import RequestError
from dynamo.llm.openai_responses import (
    chat_request,
    input_messages,
    parse_responses_request,
    to_responses_error,
    to_responses_param,
)


def parse(**body) -> object:
    return parse_responses_request(json.dumps({"model": "m", "input": "hi", **body}))


def refused(param: str, **body) -> RequestError:
    with pytest.raises(RequestError) as info:
        req = parse(**body)
        chat_request(req, [])  # type: ignore[arg-type]
    assert info.value.status == 400, info.value
    assert info.value.param == param, info.value
    return info.value


def test_a_string_input_is_one_user_message_after_the_instructions():
    req = parse(instructions="Be brief.", max_output_tokens=7, temperature=0.5, top_p=0.9, user="u1")
    chat = chat_request(req, [])  # type: ignore[arg-type]
    assert [m.model_dump(exclude_none=True) for m in chat.messages] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
    ]
    assert (chat.max_completion_tokens, chat.temperature, chat.top_p, chat.user) == (7, 0.5, 0.9, "u1")


def test_history_comes_between_the_instructions_and_the_new_input():
    history = [{"role": "user", "content": "first"}, {"role": "assistant", "content": "answer"}]
    chat = chat_request(parse(instructions="sys", input="second"), history)  # type: ignore[arg-type]
    assert [(m.role, m.content) for m in chat.messages] == [
        ("system", "sys"),
        ("user", "first"),
        ("assistant", "answer"),
        ("user", "second"),
    ]


def test_input_items_become_chat_messages_as_vllm_builds_them():
    req = parse(
        input=[
            {"role": "developer", "content": "dev"},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "what is 2+2?"}]},
            {
                "type": "reasoning",
                "id": "rs_1",
                "summary": [],
                "content": [{"type": "reasoning_text", "text": "hmm"}],
            },
            {"type": "function_call", "call_id": "call_1", "name": "add", "arguments": '{"a":2,"b":2}'},
            {"type": "function_call", "call_id": "call_2", "name": "mul", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "call_1", "output": "4"},
            {
                "type": "message",
                "role": "assistant",
                "id": "msg_1",
                "status": "completed",
                "content": [{"type": "output_text", "text": "It is 4.", "annotations": []}],
            },
        ]
    )
    assert input_messages(req) == [  # type: ignore[arg-type]
        {"role": "developer", "content": "dev"},
        {"role": "user", "content": [{"type": "text", "text": "what is 2+2?"}]},
        {
            "role": "assistant",
            "content": None,
            "reasoning_content": "hmm",
            "reasoning": "hmm",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "add", "arguments": '{"a":2,"b":2}'},
                },
                {"id": "call_2", "type": "function", "function": {"name": "mul", "arguments": "{}"}},
            ],
        },
        {"role": "tool", "content": "4", "tool_call_id": "call_1"},
        {"role": "assistant", "content": "It is 4."},
    ]
    chat = chat_request(req, [])  # type: ignore[arg-type]
    assert chat.messages[2].tool_calls is not None and len(chat.messages[2].tool_calls) == 2
    assert not chat.continue_final_message


def test_an_unfinished_assistant_message_last_is_continued():
    req = parse(
        input=[
            {"role": "user", "content": "Count"},
            {
                "role": "assistant",
                "status": "incomplete",
                "content": [{"type": "output_text", "text": "1, 2,"}],
            },
        ]
    )
    chat = chat_request(req, [])  # type: ignore[arg-type]
    assert chat.continue_final_message and not chat.add_generation_prompt


def test_tools_tool_choice_and_text_format_map_to_their_chat_fields():
    tool = {"type": "function", "name": "get_weather", "description": "d", "parameters": {"type": "object"}}
    schema = {"type": "object", "properties": {"x": {"type": "integer"}}}
    req = parse(
        tools=[tool],
        tool_choice={"type": "function", "name": "get_weather"},
        parallel_tool_calls=False,
        text={"format": {"type": "json_schema", "name": "out", "schema": schema, "strict": True}},
    )
    chat = chat_request(req, [])  # type: ignore[arg-type]
    dumped = chat.model_dump(by_alias=True, exclude_none=True)
    assert dumped["tools"] == [
        {
            "type": "function",
            "function": {"name": "get_weather", "description": "d", "parameters": {"type": "object"}},
        }
    ]
    assert dumped["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert dumped["parallel_tool_calls"] is False
    assert dumped["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "out", "schema": schema, "strict": True},
    }
    obj = chat_request(parse(text={"format": {"type": "json_object"}}), [])  # type: ignore[arg-type]
    assert obj.model_dump(exclude_none=True)["response_format"] == {"type": "json_object"}


def test_logprobs_reasoning_effort_and_vllm_extensions_pass_through():
    req = parse(
        include=["message.output_text.logprobs"],
        top_logprobs=3,
        reasoning={"effort": "low"},
        top_k=5,
        seed=7,
        stop=["\n"],
        metadata={"k": "v"},
    )
    chat = chat_request(req, [])  # type: ignore[arg-type]
    assert (chat.logprobs, chat.top_logprobs, chat.top_k, chat.seed, chat.stop) == (True, 3, 5, 7, ["\n"])
    assert chat.chat_template_kwargs == {"enable_thinking": True}
    assert chat.model_dump()["reasoning_effort"] == "low"
    off = chat_request(parse(reasoning={"effort": "none"}), [])  # type: ignore[arg-type]
    assert off.chat_template_kwargs == {"enable_thinking": False}


@pytest.mark.parametrize(
    ("param", "body"),
    [
        ("conversation", {"conversation": "conv_1"}),
        ("background", {"background": True}),
        ("truncation", {"truncation": "auto"}),
        ("include[0]", {"include": ["file_search_call.results"]}),
        ("top_logprobs", {"top_logprobs": 2}),
        ("top_logprobs", {"include": ["message.output_text.logprobs"], "top_logprobs": 21}),
        ("tools[0].type", {"tools": [{"type": "web_search"}]}),
        ("tools[0].name", {"tools": [{"type": "function", "name": "bad name"}]}),
        ("input[0].type", {"input": [{"type": "item_reference", "id": "x"}]}),
        ("input[0].content[0].type", {"input": [{"role": "user", "content": [{"type": "input_image"}]}]}),
        (
            "input[0].encrypted_content",
            {"input": [{"type": "reasoning", "summary": [], "encrypted_content": "x"}]},
        ),
        ("reasoning.summary", {"reasoning": {"summary": "auto"}}),
        ("text.verbosity", {"text": {"verbosity": "low"}}),
        ("text.format", {"text": {"format": {"type": "json_schema", "name": "x"}}}),
        ("text.format.name", {"text": {"format": {"type": "json_object", "name": "x"}}}),
        ("metadata.k", {"metadata": {"k": "v" * 513}}),
        ("metadata", {"metadata": {str(i): "v" for i in range(17)}}),
        ("temperature", {"temperature": 2.5}),
        ("max_output_tokens", {"max_output_tokens": 0}),
        ("previous_response_id", {"previous_response_id": "../../etc"}),
        ("stream_options", {"stream": True, "stream_options": {"include_obfuscation": False}}),
        ("service_tier", {"service_tier": "flex"}),
        ("input", {"input": []}),
    ],
)
def test_what_is_not_served_is_a_400_naming_the_field(param, body):
    refused(param, **body)


def test_chat_field_paths_are_named_as_the_responses_fields():
    assert to_responses_param("messages[3].content") == "input"
    assert to_responses_param("max_completion_tokens") == "max_output_tokens"
    assert to_responses_param("response_format") == "text.format"
    assert to_responses_param("response_format.json_schema.schema") == "text.format.schema"
    assert to_responses_param("tools[2].function.parameters") == "tools[2].parameters"
    assert to_responses_param("top_logprobs") == "top_logprobs"
    assert to_responses_param("temperature") == "temperature"
    exc = to_responses_error(
        RequestError(
            400,
            "Please reduce the length of the messages or 'max_completion_tokens'.",
            param="max_completion_tokens",
        )
    )
    assert exc.param == "max_output_tokens"
    assert exc.message == "Please reduce the length of the input or 'max_output_tokens'."


def test_store_flags_and_their_environment(monkeypatch):
    from dynamo.frontend.args import FrontendConfig, build_parser

    def config(*argv: str) -> FrontendConfig:
        return FrontendConfig.from_args(build_parser().parse_args(list(argv)))

    default = config()
    assert (default.response_ttl, default.max_stored_response_bytes) == (3600.0, 1024 * 1024)
    flags = config("--response-ttl", "2.5", "--max-stored-response-bytes", "100")
    assert (flags.response_ttl, flags.max_stored_response_bytes) == (2.5, 100)
    monkeypatch.setenv("DYN_RESPONSE_TTL", "60")
    monkeypatch.setenv("DYN_MAX_STORED_RESPONSE_BYTES", "5")
    env = config()
    assert (env.response_ttl, env.max_stored_response_bytes) == (60.0, 5)
    for bad in (["--response-ttl", "0"], ["--response-ttl", "inf"], ["--max-stored-response-bytes", "-1"]):
        with pytest.raises(ValueError, match=bad[0]):
            config(*bad)
