"""``qwen3`` reasoning, as vLLM 0.32's ``qwen3`` parser with thinking on (its default).

Journey: engine text -> frontend -> **reasoning parser (here)** -> tool-call parser -> response.
Like ``deepseek_r1`` — Qwen3-2507 and Qwen3.5 put ``<think>`` in the prompt, the original Qwen3
writes it; either way the text before ``</think>`` is reasoning — and a ``<tool_call>`` met while
still reasoning ends the reasoning too: the call and what follows are content, for the tool-call
parser. Output without any tag is all reasoning (vLLM's ``without_think`` case). For a model that
never thinks, use ``basic``, which needs the opening tag (the reference's ``qwen3`` does).
"""

from __future__ import annotations

from .think import ThinkReasoningParser


class Qwen3ReasoningParser(ThinkReasoningParser):
    name = "qwen3"
    starts_in_reasoning = True
    content_markers = ("<tool_call>",)
