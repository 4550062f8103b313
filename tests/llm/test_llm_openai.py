"""OpenAI request parsing: every malformed request becomes a 400 naming the field."""

from __future__ import annotations

import json
from typing import Any

import pytest

from dynamo.llm import errors
from dynamo.llm.errors import RequestError
from dynamo.llm.openai import parse_chat_request, parse_completion_request

USER = [{"role": "user", "content": "hi"}]


def chat(**fields: Any) -> bytes:
    return json.dumps({"model": "m", "messages": USER, **fields}).encode()


def completion(**fields: Any) -> bytes:
    return json.dumps({"model": "m", "prompt": "hi", **fields}).encode()


def test_minimal_chat_request_defaults() -> None:
    req = parse_chat_request(chat())
    assert req.model == "m"
    assert req.messages[0].content == "hi"
    assert req.stream is False and req.include_usage is False
    assert req.requested_max_tokens is None
    assert req.stop_strings() == []


def test_chat_request_fields_and_extensions() -> None:
    req = parse_chat_request(
        chat(
            temperature=0,
            top_p=1,
            top_k=0,
            min_p=0.05,
            seed=-1,
            stop="END",
            max_tokens=5,
            max_completion_tokens=7,
            logprobs=True,
            top_logprobs=3,
            stream=True,
            stream_options={"include_usage": True},
            ignore_eos=True,
            min_tokens=2,
            user="u",
            n=3,
            logit_bias={"42": -100, "7": 5.5},
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "object"}},
            },
            tools=[
                {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
            ],
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            parallel_tool_calls=False,
            metadata={"team": "a"},
            store=False,
            service_tier="auto",
            nvext={
                "ignore_eos": False,
                "greed_sampling": True,
                "annotations": ["a"],
                "backend_instance_id": 7,
            },
        )
    )
    assert req.top_k == 0 and req.min_p == 0.05
    assert req.stop_strings() == ["END"]
    assert req.requested_max_tokens == 7  # max_completion_tokens wins over the deprecated max_tokens
    assert req.include_usage is True
    assert req.nvext is not None and req.nvext.greed_sampling and req.nvext.annotations == ["a"]
    assert req.n == 3 and req.logit_bias == {"42": -100, "7": 5.5}
    assert req.response_format is not None and req.response_format.json_schema is not None
    assert req.response_format.json_schema.schema_ == {"type": "object"}
    assert req.tools is not None and req.tools[0].function.name == "get_weather"


@pytest.mark.parametrize("field", ["some_unknown_field", "prediction", "audio", "web_search_options"])
def test_unknown_fields_are_refused_by_name(field: str) -> None:
    with pytest.raises(RequestError) as info:
        parse_chat_request(chat(**{field: {"x": 1}}))
    assert (info.value.status, info.value.param, info.value.code) == (400, field, "unsupported_parameter")
    assert field in info.value.message


@pytest.mark.parametrize(
    ("field", "replacement"),
    [
        ("guided_json", "structured_outputs.json"),
        ("guided_regex", "structured_outputs.regex"),
        ("functions", "tools"),
    ],
)
def test_replaced_fields_name_their_replacement(field: str, replacement: str) -> None:
    with pytest.raises(RequestError) as info:
        parse_chat_request(chat(**{field: "x"}))
    assert info.value.param == field and replacement in info.value.message


def test_nested_unknown_field_is_named_with_its_path() -> None:
    with pytest.raises(RequestError) as info:
        parse_chat_request(chat(stream=True, stream_options={"include_usage": True, "x": 1}))
    assert info.value.param == "stream_options.x"


def test_completion_scoring_and_batches_parse() -> None:
    req = parse_completion_request(completion(prompt=["a", "b"], echo=True, logprobs=1, max_tokens=0, n=2))
    assert req.echo and req.max_tokens == 0 and req.n == 2


def test_content_parts_accepted() -> None:
    req = parse_chat_request(chat(messages=[{"role": "user", "content": [{"type": "text", "text": "a"}]}]))
    content = req.messages[0].content
    assert isinstance(content, list) and content[0].text == "a"


