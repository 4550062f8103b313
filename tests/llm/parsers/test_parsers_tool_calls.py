"""Tool-call parsers on model outputs from vLLM's and NVIDIA Dynamo's parser tests (sources cited per
group), each also streamed split at every character boundary and in random pieces, which must give
the same content, the same calls in the same order and the same arguments as ``parse``."""

from __future__ import annotations

import json
from typing import Any

import pytest
from parser_stream_check import check_tool_stream

from dynamo.llm.parsers import TOOL_CALL_PARSERS, ToolCallParser, tool_call_parser

Expected = tuple[str | None, list[tuple[str, Any]]]  # (content, [(name, arguments as parsed JSON)])


def case(text: str, content: str | None, *calls: tuple[str, Any], id: str) -> Any:
    return pytest.param(text, (content, list(calls)), id=id)


# --- hermes ----------------------------------------------------------------------------------
# vllm-project/vllm tests/tool_parsers/test_hermes_tool_parser.py
HERMES = [
    case(
        "This is some prior text that has nothing to do with tool calling.",
        "This is some prior text that has nothing to do with tool calling.",
        id="just_forward_text",
    ),
    case(
        '<tool_call>\n{"name": "final_answer", "arguments": {"trigger": true}}\n</tool_call>',
        None,
        ("final_answer", {"trigger": True}),
        id="bug_19056_between_tags",
    ),
    case(
        '<tool_call>{"name": "get_current_temperature","arguments": {"location":'
        '"San Francisco, California, United States", "unit": "celsius"}}</tool_call>',
        None,
        (
            "get_current_temperature",
            {"location": "San Francisco, California, United States", "unit": "celsius"},
        ),
        id="streaming",
    ),
    case(
        'Sure, let me check the weather.<tool_call>{"name": "get_weather", '
        '"arguments": {"city": "NYC"}}</tool_call>',
        "Sure, let me check the weather.",
        ("get_weather", {"city": "NYC"}),
        id="content_then_tool_call",
    ),
    case(
        '<tool_call>{"name": "search", "arguments": {"q": "cats"}}</tool_call>'
        '<tool_call>{"name": "search", "arguments": {"q": "dogs"}}</tool_call>',
        None,
        ("search", {"q": "cats"}),
        ("search", {"q": "dogs"}),
        id="multiple_tool_calls",
    ),
    case(
        '<tool_call>\n{"name": "final_answer", "arguments": {"trigger": true}}',
        None,
        ("final_answer", {"trigger": True}),
        id="tool_call_until_eos",
    ),
    case(
        '<tool_call>\n{"name": "final_answer", "arguments": {"trigger": true}',
        '<tool_call>\n{"name": "final_answer", "arguments": {"trigger": true}',
        id="invalid_json_stays_content",
    ),
    case(
        '<tool_call>\n{"name": "get_db_config", "arguments": "{\\"param\\": \\"max_connections\\"}"}\n</tool_call>',
        None,
        ("get_db_config", {"param": "max_connections"}),
        id="serialized_arguments",
    ),
    case(
        '<tool_call>\n{"name": "do_thing", "arguments": "hello"}\n</tool_call>',
        None,
        ("do_thing", "hello"),
        id="bare_string_arguments",
    ),
    case(
        'Hi!<tool_call>{"name": "f", "arguments": {"x": 1}}</tool_call>',
        "Hi!",
        ("f", {"x": 1}),
        id="content_and_tool_call_in_one_chunk",
    ),
]
# ai-dynamo/dynamo lib/parsers/src/tool_calling/test_cases/fixtures/hermes.rs (single call shape
# `<tool_call>{"name":NAME,"arguments":ARGS}\n</tool_call>`) and our own edge cases.
HERMES += [
    case(
        '<tool_call>{"name":"get_weather","arguments":{"location":"Zürich","unit":"°C"}}\n</tool_call>',
        None,
        ("get_weather", {"location": "Zürich", "unit": "°C"}),
        id="dynamo_single_call_multibyte",
    ),
    case(
        "Voilà 🌍: <tool_call>\n"
        '{"name": "traduire", "arguments": {"texte": "日本語 👩\u200d👩\u200d👧", "vers": "français"}}\n'
        "</tool_call>\n<tool_call>\n"
        '{"name": "compter", "arguments": {"n": -1.5e3, "ok": null}}\n'
        "</tool_call>\nFini ✅",
        "Voilà 🌍: \nFini ✅",
        ("traduire", {"texte": "日本語 👩\u200d👩\u200d👧", "vers": "français"}),
        ("compter", {"n": -1500.0, "ok": None}),
        id="text_before_between_after_multibyte",
    ),
    case(
        '\n\n<tool_call>{"name": "a", "arguments": {}}</tool_call>\n<tool_call>{"name": "b", "arguments": {}}'
        "</tool_call>\n",
        None,
        ("a", {}),
        ("b", {}),
        id="whitespace_around_calls_is_not_content",
    ),
    case(
        '<tool_call>[{"name": "a", "arguments": {"x": 1}}, {"name": "b", "parameters": {}}]</tool_call>',
        None,
        ("a", {"x": 1}),
        ("b", {}),
        id="list_in_one_block",
    ),
    case(
        '<tool_call>{"arguments": {}}</tool_call> and <tool_call>{"name": "ok", "arguments": {}}</tool_call>',
        '<tool_call>{"arguments": {}}</tool_call> and ',
        ("ok", {}),
        id="block_without_name_stays_content",
    ),
    case(
        '<tool_call>{"name": "a", "arguments": {"x": NaN}}</tool_call>',
        '<tool_call>{"name": "a", "arguments": {"x": NaN}}</tool_call>',
        id="nan_is_not_json",
    ),
    case(
        '<tool_call>{"name": "a", "arguments": {}}<tool_call>{"name": "b", "arguments": {}}</tool_call>',
        None,
        ("a", {}),
        ("b", {}),
        id="missing_close_before_next_open",
    ),
    case(
        "Wrap it in a <tool_call> tag, then </tool_call>.",
        "Wrap it in a <tool_call> tag, then </tool_call>.",
        id="tags_in_prose",
    ),
    case("", None, id="empty"),
    case("  \n", "  \n", id="whitespace_only"),
    case("ends in a partial tag <tool_ca", "ends in a partial tag <tool_ca", id="partial_tag_at_end"),
]

