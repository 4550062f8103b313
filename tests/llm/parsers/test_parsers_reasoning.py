"""Reasoning parsers on model outputs from vLLM's and NVIDIA Dynamo's reasoning-parser tests (sources
cited per group), each also streamed split at every character boundary and in random pieces, which
must give the same reasoning and content as ``parse``."""

from __future__ import annotations

from typing import Any

import pytest
from parser_stream_check import check_reasoning_stream

from dynamo.llm.parsers import REASONING_PARSERS, ReasoningParser, reasoning_parser


def case(text: str, reasoning: str | None, content: str | None, id: str) -> Any:
    return pytest.param(text, reasoning, content, id=id)


# vllm-project/vllm tests/reasoning/test_deepseekr1_reasoning_parser.py (vLLM's non-streamed
# results; its streamed NEW_LINE case keeps the "\n" before <think>, ours agrees with parse).
DEEPSEEK_R1 = [
    case(
        "This is a reasoning section</think>This is the rest",
        "This is a reasoning section",
        "This is the rest",
        id="simple",
    ),
    case("This is a reasoning section</think>", "This is a reasoning section", None, id="complete_reasoning"),
    case("This is content", "This is content", None, id="no_content_token"),
    case(
        "This\nThat</think>This is the rest\nThat",
        "This\nThat",
        "This is the rest\nThat",
        id="multiple_lines",
    ),
    case("</think>This is the rest", None, "This is the rest", id="shortest"),
    case(
        "<think>This is a reasoning section</think>This is the rest",
        "This is a reasoning section",
        "This is the rest",
        id="with_think",
    ),
    case(
        "<think>This is a reasoning section</think>",
        "This is a reasoning section",
        None,
        id="complete_with_think",
    ),
    case(
        "<think>This\nThat</think>This is the rest\nThat",
        "This\nThat",
        "This is the rest\nThat",
        id="multiple_lines_with_think",
    ),
    case("<think>This is a reasoning section", "This is a reasoning section", None, id="think_no_end"),
    case("", None, None, id="empty"),
    case(
        "\n<think>This is a reasoning section</think>\nThis is the rest",
        "This is a reasoning section",
        "\nThis is the rest",
        id="new_line",
    ),
    # Our own: multi-byte text, a <think> later in the reasoning stays text, partial tags at the end.
    case(
        "<think>Réfléchir 🤔 <think> 日本</think>Réponse ✅",
        "Réfléchir 🤔 <think> 日本",
        "Réponse ✅",
        id="multibyte",
    ),
    case("thinking </thi", "thinking </thi", None, id="partial_end_tag_at_end"),
    case("<thi", "<thi", None, id="partial_start_tag_only"),
    case("a</think>b</think>c", "a", "b</think>c", id="second_end_tag_is_content"),
]

# vllm-project/vllm tests/reasoning/test_qwen3_reasoning_parser.py (thinking enabled, vLLM 0.32).
TOOL_CALL_BODY = "<tool_call>\n<function=bash>\n<parameter=command>\ncat /etc/hosts\n</parameter>\n</function>\n</tool_call>"
QWEN3 = [
    case(
        "This is a reasoning section</think>This is the rest",
        "This is a reasoning section",
        "This is the rest",
        id="without_start_token",
    ),
    case(
        "This is a reasoning section</think>",
        "This is a reasoning section",
        None,
        id="without_start_token_complete",
    ),
    case(
        "<think>This is a reasoning section</think>This is the rest",
        "This is a reasoning section",
        "This is the rest",
        id="with_think",
    ),
    case("This is the rest", "This is the rest", None, id="without_think"),
    case(
        "<think>This is a reasoning section</think>",
        "This is a reasoning section",
        None,
        id="complete_reasoning",
    ),
    case(
        "<think>This is a reasoning\nsection</think>This is the rest\nThat",
        "This is a reasoning\nsection",
        "This is the rest\nThat",
        id="multiline_reasoning",
    ),
    case("<think>This is a reasoning section", "This is a reasoning section", None, id="only_open_tag"),
    case(
        "I need to read the file.\n\n" + TOOL_CALL_BODY,
        "I need to read the file.\n\n",
        TOOL_CALL_BODY,
        id="tool_call_no_think_end",
    ),
    case(
        "<think>I need to read the file.\n\n" + TOOL_CALL_BODY,
        "I need to read the file.\n\n",
        TOOL_CALL_BODY,
        id="tool_call_with_think_no_end",
    ),
    case("<think>reasoning</think>", "reasoning", None, id="start_and_end_in_one_delta_no_content"),
    # Our own: a tool call after </think> is plain content; multi-byte.
    case(
        "<think>\n思考中…\n</think>\n\n<tool_call>\n{}\n</tool_call>",
        "\n思考中…\n",
        "\n\n<tool_call>\n{}\n</tool_call>",
        id="tool_call_after_reasoning_multibyte",
    ),
]

