"""Sampling and scoring breadth through the official SDK on the real model (issue 11, section 4).

``n > 1`` (each choice its own index, usage summed, streamed and not), ``logit_bias``,
``logprobs`` / ``top_logprobs`` on both endpoints, a list of prompts, ``echo`` (with logprobs, and
with ``max_tokens: 0`` for prompt scoring), ``best_of`` (served or a 400 naming it), and
``/v1/models`` with a real ``created`` and ``owned_by``. Token-for-token equality with vLLM's own
server is ``test_vllm_equality.py``'s.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import openai
import pytest
from tokenizers import Tokenizer

from tests.openai_sdk.shapes import (
    HI,
    MODEL,
    PROMPTS,
    assert_names,
    chat_summary,
    completion_summary,
    create,
    fetch_all,
    get,
    usage_of,
)

pytest.importorskip("vllm")
pytestmark = [pytest.mark.vllm, pytest.mark.timeout(300)]

SAMPLED = {"temperature": 1.0, "seed": 7, "ignore_eos": True}  # every choice runs to max_tokens
GREEDY = {"temperature": 0, "ignore_eos": True}
MODES = ["plain", "stream"]


@pytest.fixture(scope="module")
def banana(smollm2_dir: Path) -> tuple[int, str]:
    """The token id of ' banana' in SmolLM2's vocabulary, and its text."""
    tok = Tokenizer.from_file(str(smollm2_dir / "tokenizer.json"))
    (token_id,) = tok.encode(" banana", add_special_tokens=False).ids
    return token_id, tok.decode([token_id])


def shapes(banana_id: int) -> dict[str, tuple[str, dict[str, Any]]]:
    bias = {str(banana_id): 100}
    return {
        "chat n=3": ("chat", {"messages": HI, "n": 3, "max_tokens": 6, **SAMPLED}),
        "completion n=2": ("completions", {"prompt": PROMPTS[0], "n": 2, "max_tokens": 6, **SAMPLED}),
        "chat logit_bias": ("chat", {"messages": HI, "logit_bias": bias, "max_tokens": 4, **GREEDY}),
        "completion logit_bias": (
            "completions",
            {"prompt": PROMPTS[0], "logit_bias": bias, "max_tokens": 4, **GREEDY},
        ),
        "chat logprobs": (
            "chat",
            {"messages": HI, "logprobs": True, "top_logprobs": 3, "max_tokens": 6, **GREEDY},
        ),
        "completion logprobs": (
            "completions",
            {"prompt": PROMPTS[0], "logprobs": 3, "max_tokens": 6, **GREEDY},
        ),
        "prompts": ("completions", {"prompt": PROMPTS, "max_tokens": 5, **GREEDY}),
        "prompt 0": ("completions", {"prompt": PROMPTS[0], "max_tokens": 5, **GREEDY}),
        "prompt 1": ("completions", {"prompt": PROMPTS[1], "max_tokens": 5, **GREEDY}),
        "prompts x n=2": ("completions", {"prompt": PROMPTS, "n": 2, "max_tokens": 5, **SAMPLED}),
        "echo": ("completions", {"prompt": PROMPTS[0], "echo": True, "max_tokens": 5, **GREEDY}),
        "echo logprobs": (
            "completions",
            {"prompt": PROMPTS[0], "echo": True, "logprobs": 1, "max_tokens": 3, **GREEDY},
        ),
        "echo max_tokens 0": (
            "completions",
            {"prompt": PROMPTS[1], "echo": True, "logprobs": 1, "max_tokens": 0, **GREEDY},
        ),
    }


@pytest.fixture(scope="module")
def answers(sdk: openai.OpenAI, banana: tuple[int, str]) -> dict[str, Any]:
    calls = {}
    for name, (endpoint, body) in shapes(banana[0]).items():
        base = {"model": MODEL, **body}
        calls[f"{name} plain"] = lambda e=endpoint, b=base: create(sdk, e, b)
        streamed = {**base, "stream": True, "stream_options": {"include_usage": True}}
        calls[f"{name} stream"] = lambda e=endpoint, b=streamed: create(sdk, e, b)
    return fetch_all(calls)


def choices(answers: dict[str, Any], key: str) -> dict[int, dict[str, Any]]:
    answer = get(answers, key)
    return chat_summary(answer) if key.startswith("chat") else completion_summary(answer)


@pytest.mark.parametrize(("name", "count"), [("chat n=3", 3), ("completion n=2", 2), ("prompts x n=2", 4)])
@pytest.mark.parametrize("mode", MODES)
def test_n_choices_each_with_its_index_and_usage_summed(answers, name, count, mode):
    got = choices(answers, f"{name} {mode}")
    assert sorted(got) == list(range(count))
    key = "content" if name.startswith("chat") else "text"
    assert all(c[key] for c in got.values())
    assert all(c["finish_reason"] == "length" for c in got.values()), got
    usage = usage_of(get(answers, f"{name} {mode}"))
    assert usage["completion_tokens"] == count * (6 if name != "prompts x n=2" else 5)
    if name == "prompts x n=2":  # both prompts counted
        assert usage["prompt_tokens"] == sum(
            usage_of(get(answers, f"prompt {i} plain"))["prompt_tokens"] for i in (0, 1)
        )