# --- llama3_json -----------------------------------------------------------------------------
# vllm-project/vllm tests/tool_parsers/test_llama3_json_tool_parser.py (vLLM drops every text
# around calls; we keep it as content).
LLAMA3 = [
    case(
        'Here is the result: {"name": "getOpenIncidentsTool", "parameters": {}} Would you like to know more?',
        "Here is the result:  Would you like to know more?",
        ("getOpenIncidentsTool", {}),
        id="simple",
    ),
    case(
        '{"name": "searchTool", "parameters": {"query": "test query", "limit": 10}}',
        None,
        ("searchTool", {"query": "test query", "limit": 10}),
        id="with_arguments",
    ),
    case(
        "This is just some text without any tool calls",
        "This is just some text without any tool calls",
        id="no_json",
    ),
    case(
        '{"name": "invalidTool", "parameters": {invalid json}',
        '{"name": "invalidTool", "parameters": {invalid json}',
        id="invalid_json",
    ),
    case(
        '{"name": "searchTool", "arguments": {"query": "test"}}',
        None,
        ("searchTool", {"query": "test"}),
        id="arguments_key",
    ),
    case(
        '{"name": "searchTool", "parameters": {"query": "test1"}}; '
        '{"name": "getOpenIncidentsTool", "parameters": {}}; '
        '{"name": "searchTool", "parameters": {"query": "test2"}}',
        None,
        ("searchTool", {"query": "test1"}),
        ("getOpenIncidentsTool", {}),
        ("searchTool", {"query": "test2"}),
        id="multiple_json",
    ),
    case(
        '{"name": "searchTool", "parameters": {"query": "test1"}} ; '
        '{"name": "getOpenIncidentsTool", "parameters": {}} ; '
        '{"name": "searchTool", "parameters": {"query": "test2"}}',
        None,
        ("searchTool", {"query": "test1"}),
        ("getOpenIncidentsTool", {}),
        ("searchTool", {"query": "test2"}),
        id="multiple_json_with_whitespace",
    ),
    case(
        "Here are the results: "
        '{"name": "searchTool", "parameters": {"query": "test1"}}; '
        '{"name": "getOpenIncidentsTool", "parameters": {}}; '
        '{"name": "searchTool", "parameters": {"query": "test2"}} '
        "Would you like to know more?",
        "Here are the results:  Would you like to know more?",
        ("searchTool", {"query": "test1"}),
        ("getOpenIncidentsTool", {}),
        ("searchTool", {"query": "test2"}),
        id="multiple_json_with_surrounding_text",
    ),
    case(
        '{"name": "complexTool", "parameters": {"level1": {"level2": {"level3": {"level4": {"value": "deep"}}}}}}',
        None,
        ("complexTool", {"level1": {"level2": {"level3": {"level4": {"value": "deep"}}}}}),
        id="deeply_nested_json",
    ),
    case(
        '{"name": "searchTool", "parameters": {"query": "test {value} [complex]",'
        '"nested": {"inner": "more {brackets}"}}}',
        None,
        ("searchTool", {"query": "test {value} [complex]", "nested": {"inner": "more {brackets}"}}),
        id="quotes_and_brackets_in_string",
    ),
    case(
        '{"name": "parserTool", "parameters": {"text": "He said \\"Hello {world}\\""}}',
        None,
        ("parserTool", {"text": 'He said "Hello {world}"'}),
        id="escaped_quotes_in_nested_json",
    ),
    case('{"parameters": {}}', '{"parameters": {}}', id="missing_name_key"),
    case('{"name": "toolWithoutParams"}', '{"name": "toolWithoutParams"}', id="missing_parameters_key"),
    case(
        '{"name": "searchTool", "parameters": {"query": "test"}} I used {searchTool} for this.',
        " I used {searchTool} for this.",
        ("searchTool", {"query": "test"}),
        id="brace_in_trailing_text",
    ),
    case(
        '{"name": "searchTool", "parameters": {"query": "test"}} The arguments I passed were {"query": "test"}',
        ' The arguments I passed were {"query": "test"}',
        ("searchTool", {"query": "test"}),
        id="json_fragment_in_trailing_text",
    ),
    *(
        case(
            '{"name": "searchTool", "parameters": {"query": "test1"}}'
            + sep
            + '{"name": "getOpenIncidentsTool", "parameters": {}}',
            None,
            ("searchTool", {"query": "test1"}),
            ("getOpenIncidentsTool", {}),
            id=f"parallel_separator_{sep!r}",
        )
        for sep in ("; ", ";", ";\n", "\n")
    ),
]
# ai-dynamo/dynamo lib/parsers/src/tool_calling/test_cases/fixtures/mod.rs (llama3_json:
# `<|python_tag|>` then the JSON, no end token) and our own multi-byte case.
LLAMA3 += [
    case(
        '<|python_tag|>{"name": "get_weather", "arguments": {"city": "São Paulo 🌧"}}',
        None,
        ("get_weather", {"city": "São Paulo 🌧"}),
        id="python_tag",
    ),
    case(
        "<|python_tag|>brave_search.call(query='x')",
        "<|python_tag|>brave_search.call(query='x')",
        id="python_tag_builtin_tool_is_content",
    ),
    case('{"name": "f", "parameters": {"a": [1, 2', '{"name": "f", "parameters": {"a": [1, 2', id="cut_off"),
]