# ai-dynamo/dynamo lib/parsers/src/reasoning/base_parser.rs (BasicReasoningParser without
# force_reasoning: reasoning needs the opening tag). The reference trims its non-streamed result;
# we keep text verbatim, as its streamed result and vLLM do.
BASIC = [
    case("<think>with reasoning</think> and more text.", "with reasoning", " and more text.", id="reasoning"),
    case("This is a test without reasoning.", None, "This is a test without reasoning.", id="no_reasoning"),
    case("<think>with truncated reasoning", "with truncated reasoning", None, id="truncated_reasoning"),
    case(
        "This is a reasoning section</think>This is the rest",
        None,
        "This is a reasoning section</think>This is the rest",
        id="no_open_tag",
    ),
    case("  \n<think>深い</think>答え", "深い", "答え", id="leading_whitespace_multibyte"),
    case("  \n", None, "  \n", id="whitespace_only"),
    case("<th", None, "<th", id="partial_start_tag_only"),
]

ALL = [("deepseek_r1", DEEPSEEK_R1), ("qwen3", QWEN3), ("basic", BASIC)]


@pytest.mark.parametrize(
    ("parser", "text", "reasoning", "content"),
    [pytest.param(name, *p.values, id=f"{name}-{p.id}") for name, cases in ALL for p in cases],
)
def test_parse_and_stream(parser: str, text: str, reasoning: str | None, content: str | None) -> None:
    assert check_reasoning_stream(parser, text) == (reasoning, content)


# vllm-project/vllm tests/reasoning/test_qwen3_reasoning_parser.py, THINKING_DISABLED_CASES
# (chat_template_kwargs enable_thinking=False): the output is all content, tags included.
@pytest.mark.parametrize("name", sorted(REASONING_PARSERS))
@pytest.mark.parametrize(
    "text",
    ["This is plain content", "I need to read the file.\n\n" + TOOL_CALL_BODY, "<think>x</think>y"],
)
def test_thinking_off_is_all_content(name: str, text: str) -> None:
    parser = reasoning_parser(name, thinking=False)
    assert parser.parse(text) == (None, text)
    for cut in range(len(text) + 1):
        streamed = reasoning_parser(name, thinking=False)
        pieces = [streamed.feed(text[:cut]), streamed.feed(text[cut:]), streamed.finish()]
        assert "".join(r for r, _ in pieces) == ""
        assert "".join(c for _, c in pieces) == text


def test_reasoning_streams_before_the_end_tag() -> None:
    parser = reasoning_parser("deepseek_r1")
    assert parser.feed("<thi") == ("", "")  # may still be the opening tag
    assert parser.feed("nk>Let me") == ("Let me", "")
    assert parser.feed(" think</th") == (" think", "")  # a partial end tag is held
    assert parser.feed("ink>Answer") == ("", "Answer")
    assert parser.feed(" done") == ("", " done")
    assert parser.finish() == ("", "")


def test_registry_and_factory() -> None:
    assert sorted(REASONING_PARSERS) == ["basic", "deepseek_r1", "qwen3"]
    for name, cls in REASONING_PARSERS.items():
        parser = reasoning_parser(name)
        assert isinstance(parser, ReasoningParser) and type(parser) is cls and cls.name == name
    with pytest.raises(ValueError, match=r"unknown reasoning parser 'r1'; known: basic, deepseek_r1, qwen3"):
        reasoning_parser("r1")