def test_streamed_n_ends_with_one_usage_chunk(answers):
    chunks = get(answers, "chat n=3 stream")
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1 and usage_chunks[0] is chunks[-1] and not chunks[-1].choices


@pytest.mark.parametrize("name", ["chat logit_bias", "completion logit_bias"])
@pytest.mark.parametrize("mode", MODES)
def test_logit_bias_forces_the_token(answers, banana, name, mode):
    got = choices(answers, f"{name} {mode}")[0]
    text = got["content"] if name.startswith("chat") else got["text"]
    assert text == banana[1] * 4


@pytest.mark.parametrize("mode", MODES)
def test_chat_logprobs_with_top_logprobs(answers, mode):
    got = choices(answers, f"chat logprobs {mode}")[0]
    entries = got["logprobs"]
    assert len(entries) == usage_of(get(answers, f"chat logprobs {mode}"))["completion_tokens"] == 6
    assert "".join(e["token"] for e in entries) == got["content"]
    for e in entries:
        assert e["logprob"] <= 0 and len(e["top_logprobs"]) == 3
        assert e["top_logprobs"][0]["logprob"] >= e["top_logprobs"][-1]["logprob"]
        assert e["token"] == e["top_logprobs"][0]["token"]  # greedy: the sampled token is the top one
        assert isinstance(e["bytes"], list)


@pytest.mark.parametrize("mode", MODES)
def test_completion_logprobs(answers, mode):
    got = choices(answers, f"completion logprobs {mode}")[0]
    lp = got["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == 6
    assert "".join(lp["tokens"]) == got["text"]
    assert all(v <= 0 for v in lp["token_logprobs"])
    assert all(len(top) >= 3 for top in lp["top_logprobs"])


@pytest.mark.parametrize("mode", MODES)
def test_a_list_of_prompts_answers_each_in_order(answers, mode):
    got = choices(answers, f"prompts {mode}")
    assert sorted(got) == [0, 1]
    for i in (0, 1):
        assert got[i]["text"] == choices(answers, f"prompt {i} plain")[0]["text"]
    usage = usage_of(get(answers, f"prompts {mode}"))
    assert usage["completion_tokens"] == 10


@pytest.mark.parametrize("mode", MODES)
def test_echo_puts_the_prompt_first(answers, mode):
    text = choices(answers, f"echo {mode}")[0]["text"]
    alone = choices(answers, "prompt 0 plain")[0]["text"]
    assert text == PROMPTS[0] + alone


@pytest.mark.parametrize("mode", MODES)
def test_echo_with_logprobs_scores_the_prompt_then_the_output(answers, mode):
    got = choices(answers, f"echo logprobs {mode}")[0]
    lp = got["logprobs"]
    assert got["text"].startswith(PROMPTS[0]) and "".join(lp["tokens"]) == got["text"]
    assert lp["token_logprobs"][0] is None  # the first prompt token has no context
    assert all(v is not None and v <= 0 for v in lp["token_logprobs"][1:])
    assert len(lp["tokens"]) == usage_of(get(answers, f"echo logprobs {mode}"))["prompt_tokens"] + 3


@pytest.mark.parametrize("mode", MODES)
def test_echo_with_max_tokens_0_scores_only_the_prompt(answers, mode):
    got = choices(answers, f"echo max_tokens 0 {mode}")[0]
    lp = got["logprobs"]
    assert got["text"] == PROMPTS[1]
    assert "".join(lp["tokens"]) == PROMPTS[1]
    assert len(lp["tokens"]) == usage_of(get(answers, f"echo max_tokens 0 {mode}"))["prompt_tokens"]
    assert lp["token_logprobs"][0] is None and all(v <= 0 for v in lp["token_logprobs"][1:])


def test_best_of_is_served_or_refused_naming_it(sdk):
    body = {"model": MODEL, "prompt": PROMPTS[0], "best_of": 3, "max_tokens": 4, "temperature": 1.0}
    try:
        answer = create(sdk, "completions", body)
    except openai.BadRequestError as exc:
        assert_names(exc.response.json()["error"], "best_of")
        return
    # Served: OpenAI bills every candidate, so usage counts more than the one returned.
    assert len(answer.choices) == 1 and answer.usage.completion_tokens > 4


def test_models_have_a_real_created_time_and_an_owner(sdk):
    models = sdk.models.list().data
    assert [m.id for m in models] == [MODEL]
    for m in models:
        assert 1_600_000_000 < m.created <= time.time() + 1
        assert m.owned_by and m.object == "model"
