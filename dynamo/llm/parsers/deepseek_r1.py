"""``deepseek_r1`` reasoning: everything before ``</think>`` is reasoning, ``<think>`` or not.

Journey: engine text -> frontend -> **reasoning parser (here)** -> tool-call parser -> response.
DeepSeek-R1's chat template ends the prompt with ``<think>``, so the output usually has only the
closing tag; an opening tag at the start (after optional whitespace) is dropped. No ``</think>``
at all (cut off, or a model that never closes): the whole output is reasoning, as in vLLM.
"""

from __future__ import annotations

from .think import ThinkReasoningParser


class DeepSeekR1ReasoningParser(ThinkReasoningParser):
    name = "deepseek_r1"
    starts_in_reasoning = True