# --- mistral ---------------------------------------------------------------------------------
# vllm-project/vllm tests/tool_parsers/test_mistral_tool_parser.py
MISTRAL = [
    case("This is a test", "This is a test", id="no_tools"),
    case(
        '[TOOL_CALLS][{"name": "add", "arguments":{"a": 3.5, "b": 4}}]',
        None,
        ("add", {"a": 3.5, "b": 4}),
        id="pre_v11_single_tool_add",
    ),
    case(
        '[TOOL_CALLS] [{"name": "get_current_weather", "arguments":{"city": "San Francisco", "state": "CA", '
        '"unit": "celsius"}}]',
        None,
        ("get_current_weather", {"city": "San Francisco", "state": "CA", "unit": "celsius"}),
        id="pre_v11_single_tool_weather",
    ),
    case(
        '[TOOL_CALLS] [{"arguments":{"city": "San Francisco", "state": "CA", "unit": "celsius"}, '
        '"name": "get_current_weather"}]',
        None,
        ("get_current_weather", {"city": "San Francisco", "state": "CA", "unit": "celsius"}),
        id="pre_v11_argument_before_name",
    ),
    case(
        '[TOOL_CALLS] [{"arguments":{"name": "John Doe"}, "name": "get_age"}]',
        None,
        ("get_age", {"name": "John Doe"}),
        id="pre_v11_name_in_argument",
    ),
    case(
        '[TOOL_CALLS] [{"name": "add", "arguments": {"a": 3.5, "b": 4}}, {"name": "get_current_weather", '
        '"arguments":{"city": "San Francisco", "state": "CA", "unit": "celsius"}}]',
        None,
        ("add", {"a": 3.5, "b": 4}),
        ("get_current_weather", {"city": "San Francisco", "state": "CA", "unit": "celsius"}),
        id="pre_v11_multiple_tools",
    ),
    case(
        'Hello[TOOL_CALLS] [{"name": "add", "arguments":{"a": 1, "b": 2}}]',
        "Hello",
        ("add", {"a": 1, "b": 2}),
        id="pre_v11_content_before_tool",
    ),
    case(
        '[TOOL_CALLS] [{"name": "get_current_weather", "arguments":{"city": "Dallas", "state": "TX", '
        '"unit": "fahrenheit"}}]\nextra trailing data',
        "\nextra trailing data",
        ("get_current_weather", {"city": "Dallas", "state": "TX", "unit": "fahrenheit"}),
        id="pre_v11_trailing_data_after_json",
    ),
    case(
        '[TOOL_CALLS]  [ {"name":"add" , "arguments" : {"a": 3, "b": 4} } ]',
        None,
        ("add", {"a": 3, "b": 4}),
        id="pre_v11_spaced",
    ),
    case("[TOOL_CALLS] not json at all", "[TOOL_CALLS] not json at all", id="pre_v11_not_json"),
    case(
        '[TOOL_CALLS]add_this_and_that{"a": 3.5, "b": 4}',
        None,
        ("add_this_and_that", {"a": 3.5, "b": 4}),
        id="v11_single_tool_add",
    ),
    case(
        '[TOOL_CALLS]add{"a": 3.5, "b": 4}[TOOL_CALLS]multiply{"a": 3, "b": 6}',
        None,
        ("add", {"a": 3.5, "b": 4}),
        ("multiply", {"a": 3, "b": 6}),
        id="v11_multiple_tool_calls",
    ),
    case(
        'bla[TOOL_CALLS]add_this_and_that{"a": 3.5, "b": 4}',
        "bla",
        ("add_this_and_that", {"a": 3.5, "b": 4}),
        id="v11_content_before_tool",
    ),
    case(
        'hi{hi[TOOL_CALLS]bash{"command": "print(\\"hello world!\\")\\nre.compile(r\'{}\')"}',
        "hi{hi",
        ("bash", {"command": "print(\"hello world!\")\nre.compile(r'{}')"}),
        id="v11_wrong_json_is_right",
    ),
    case(
        'hi{hi[TOOL_CALLS]bash{"command": "print(\\"hello world!\\")\\nre.compile(r\'{}\')',
        'hi{hi[TOOL_CALLS]bash{"command": "print(\\"hello world!\\")\\nre.compile(r\'{}\')',
        id="v11_cut_off_json_stays_content",
    ),
    case("[TOOL_CALLS]toolname_no_args", "[TOOL_CALLS]toolname_no_args", id="v11_without_args"),
]
# vllm/parser/mistral.py (installed vLLM 0.32): v11+ writes `[TOOL_CALLS]name[ARGS]{...}`.
MISTRAL += [
    case(
        'Je regarde 🔎[TOOL_CALLS]get_weather[ARGS]{"city": "Besançon"}[TOOL_CALLS]get_time[ARGS]{}',
        "Je regarde 🔎",
        ("get_weather", {"city": "Besançon"}),
        ("get_time", {}),
        id="v11_args_marker_multibyte",
    ),
    case("[TOOL_CALLS]get_weather[AR", "[TOOL_CALLS]get_weather[AR", id="v11_partial_args_marker"),
]