def test_assistant_tool_call_without_content_is_valid() -> None:
    messages = [*USER, {"role": "assistant", "tool_calls": [{"id": "1", "type": "function"}]}]
    assert len(parse_chat_request(chat(messages=messages)).messages) == 2


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        (json.dumps({"messages": USER}).encode(), "model"),
        (json.dumps({"model": "m"}).encode(), "messages"),
        (chat(messages=[]), "messages"),
        (chat(messages="hi"), "messages"),
        (chat(messages=[{"role": "user"}]), "messages[0].content"),
        (chat(messages=[{"role": "wizard", "content": "x"}]), "messages[0].role"),
        (chat(messages=[{"role": "user", "content": 5}]), "messages[0].content"),
        (
            chat(messages=[{"role": "user", "content": [{"type": "text", "text": 5}]}]),
            "messages[0].content[0].text",
        ),
        (
            chat(messages=[{"role": "user", "content": [{"type": "image_url"}]}]),
            "messages[0].content[0].type",
        ),
        (chat(n=129), "n"),
        (chat(n=0), "n"),
        (chat(logit_bias={"5": 101}), "logit_bias.5"),
        (chat(logit_bias={"abc": 1}), "logit_bias.abc"),
        (chat(stop=["a", "b", "c", "d", "e"]), "stop"),
        (chat(store=True), "store"),
        (chat(service_tier="flex"), "service_tier"),
        (chat(modalities=["audio"]), "modalities[0]"),
        (chat(metadata={str(i): "v" for i in range(17)}), "metadata"),
        (chat(tool_choice="sometimes"), "tool_choice"),
        (chat(tools=[{"type": "function", "function": {"name": "bad name"}}]), "tools[0].function.name"),
        (chat(tools=[{"type": "retrieval"}]), "tools[0].type"),
        (chat(response_format={"type": "xml"}), "response_format.type"),
        (chat(response_format={"type": "json_schema"}), "response_format.json_schema"),
        (chat(structured_outputs={"regex": "a", "choice": ["b"]}), "structured_outputs"),
        (chat(structured_outputs={}), "structured_outputs"),
        (chat(structured_outputs={"choice": []}), "structured_outputs.choice"),
        (
            chat(structured_outputs={"regex": "a"}, response_format={"type": "json_object"}),
            "structured_outputs",
        ),
        (chat(temperature=2.5), "temperature"),
        (chat(temperature=-0.1), "temperature"),
        (chat(temperature="0.5"), "temperature"),
        (chat(top_p=0), "top_p"),
        (chat(top_p=1.5), "top_p"),
        (chat(top_k=-2), "top_k"),
        (chat(min_p=1.5), "min_p"),
        (chat(presence_penalty=2.5), "presence_penalty"),
        (chat(frequency_penalty=-3), "frequency_penalty"),
        (chat(repetition_penalty=0), "repetition_penalty"),
        (chat(max_tokens=0), "max_tokens"),
        (chat(max_completion_tokens=-1), "max_completion_tokens"),
        (chat(max_tokens=1.5), "max_tokens"),
        (chat(top_logprobs=21, logprobs=True), "top_logprobs"),
        (chat(top_logprobs=2), "top_logprobs"),
        (chat(logprobs="yes"), "logprobs"),
        (chat(stop=["ok", 3]), "stop[1]"),
        (chat(stop=[""]), "stop"),
        (chat(stream="true"), "stream"),
        (chat(stream_options={"include_usage": True}), "stream_options"),
        (chat(seed=2**64), "seed"),
        (chat(min_tokens=-1), "min_tokens"),
        (chat(min_tokens=10, max_tokens=5), "min_tokens"),
        (chat(nvext={"top_k": -5}), "nvext.top_k"),
        (chat(nvext={"ignore_eos": "no"}), "nvext.ignore_eos"),
        (chat(add_generation_prompt=True, continue_final_message=True), "continue_final_message"),
    ],
)
def test_chat_validation_errors(body: bytes, param: str | None) -> None:
    with pytest.raises(RequestError) as info:
        parse_chat_request(body)
    err = info.value
    assert err.status == 400
    assert err.param == param
    assert err.type == "invalid_request_error"
    assert err.message


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (json.dumps({"model": "m"}).encode(), "prompt"),
        (completion(prompt=5), "prompt"),
        (completion(prompt=[]), "prompt"),
        (completion(prompt=[[]]), "prompt[0]"),
        (completion(prompt=["a", ""]), "prompt[1]"),
        (completion(prompt=["a"] * 2049), "prompt"),
        (completion(prompt=[1, -2]), "prompt[1]"),
        (completion(n=129), "n"),
        (completion(prompt=["a"] * 17, n=128), "n"),  # 2,176 choices: each an engine request
        (completion(prompt=[[1]] * 2048, n=2), "n"),
        (completion(best_of=2), "best_of"),
        (completion(suffix="x"), "suffix"),
        (completion(logprobs=21), "logprobs"),
        (completion(max_tokens=0), "max_tokens"),
        (completion(max_tokens=-1), "max_tokens"),
        (completion(guided_choice=["a"]), "guided_choice"),
    ],
)
def test_completion_validation_errors(body: bytes, param: str) -> None:
    with pytest.raises(RequestError) as info:
        parse_completion_request(body)
    assert (info.value.status, info.value.param) == (400, param)


def test_prompts_times_n_up_to_the_choice_limit_parse() -> None:
    assert parse_completion_request(completion(prompt=["a"] * 16, n=128)).n == 128
    assert parse_completion_request(completion(prompt=[1, 2, 3], n=128)).n == 128  # one prompt of ids


@pytest.mark.parametrize("prompt", ["text", ["text"], [1, 2, 3], [[1, 2, 3]]])
def test_completion_prompt_forms(prompt: Any) -> None:
    req = parse_completion_request(completion(prompt=prompt))
    assert req.prompt == prompt
    assert req.max_tokens == 16  # the OpenAI default for completions


def test_error_body_is_openai_shape() -> None:
    with pytest.raises(RequestError) as info:
        parse_chat_request(chat(temperature=9))
    body = json.loads(info.value.to_body())
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["param"] == "temperature"


def test_error_helpers() -> None:
    not_found = errors.model_not_found("gpt-x")
    assert (not_found.status, not_found.code, not_found.param) == (404, "model_not_found", "model")
    assert "gpt-x" in not_found.message
    assert errors.payload_too_large(1024).status == 413
    busy = errors.too_many_requests(retry_after=2.5)
    assert busy.status == 429 and busy.headers() == {"Retry-After": "3"}
    down = errors.service_unavailable()
    assert down.status == 503 and "Retry-After" in down.headers()
    assert errors.bad_request("x", "y").headers() == {}
