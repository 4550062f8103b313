"""Reasoning split through the official SDK on the real model (issue 11, section 3).

The worker runs with ``--dyn-reasoning-parser basic``: ``<think>...</think>`` in the model's text
becomes ``reasoning_content``, the rest ``content``; without the tags everything is content.
SmolLM2 never thinks on its own, so the tags are forced with a ``structured_outputs`` regex (the
engine constrains the whole output; the frontend's parser splits it). ``basic`` rather than
``qwen3`` / ``deepseek_r1``: those read untagged output as reasoning (as vLLM's do), which would
turn every other answer of this model into reasoning.
"""

from __future__ import annotations

import re
from typing import Any

import openai
import pytest

from tests.openai_sdk.shapes import HI, MODEL, THINK_REGEX, chat_summary, create, fetch_all, get

pytest.importorskip("vllm")
pytestmark = [pytest.mark.vllm, pytest.mark.timeout(300)]

THINK = {
    "model": MODEL,
    "messages": HI,
    "temperature": 0,
    "max_tokens": 64,
    "structured_outputs": {"regex": THINK_REGEX},
}
PLAIN = {"model": MODEL, "messages": HI, "temperature": 0, "max_tokens": 12}


@pytest.fixture(scope="module")
def answers(sdk: openai.OpenAI) -> dict[str, Any]:
    return fetch_all(
        {
            "think plain": lambda: create(sdk, "chat", THINK),
            "think stream": lambda: create(sdk, "chat", {**THINK, "stream": True}),
            "no think plain": lambda: create(sdk, "chat", PLAIN),
            "no think stream": lambda: create(sdk, "chat", {**PLAIN, "stream": True}),
        }
    )


@pytest.mark.parametrize("mode", ["plain", "stream"])
def test_think_tags_become_reasoning_content(answers, mode):
    choice = chat_summary(get(answers, f"think {mode}"))[0]
    assert choice["reasoning"], choice
    assert re.fullmatch(r"[a-z ]{3,40}", choice["reasoning"]), choice
    assert choice["content"] and "<think>" not in choice["content"] and "</think>" not in choice["content"]
    assert re.fullmatch(r"[A-Za-z ]{3,40}", choice["content"]), choice


def test_streamed_reasoning_and_content_join_to_the_plain_answer(answers):
    streamed, plain = (chat_summary(get(answers, f"think {m}"))[0] for m in ("stream", "plain"))
    assert (streamed["reasoning"], streamed["content"]) == (plain["reasoning"], plain["content"])


@pytest.mark.parametrize("mode", ["plain", "stream"])
def test_text_without_think_tags_is_all_content(answers, mode):
    choice = chat_summary(get(answers, f"no think {mode}"))[0]
    assert choice["reasoning"] is None and choice["content"], choice
