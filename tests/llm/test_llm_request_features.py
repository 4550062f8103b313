"""The request side of OpenAI parity: tools, structured output, logit_bias, fan-out, echo -> what
the engine is sent (``PreprocessedRequest``) and what the frontend keeps (``PreprocessedOutput``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from dynamo.llm.errors import RequestError
from dynamo.llm.model_card import EngineFeatures, ModelDeploymentCard
from dynamo.llm.openai import parse_chat_request, parse_completion_request
from dynamo.llm.preprocessor import PreprocessedOutput, Preprocessor
from dynamo.llm.protocols import GuidedDecoding, request_from_wire, request_to_wire

TEMPLATE = Path(__file__).parents[2] / "deploy" / "chat_templates" / "chatml_hermes_tools.jinja"
QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather of a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
            "required": ["city"],
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time"}}  # no parameters
ALL = EngineFeatures(structured_outputs=True, logit_bias=True, prompt_logprobs=True)


def _preprocessor(smollm2_dir: Path, features: EngineFeatures, tool_call_parser: str | None) -> Preprocessor:
    card = ModelDeploymentCard.from_local_path(
        smollm2_dir, custom_chat_template=TEMPLATE, tool_call_parser=tool_call_parser, features=features
    )
    return Preprocessor.from_card(card, card.read_files())


@pytest.fixture(scope="module")
def engine_like_vllm(smollm2_dir: Path) -> Preprocessor:
    """A model served by an engine with every feature, with the hermes parser and a tool template."""
    return _preprocessor(smollm2_dir, ALL, "hermes")


@pytest.fixture(scope="module")
def engine_like_mocker(smollm2_dir: Path) -> Preprocessor:
    """A model served by an engine without guided decoding, logit_bias or prompt logprobs."""
    return _preprocessor(smollm2_dir, EngineFeatures(), None)


def chat(pre: Preprocessor, **fields: Any) -> list[PreprocessedOutput]:
    body = {"model": "m", "messages": QUESTION, **fields}
    return pre.chat_choices(parse_chat_request(json.dumps(body)), "req")


def completion(pre: Preprocessor, **fields: Any) -> list[PreprocessedOutput]:
    body = {"model": "m", "prompt": "Once upon a time", **fields}
    return pre.completion_choices(parse_completion_request(json.dumps(body)), "req")


def refused(call: Any, *args: Any, **fields: Any) -> RequestError:
    with pytest.raises(RequestError) as info:
        call(*args, **fields)
    assert info.value.status == 400
    return info.value


def wire(out: PreprocessedOutput) -> Any:
    """The request as a worker decodes it."""
    return request_from_wire(request_to_wire(out.request))


# --- tools ----------------------------------------------------------------------------------------


def test_tools_are_rendered_into_the_prompt_and_auto_uses_the_cards_parser(
    engine_like_vllm: Preprocessor,
) -> None:
    [out] = chat(engine_like_vllm, tools=[WEATHER])
    assert (out.tool_mode, out.tool_parser, out.request.guided) == ("auto", "hermes", None)
    prompt = engine_like_vllm.tokenizer.decode(out.request.token_ids, skip_special_tokens=False)
    assert "<tools>" in prompt and '"name": "get_weather"' in prompt
    [plain] = chat(engine_like_vllm)
    assert plain.tool_mode == "none" and len(plain.request.token_ids) < len(out.request.token_ids)


def test_tool_history_is_rendered_with_calls_and_results(engine_like_vllm: Preprocessor) -> None:
    call = {
        "id": "c1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
    }
    messages = [
        *QUESTION,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny, 21 C"},
    ]
    [out] = chat(engine_like_vllm, messages=messages, tools=[WEATHER])
    prompt = engine_like_vllm.tokenizer.decode(out.request.token_ids, skip_special_tokens=False)
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in prompt
    assert "<tool_response>\nsunny, 21 C\n</tool_response>" in prompt


def test_required_constrains_to_an_array_of_calls_that_validates_against_each_tool(
    engine_like_vllm: Preprocessor,
) -> None:
    [out] = chat(engine_like_vllm, tools=[WEATHER, TIME], tool_choice="required")
    assert out.tool_mode == "required" and out.tool_parser is None
    guided = wire(out).guided
    assert guided is not None and guided.kind() == "json"
    schema = guided.json
    jsonschema.validate([{"name": "get_weather", "parameters": {"city": "Paris"}}], schema)
    jsonschema.validate(
        [{"name": "get_time", "parameters": {}}, {"name": "get_time", "parameters": {}}], schema
    )
    for bad in ([], [{"name": "get_weather", "parameters": {}}], [{"name": "nope", "parameters": {}}]):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
    [single] = chat(
        engine_like_vllm, tools=[WEATHER, TIME], tool_choice="required", parallel_tool_calls=False
    )
    assert single.request.guided is not None and single.request.guided.json is not None
    assert single.request.guided.json["maxItems"] == 1


def test_named_tool_constrains_to_its_arguments(engine_like_vllm: Preprocessor) -> None:
    choice = {"type": "function", "function": {"name": "get_weather"}}
    [out] = chat(engine_like_vllm, tools=[WEATHER, TIME], tool_choice=choice)
    assert (out.tool_mode, out.tool_name) == ("named", "get_weather")
    assert out.request.guided == GuidedDecoding(json=WEATHER["function"]["parameters"])  # type: ignore[index]
    [no_params] = chat(
        engine_like_vllm, tools=[TIME], tool_choice={"type": "function", "function": {"name": "get_time"}}
    )
    assert no_params.request.guided == GuidedDecoding(json={"type": "object", "properties": {}})


def test_tool_choice_none_keeps_tools_in_the_prompt_but_never_calls(engine_like_vllm: Preprocessor) -> None:
    [out] = chat(engine_like_vllm, tools=[WEATHER], tool_choice="none")
    assert out.tool_mode == "none" and out.request.guided is None
    assert "<tools>" in engine_like_vllm.tokenizer.decode(out.request.token_ids, skip_special_tokens=False)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tool_choice": "required"}, "tool_choice"),  # no tools
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "x"}}},
            "tool_choice.function.name",
        ),
        ({"tools": [WEATHER, WEATHER]}, "tools[1].function.name"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "nonsense"}}}]},
            "tools[0].function.parameters",
        ),
        (
            {"tools": [WEATHER], "tool_choice": "required", "response_format": {"type": "json_object"}},
            "response_format",
        ),
    ],
)
def test_bad_tool_requests_name_the_field(
    engine_like_vllm: Preprocessor, fields: dict[str, Any], param: str
) -> None:
    assert refused(chat, engine_like_vllm, **fields).param == param


def test_auto_without_a_parser_and_forced_calls_without_guided_decoding_are_refused(
    engine_like_mocker: Preprocessor,
) -> None:
    err = refused(chat, engine_like_mocker, tools=[WEATHER])
    assert err.param == "tool_choice" and "--dyn-tool-call-parser" in err.message
    err = refused(chat, engine_like_mocker, tools=[WEATHER], tool_choice="required")
    assert (err.param, err.code) == ("tool_choice", "unsupported_parameter")
    [out] = chat(engine_like_mocker, tools=[WEATHER], tool_choice="none")
    assert out.tool_mode == "none"


# --- structured output ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"response_format": {"type": "json_object"}}, GuidedDecoding(json_object=True)),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "n", "schema": {"type": "integer"}, "strict": True},
                }
            },
            GuidedDecoding(json={"type": "integer"}),
        ),
        ({"response_format": {"type": "text"}}, None),
        ({"structured_outputs": {"json": {"type": "boolean"}}}, GuidedDecoding(json={"type": "boolean"})),
        ({"structured_outputs": {"json": '{"type": "boolean"}'}}, GuidedDecoding(json={"type": "boolean"})),
        ({"structured_outputs": {"json_object": True}}, GuidedDecoding(json_object=True)),
        ({"structured_outputs": {"regex": "[0-9]{3}"}}, GuidedDecoding(regex="[0-9]{3}")),
        ({"structured_outputs": {"choice": ["yes", "no"]}}, GuidedDecoding(choice=["yes", "no"])),
        ({"structured_outputs": {"grammar": 'root ::= "a"'}}, GuidedDecoding(grammar='root ::= "a"')),
    ],
)
def test_structured_output_travels_to_the_engine(
    engine_like_vllm: Preprocessor, fields: dict[str, Any], expected: GuidedDecoding | None
) -> None:
    [out] = chat(engine_like_vllm, **fields)
    assert wire(out).guided == expected
    [done] = completion(engine_like_vllm, **fields)
    assert wire(done).guided == expected


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": 5}}}},
            "response_format.json_schema.schema",
        ),
        ({"structured_outputs": {"json": "{not json"}}, "structured_outputs.json"),
        ({"structured_outputs": {"json": "[1]"}}, "structured_outputs.json"),
        ({"structured_outputs": {"regex": ""}}, "structured_outputs.regex"),
        ({"structured_outputs": {"grammar": ""}}, "structured_outputs.grammar"),
    ],
)
def test_bad_structured_output_names_the_field(
    engine_like_vllm: Preprocessor, fields: dict[str, Any], param: str
) -> None:
    assert refused(chat, engine_like_vllm, **fields).param == param


def test_an_engine_without_guided_decoding_refuses_structured_output(
    engine_like_mocker: Preprocessor,
) -> None:
    err = refused(chat, engine_like_mocker, response_format={"type": "json_object"})
    assert (err.param, err.code) == ("response_format", "unsupported_parameter")
    assert (
        refused(completion, engine_like_mocker, structured_outputs={"regex": "a"}).param
        == "structured_outputs"
    )


# --- sampling breadth -----------------------------------------------------------------------------


def test_logit_bias_is_sent_by_token_id(
    engine_like_vllm: Preprocessor, engine_like_mocker: Preprocessor
) -> None:
    [out] = chat(engine_like_vllm, logit_bias={"42": 100, "7": -5})
    assert wire(out).sampling.logit_bias == {42: 100.0, 7: -5.0}
    assert refused(chat, engine_like_vllm, logit_bias={str(10**7): 1}).param == "logit_bias"
    assert refused(chat, engine_like_mocker, logit_bias={"42": 1}).param == "logit_bias"


def test_n_fans_out_into_numbered_engine_requests_with_seed_plus_index(
    engine_like_vllm: Preprocessor,
) -> None:
    outs = chat(engine_like_vllm, n=3, seed=10)
    assert [o.index for o in outs] == [0, 1, 2]
    assert [o.request.request_id for o in outs] == ["req-0", "req-1", "req-2"]
    assert [o.request.sampling.seed for o in outs] == [10, 11, 12]
    assert len({tuple(o.request.token_ids) for o in outs}) == 1
    assert all(o.request.sampling.seed is None for o in chat(engine_like_vllm, n=2))


def test_a_list_of_prompts_times_n_is_numbered_prompt_major(engine_like_vllm: Preprocessor) -> None:
    outs = completion(engine_like_vllm, prompt=["Paris is", "Rome is"], n=2)
    assert [o.index for o in outs] == [0, 1, 2, 3]
    assert outs[0].request.token_ids == outs[1].request.token_ids != outs[2].request.token_ids
    assert [o.echo_text for o in outs] == [None] * 4
    assert len({o.request.request_id for o in outs}) == 4
    ids = completion(engine_like_vllm, prompt=[[1, 2, 3], [4, 5]])
    assert [o.request.token_ids.tolist() for o in ids] == [[1, 2, 3], [4, 5]]


def test_echo_keeps_the_prompt_text_and_asks_for_prompt_logprobs(
    engine_like_vllm: Preprocessor, engine_like_mocker: Preprocessor
) -> None:
    [out] = completion(engine_like_vllm, echo=True)
    assert out.echo_text == "Once upon a time" and out.prompt_logprobs is None and not out.drop_output
    [scored] = completion(engine_like_vllm, echo=True, logprobs=1, max_tokens=0)
    assert scored.drop_output and scored.request.stop.max_tokens == 1  # one token generated, then dropped
    assert scored.prompt_logprobs == 1 and wire(scored).output.prompt_logprobs == 1
    [ids] = completion(engine_like_vllm, echo=True, prompt=[[28, 29]])
    assert ids.echo_text == engine_like_vllm.tokenizer.decode([28, 29], skip_special_tokens=False)
    [plain_echo] = completion(engine_like_mocker, echo=True)  # echo alone needs nothing of the engine
    assert plain_echo.echo_text == "Once upon a time"
    assert refused(completion, engine_like_mocker, echo=True, logprobs=1).param == "logprobs"


def test_reasoning_effort_reaches_the_template(smollm2_dir: Path, tmp_path: Path) -> None:
    template = tmp_path / "effort.jinja"
    template.write_text("{{ messages[0].content }} effort={{ reasoning_effort | default('unset') }}")
    card = ModelDeploymentCard.from_local_path(smollm2_dir, custom_chat_template=template)
    pre = Preprocessor.from_card(card, card.read_files())
    req = parse_chat_request(json.dumps({"model": "m", "messages": QUESTION, "reasoning_effort": "low"}))
    assert pre.render_chat(req).endswith("effort=low")
    req = parse_chat_request(json.dumps({"model": "m", "messages": QUESTION}))
    assert pre.render_chat(req).endswith("effort=unset")


def test_what_the_way_back_needs_travels_on_each_choice(engine_like_vllm: Preprocessor) -> None:
    [out] = chat(engine_like_vllm, tools=[WEATHER], parallel_tool_calls=False)
    assert out.parallel_tool_calls is False and out.thinking
    [off] = chat(engine_like_vllm, chat_template_kwargs={"enable_thinking": False})
    assert off.thinking is False
    outs = completion(engine_like_vllm, prompt=["a b", "c d"], n=2)
    assert [o.prompt_index for o in outs] == [0, 0, 1, 1]
