"""The ``<think>``...``</think>`` machine behind every reasoning parser here, and ``basic``.

Journey: engine text -> frontend -> **reasoning parser (here)** -> tool-call parser (on the
content) -> response deltas.

The output is read in three phases: the start (leading whitespace and a possible ``<think>``, held
until it is known whether the tag is there; the tag is dropped), reasoning (up to ``</think>``,
which is dropped, or a subclass's content marker, which is kept) and content. Only a suffix that
may still become a tag is held back. Reasoning and content are verbatim (no trimming), as in vLLM.

``basic`` is reasoning only when the output opens with ``<think>`` (after optional whitespace);
otherwise all of it is content (the reference's ``basic``, and its ``qwen3``).
"""

from __future__ import annotations

from typing import ClassVar

from .base import ReasoningParser, partial_marker_len

THINK = "<think>"
END_THINK = "</think>"

_START, _REASONING, _CONTENT = range(3)


class ThinkReasoningParser(ReasoningParser):
    """``<think>``...``</think>``; subclasses set whether reasoning needs the opening tag."""

    starts_in_reasoning: ClassVar[bool] = True  # text before </think> is reasoning without <think>
    content_markers: ClassVar[tuple[str, ...]] = ()  # end reasoning and stay in the content

    def __init__(self, thinking: bool = True) -> None:
        super().__init__(thinking)
        self._held = ""
        self._phase = _START if thinking else _CONTENT

    def feed(self, delta: str) -> tuple[str, str]:
        self._held += delta
        return self._run(final=False)

    def finish(self) -> tuple[str, str]:
        return self._run(final=True)

    def _run(self, final: bool) -> tuple[str, str]:
        reasoning = content = ""
        if self._phase == _START:
            head = self._held.lstrip()
            if head.startswith(THINK):
                self._held, self._phase = head[len(THINK) :], _REASONING
            elif not final and THINK.startswith(head):  # whitespace or a partial <think>: wait
                return "", ""
            else:
                self._phase = _REASONING if self.starts_in_reasoning else _CONTENT
        if self._phase == _REASONING:
            markers = (END_THINK, *self.content_markers)
            hits = [(i, m) for m in markers if (i := self._held.find(m)) != -1]
            if hits:
                i, marker = min(hits)
                reasoning = self._held[:i]
                rest = self._held[i + len(marker) :] if marker == END_THINK else self._held[i:]
                self._held, self._phase = rest, _CONTENT
            else:
                keep = 0 if final else partial_marker_len(self._held, markers)
                cut = len(self._held) - keep
                reasoning, self._held = self._held[:cut], self._held[cut:]
        if self._phase == _CONTENT:
            content, self._held = self._held, ""
        return reasoning, content


class BasicReasoningParser(ThinkReasoningParser):
    name = "basic"
    starts_in_reasoning = False
