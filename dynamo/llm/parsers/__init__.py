"""Tool-call and reasoning parsers, by the names workers give in ``--dyn-tool-call-parser`` and
``--dyn-reasoning-parser`` (NVIDIA Dynamo's names; vLLM's ``--tool-call-parser`` uses the same).

Journey: engine text -> frontend -> **parsers (here)** -> response deltas. Pure text in, text and
calls out: no engine, tokenizer or HTTP. Make one parser per choice with ``tool_call_parser`` /
``reasoning_parser``; ``base`` states the contract they share.
"""

from __future__ import annotations

from .base import ReasoningParser, ToolCall, ToolCallDelta, ToolCallParser, make_call_id
from .deepseek_r1 import DeepSeekR1ReasoningParser
from .default import DefaultToolParser
from .hermes import HermesToolParser
from .llama3_json import Llama3JsonToolParser
from .mistral import MistralToolParser
from .pythonic import PythonicToolParser
from .qwen3 import Qwen3ReasoningParser
from .think import BasicReasoningParser

TOOL_CALL_PARSERS: dict[str, type[ToolCallParser]] = {
    cls.name: cls
    for cls in (
        HermesToolParser,
        Llama3JsonToolParser,
        MistralToolParser,
        PythonicToolParser,
        DefaultToolParser,
    )
}

REASONING_PARSERS: dict[str, type[ReasoningParser]] = {
    cls.name: cls for cls in (DeepSeekR1ReasoningParser, Qwen3ReasoningParser, BasicReasoningParser)
}


def tool_call_parser(name: str, tools: list[dict] | None = None) -> ToolCallParser:
    """A fresh tool-call parser (one per choice); ``ValueError`` naming the known names."""
    try:
        cls = TOOL_CALL_PARSERS[name]
    except KeyError:
        raise ValueError(
            f"unknown tool call parser {name!r}; known: {', '.join(sorted(TOOL_CALL_PARSERS))}"
        ) from None
    return cls(tools)


def reasoning_parser(name: str, *, thinking: bool = True) -> ReasoningParser:
    """A fresh reasoning parser (one per choice); ``ValueError`` naming the known names.

    ``thinking=False`` when the request turned thinking off (``chat_template_kwargs``
    ``{"enable_thinking": false}``): the template then closed the thinking in the prompt and the
    whole output is content, as vLLM's qwen3 parser does.
    """
    try:
        cls = REASONING_PARSERS[name]
    except KeyError:
        raise ValueError(
            f"unknown reasoning parser {name!r}; known: {', '.join(sorted(REASONING_PARSERS))}"
        ) from None
    return cls(thinking)


__all__ = [
    "REASONING_PARSERS",
    "TOOL_CALL_PARSERS",
    "ReasoningParser",
    "ToolCall",
    "ToolCallDelta",
    "ToolCallParser",
    "make_call_id",
    "reasoning_parser",
    "tool_call_parser",
]