# --- pythonic --------------------------------------------------------------------------------
# vllm-project/vllm tests/tool_parsers/test_pythonic_tool_parser.py
SIMPLE = "get_weather(city='San Francisco', metric='celsius')"
SIMPLE_CALL = ("get_weather", {"city": "San Francisco", "metric": "celsius"})
MORE_TYPES = (
    "register_user(name='John Doe', age=37, address={'city': 'San Francisco', 'state': 'CA'}, "
    "role=None, passed_test=True, aliases=['John', 'Johnny'])"
)
MORE_TYPES_CALL = (
    "register_user",
    {
        "name": "John Doe",
        "age": 37,
        "address": {"city": "San Francisco", "state": "CA"},
        "role": None,
        "passed_test": True,
        "aliases": ["John", "Johnny"],
    },
)
PYTHONIC = [
    case("How can I help you today?", "How can I help you today?", id="no_tool_call"),
    case(f"[{SIMPLE}]", None, SIMPLE_CALL, id="simple"),
    case(f"[{MORE_TYPES}]", None, MORE_TYPES_CALL, id="more_types"),
    case("[get_weather()]", None, ("get_weather", {}), id="parameterless"),
    case(
        "[do_something_cool(additional_data={})]",
        None,
        ("do_something_cool", {"additional_data": {}}),
        id="empty_dict",
    ),
    case("[do_something_cool(steps=[])]", None, ("do_something_cool", {"steps": []}), id="empty_list"),
    case(
        r"[get_weather(city='Martha\'s Vineyard', metric='\"cool units\"')]",
        None,
        ("get_weather", {"city": "Martha's Vineyard", "metric": '"cool units"'}),
        id="escaped_string",
    ),
    case(f"[{SIMPLE}, {MORE_TYPES}]", None, SIMPLE_CALL, MORE_TYPES_CALL, id="parallel_calls"),
    case(
        "[get_weather(city='San Francisco', metric='celsius'), get_weather(), do_something_cool(steps=[])]",
        None,
        SIMPLE_CALL,
        ("get_weather", {}),
        ("do_something_cool", {"steps": []}),
        id="large_steps",
    ),
    # vLLM keeps the good sibling; we keep the whole list as content rather than drop a call.
    case(f"[bad(x=b'z'), {SIMPLE}]", f"[bad(x=b'z'), {SIMPLE}]", id="bad_sibling_call"),
    case(f"[calc(x=1e999), {SIMPLE}]", f"[calc(x=1e999), {SIMPLE}]", id="non_finite_argument"),
    case(f"[{SIMPLE}, f(a='x 'y', b='z')]", f"[{SIMPLE}, f(a='x 'y', b='z')]", id="unparsable_sibling"),
    case("[foo(x=1])]", "[foo(x=1])]", id="mismatched_brackets"),
]
# Our own: text around the list, multi-byte, dotted names, JSON literals, a raw line break in a
# string, positional arguments (not a call), markdown brackets.
PYTHONIC += [
    case(
        "Je vérifie. [météo(ville='東京', jours=-2, détails=true, rien=null, tags={'a'}, taille=(8, 6))] Voilà !",
        "Je vérifie.  Voilà !",
        (
            "météo",
            {"ville": "東京", "jours": -2, "détails": True, "rien": None, "tags": ["a"], "taille": [8, 6]},
        ),
        id="text_around_multibyte_literals",
    ),
    case(
        "[tools.search.run(q='a]b')]",
        None,
        ("tools.search.run", {"q": "a]b"}),
        id="dotted_name_bracket_in_string",
    ),
    case(
        "[write(text='line one\nline two')]",
        None,
        ("write", {"text": "line one\nline two"}),
        id="raw_newline",
    ),
    case("[write(text='''a ] \" ' b''')]", None, ("write", {"text": "a ] \" ' b"}), id="triple_quoted"),
    case("f(x) is [f(x)] for x in [1, 2]", "f(x) is [f(x)] for x in [1, 2]", id="positional_is_not_a_call"),
    case(
        "See [the docs](https://x.y/[a]) and [1, 2].",
        "See [the docs](https://x.y/[a]) and [1, 2].",
        id="markdown",
    ),
    case("[get_weather(city='Par", "[get_weather(city='Par", id="cut_off"),
]

# --- default ---------------------------------------------------------------------------------
# ai-dynamo/dynamo lib/parsers/src/tool_calling/test_cases/fixtures/default.rs (a bare
# `{"name":..., "arguments":...}` object) and the shapes the design names: hermes tags, JSON lists.
DEFAULT = [
    case(
        '{"name":"get_weather","arguments":{"location":"Paris","unit":"celsius"}}',
        None,
        ("get_weather", {"location": "Paris", "unit": "celsius"}),
        id="bare_object",
    ),
    case(
        '[{"name": "a", "parameters": {"x": "ü"}}, {"name": "b", "arguments": {}}]',
        None,
        ("a", {"x": "ü"}),
        ("b", {}),
        id="bare_list",
    ),
    case(
        'Let me look.\n<tool_call>\n{"name": "search", "arguments": {"q": "漢字"}}\n</tool_call>',
        "Let me look.\n",
        ("search", {"q": "漢字"}),
        id="hermes_tags",
    ),
    case('<|python_tag|>{"name": "f", "parameters": {}}', None, ("f", {}), id="python_tag"),
    case("Plain answer [1, 2, 3] and {a: b}.", "Plain answer [1, 2, 3] and {a: b}.", id="json_like_prose"),
    case(
        '[{"name": "a", "arguments": {}}, 3]', '[{"name": "a", "arguments": {}}, 3]', id="list_with_non_call"
    ),
]

ALL = [
    ("hermes", HERMES),
    ("llama3_json", LLAMA3),
    ("mistral", MISTRAL),
    ("pythonic", PYTHONIC),
    ("default", DEFAULT),
]


@pytest.mark.parametrize(
    ("parser", "text", "expected"),
    [pytest.param(name, *p.values, id=f"{name}-{p.id}") for name, cases in ALL for p in cases],
)
def test_parse_and_stream(parser: str, text: str, expected: Expected) -> None:
    content, calls = check_tool_stream(parser, text)
    want_content, want_calls = expected
    assert content == want_content
    assert [(c.name, json.loads(c.arguments)) for c in calls] == want_calls


def test_arguments_are_json_dumps_without_ascii_escapes() -> None:
    _, calls = tool_call_parser("hermes", None).parse(
        '<tool_call>{"name": "f", "arguments": {"city":"Zürich","n":1}}</tool_call>'
    )
    assert calls[0].arguments == json.dumps({"city": "Zürich", "n": 1}, ensure_ascii=False)


def test_call_is_released_as_soon_as_its_markup_closes() -> None:
    parser = tool_call_parser("hermes", None)
    assert parser.feed("Checking") == ("Checking", [])
    assert parser.feed(" now.<tool_") == (" now.", [])  # a partial tag is held, the rest is not
    assert parser.feed('call>{"name": "f", "arguments": {"x": 1}}') == ("", [])
    content, deltas = parser.feed("</tool_call>")
    assert content == ""
    assert [(d.index, d.name, d.arguments) for d in deltas] == [(0, "f", '{"x": 1}')]
    assert deltas[0].id is not None and deltas[0].id.startswith("call_")
    assert parser.finish() == ("", [])


def test_parse_does_not_disturb_streaming_state() -> None:
    parser = tool_call_parser("hermes", None)
    parser.feed("<tool_call>")
    assert parser.parse("plain") == ("plain", [])
    content, deltas = parser.feed('{"name": "f", "arguments": {}}</tool_call>')
    assert [d.name for d in deltas] == ["f"]


def test_registry_and_factory() -> None:
    assert sorted(TOOL_CALL_PARSERS) == ["default", "hermes", "llama3_json", "mistral", "pythonic"]
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    for name, cls in TOOL_CALL_PARSERS.items():
        parser = tool_call_parser(name, tools)
        assert isinstance(parser, ToolCallParser) and type(parser) is cls and cls.name == name
        assert parser.tools == tools
    with pytest.raises(
        ValueError, match=r"unknown tool call parser 'nope'; known: default, hermes, llama3_json"
    ):
        tool_call_parser("nope", None)
