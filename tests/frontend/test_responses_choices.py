"""The way back of one request, from engine outputs to OpenAI bodies and chunks, with SmolLM2's real
tokenizer: per-choice deltas (reasoning, tool calls in every ``tool_mode``, echo), their streamed
and whole forms agreeing, several choices merged, and every body and chunk valid against the
response types ``/openapi.json`` publishes."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from dynamo.frontend.choices import ChoiceStream
from dynamo.frontend.forced_calls import NamedCall, RequiredCalls
from dynamo.frontend.responses import ResponseBuilder
from dynamo.llm import openai
from dynamo.llm.errors import RequestError
from dynamo.llm.model_card import ModelDeploymentCard
from dynamo.llm.parsers import ToolCallDelta
from dynamo.llm.preprocessor import PreprocessedOutput, Preprocessor
from dynamo.llm.protocols import PreprocessedRequest

PROMPT = "The capital of France is"
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]


@pytest.fixture(scope="module")
def pp(smollm2_tokenizer_dir: Path) -> Preprocessor:
    card = ModelDeploymentCard.from_local_path(smollm2_tokenizer_dir, "smol")
    files = card.try_read_local_files()
    assert files is not None
    return Preprocessor.from_card(card, files)


def choice(pp: Preprocessor, index: int = 0, prompt: str = PROMPT, **fields: Any) -> PreprocessedOutput:
    ids = pp.tokenizer.encode(prompt, add_special_tokens=False).ids
    return PreprocessedOutput(PreprocessedRequest(f"r-{index}", "smol", ids), len(ids), index=index, **fields)


def outputs(pp: Preprocessor, text: str, finish: str = "stop", **first: Any) -> list[list[dict[str, Any]]]:
    """``text`` as an engine streams it: one token per batch, the finish on the last."""
    ids = pp.tokenizer.encode(text, add_special_tokens=False).ids
    batches: list[list[dict[str, Any]]] = [[{"token_ids": [t]}] for t in ids]
    batches[-1][0]["finish_reason"] = finish
    batches[0][0].update(first)
    return batches


def events(raw: bytes) -> list[dict[str, Any]]:
    lines = [line for line in raw.decode().split("\n") if line.startswith("data: ")]
    return [json.loads(line[6:]) for line in lines]


def stream(
    kind: str,
    pp: Preprocessor,
    pres: list[PreprocessedOutput],
    texts: list[list[list[dict[str, Any]]]],
    continuous_usage: bool = False,
) -> list[dict[str, Any]]:
    """Every event of a streamed response, the choices' batches interleaved round-robin."""
    b = ResponseBuilder(kind, "id-1", "smol", pres, pp, include_usage=True, continuous_usage=continuous_usage)
    raw = b""
    queues = [list(t) for t in texts]
    while any(queues):
        for i, q in enumerate(queues):
            if q:
                raw += b.stream(i, q.pop(0))
    assert b.done
    evs = events(raw)
    chunk_type = openai.ChatCompletionChunk if kind == "chat" else openai.CompletionChunk
    for ev in evs:
        chunk_type.model_validate(ev)
    return evs


def whole(
    kind: str, pp: Preprocessor, pres: list[PreprocessedOutput], texts: list[list[list[dict[str, Any]]]]
) -> dict[str, Any]:
    b = ResponseBuilder(kind, "id-1", "smol", pres, pp)
    for i, batches in enumerate(texts):
        for batch in batches:
            b.collect(i, batch)
    assert b.done
    body = b.full_response()
    body_type = openai.ChatCompletionResponse if kind == "chat" else openai.CompletionResponse
    body_type.model_validate(body)
    return body


def joined(evs: list[dict[str, Any]], index: int = 0) -> dict[str, Any]:
    """One choice's streamed chat deltas put together: content, reasoning, calls, finish reason."""
    out: dict[str, Any] = {"content": "", "reasoning": "", "calls": [], "finish_reason": None, "roles": 0}
    for ev in evs:
        for c in ev["choices"]:
            if c["index"] != index:
                continue
            d = c["delta"]
            out["roles"] += d.get("role") == "assistant"
            out["content"] += d.get("content") or ""
            assert d.get("reasoning_content") == d.get("reasoning")
            out["reasoning"] += d.get("reasoning_content") or ""
            for call in d.get("tool_calls") or []:
                if "id" in call:
                    assert call["index"] == len(out["calls"]) and call["type"] == "function"
                    out["calls"].append({"id": call["id"], "name": call["function"]["name"], "arguments": ""})
                else:
                    assert set(call["function"]) == {"arguments"}
                out["calls"][call["index"]]["arguments"] += call["function"]["arguments"]
            if c["finish_reason"]:
                out["finish_reason"] = c["finish_reason"]
    return out


def test_plain_chat_streams_the_text_the_body_holds(pp: Preprocessor) -> None:
    text = " Paris. It is a city of light."
    evs = stream("chat", pp, [choice(pp)], [outputs(pp, text)])
    s = joined(evs)
    assert s["content"] == text and s["roles"] == 1 and s["finish_reason"] == "stop"
    assert "reasoning_content" not in json.dumps(evs) and "tool_calls" not in json.dumps(evs)
    body = whole("chat", pp, [choice(pp)], [outputs(pp, text)])
    assert body["choices"][0]["message"] == {"role": "assistant", "content": text}
    assert body["choices"][0]["finish_reason"] == "stop"


def test_reasoning_is_split_out_streamed_and_whole(pp: Preprocessor) -> None:
    text = "Let me recall: France.</think>The capital is Paris."
    pre = choice(pp, reasoning_parser="deepseek_r1")
    s = joined(stream("chat", pp, [pre], [outputs(pp, text)]))
    assert s["reasoning"] == "Let me recall: France." and s["content"] == "The capital is Paris."
    msg = whole("chat", pp, [pre], [outputs(pp, text)])["choices"][0]["message"]
    assert msg["reasoning_content"] == msg["reasoning"] == "Let me recall: France."
    assert msg["content"] == "The capital is Paris."
    # A reasoning parser that finds no reasoning: the fields are there, null.
    msg = whole("chat", pp, [choice(pp, reasoning_parser="basic")], [outputs(pp, "Paris.")])["choices"][0][
        "message"
    ]
    assert msg == {"role": "assistant", "content": "Paris.", "reasoning_content": None, "reasoning": None}


HERMES_TEXT = (
    'I will look it up.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}\n'
    '</tool_call>\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Lyon"}}\n</tool_call>'
)


def test_auto_tool_calls_stream_as_deltas_that_join_into_the_body(pp: Preprocessor) -> None:
    pre = choice(pp, tool_mode="auto", tool_parser="hermes", tools=TOOLS)
    evs = stream("chat", pp, [pre], [outputs(pp, HERMES_TEXT)])
    s = joined(evs)
    body = whole("chat", pp, [pre], [outputs(pp, HERMES_TEXT)])
    msg = body["choices"][0]["message"]
    assert body["choices"][0]["finish_reason"] == s["finish_reason"] == "tool_calls"
    assert msg["content"] == s["content"] == "I will look it up.\n"  # as vLLM's hermes keeps it
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in msg["tool_calls"]] == [
        ("get_weather", {"city": "Paris", "unit": "C"}),
        ("get_weather", {"city": "Lyon"}),
    ]
    assert [(c["name"], json.loads(c["arguments"])) for c in s["calls"]] == [
        (c["function"]["name"], json.loads(c["function"]["arguments"])) for c in msg["tool_calls"]
    ]
    assert all(c["id"].startswith("call_") and c["type"] == "function" for c in msg["tool_calls"])
    # As OpenAI streams calls: the first delta of a call names it with empty arguments, and the
    # arguments follow in a later event.
    pieces = [
        (i, call)
        for i, ev in enumerate(evs)
        for c in ev["choices"]
        for call in c["delta"].get("tool_calls") or []
    ]
    for index in (0, 1):
        first, *rest = [(i, call) for i, call in pieces if call["index"] == index]
        assert first[1]["function"] == {"name": "get_weather", "arguments": ""}
        assert rest and all(i > first[0] and "id" not in call for i, call in rest)
    # Without calls the text is content and the model just stopped.
    body = whole("chat", pp, [pre], [outputs(pp, "No tools needed.")])
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "No tools needed."}
    assert body["choices"][0]["finish_reason"] == "stop"
    # Cut off by max_tokens: the finish reason stays "length".
    body = whole("chat", pp, [pre], [outputs(pp, HERMES_TEXT, finish="length")])
    assert body["choices"][0]["finish_reason"] == "length"


def test_reasoning_runs_before_tool_parsing(pp: Preprocessor) -> None:
    text = (
        'I should call the tool.</think><tool_call>\n{"name": "get_weather", "arguments": {}}\n</tool_call>'
    )
    pre = choice(pp, tool_mode="auto", tool_parser="hermes", tools=TOOLS, reasoning_parser="deepseek_r1")
    s = joined(stream("chat", pp, [pre], [outputs(pp, text)]))
    msg = whole("chat", pp, [pre], [outputs(pp, text)])["choices"][0]["message"]
    assert s["reasoning"] == msg["reasoning_content"] == "I should call the tool."
    assert msg["content"] is None and s["content"] == ""
    assert (
        [c["function"]["name"] for c in msg["tool_calls"]]
        == [c["name"] for c in s["calls"]]
        == ["get_weather"]
    )


REQUIRED_TEXT = (
    '[{"name": "get_weather", "parameters": {"city": "Pa\\"ris}]", "days": [1, {"x": null}]}}, '
    '{"parameters": {}, "name": "get_time"}]'
)


def test_required_tool_choice_turns_the_constrained_array_into_calls(pp: Preprocessor) -> None:
    pre = choice(pp, tool_mode="required", tools=TOOLS)
    s = joined(stream("chat", pp, [pre], [outputs(pp, REQUIRED_TEXT)]))
    body = whole("chat", pp, [pre], [outputs(pp, REQUIRED_TEXT)])
    msg = body["choices"][0]["message"]
    expected = [(c["name"], c["parameters"]) for c in json.loads(REQUIRED_TEXT)]
    assert [
        (c["function"]["name"], json.loads(c["function"]["arguments"])) for c in msg["tool_calls"]
    ] == expected
    assert [(c["name"], json.loads(c["arguments"])) for c in s["calls"]] == expected
    assert msg["content"] == "" and s["content"] == ""
    assert body["choices"][0]["finish_reason"] == s["finish_reason"] == "tool_calls"


@pytest.mark.parametrize("split", range(len(REQUIRED_TEXT) + 1))
def test_required_calls_agree_wherever_the_text_is_split(split: int) -> None:
    whole_calls = _calls(RequiredCalls(), [REQUIRED_TEXT])
    assert _calls(RequiredCalls(), [REQUIRED_TEXT[:split], REQUIRED_TEXT[split:]]) == whole_calls
    assert [(n, json.loads(a)) for n, a in whole_calls] == [
        (c["name"], c["parameters"]) for c in json.loads(REQUIRED_TEXT)
    ]


def test_required_calls_streamed_character_by_character() -> None:
    parser = RequiredCalls()
    deltas = [d for ch in REQUIRED_TEXT for d in parser.feed(ch)[1]]
    # The first call is announced as soon as its name is complete and its arguments started.
    first = next(d for d in deltas if d.id is not None)
    assert first.name == "get_weather" and first.arguments == "{"
    assert _join(deltas) == _calls(RequiredCalls(), [REQUIRED_TEXT])
    assert _calls(RequiredCalls(), ['{"name": "x"}']) == []  # not an array: no calls
    assert _calls(RequiredCalls(), ["  "]) == []


def test_named_tool_choice_streams_the_output_as_the_arguments(pp: Preprocessor) -> None:
    text = '{"city": "Paris", "unit": "C"}'
    pre = choice(pp, tool_mode="named", tool_name="get_weather", tools=TOOLS)
    s = joined(stream("chat", pp, [pre], [outputs(pp, text)]))
    body = whole("chat", pp, [pre], [outputs(pp, text)])
    msg = body["choices"][0]["message"]
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in msg["tool_calls"]] == [
        ("get_weather", text)
    ]
    assert [(c["name"], c["arguments"]) for c in s["calls"]] == [("get_weather", text)]
    assert msg["content"] == ""
    assert body["choices"][0]["finish_reason"] == s["finish_reason"] == "stop"  # named: stop
    assert _calls(NamedCall("f"), [" ", "\n"]) == []  # a blank output is no call


def test_choices_merge_with_their_indexes_and_usage_counts_the_prompt_once(pp: Preprocessor) -> None:
    first = choice(pp, 0)
    second = replace(first, index=1, request=PreprocessedRequest("r-1", "smol", first.request.token_ids))
    texts = [" Paris.", " Paris, of course, the capital."]
    evs = stream("chat", pp, [first, second], [outputs(pp, t) for t in texts])
    assert {c["index"] for ev in evs for c in ev["choices"]} == {0, 1}
    assert [joined(evs, i)["content"] for i in (0, 1)] == texts
    assert [joined(evs, i)["roles"] for i in (0, 1)] == [1, 1]
    usage = [ev for ev in evs if ev.get("usage")]
    tokens = [len(pp.tokenizer.encode(t, add_special_tokens=False).ids) for t in texts]
    assert len(usage) == 1 and usage[0] is evs[-1] and usage[0]["choices"] == []
    assert usage[0]["usage"] == {
        "prompt_tokens": first.prompt_len,
        "completion_tokens": sum(tokens),
        "total_tokens": first.prompt_len + sum(tokens),
    }
    # Collected in whatever order they finish, answered in index order.
    body = whole("chat", pp, [second, first], [outputs(pp, t) for t in reversed(texts)])
    assert [(c["index"], c["message"]["content"]) for c in body["choices"]] == [(0, texts[0]), (1, texts[1])]
    assert body["usage"]["prompt_tokens"] == first.prompt_len


@pytest.mark.parametrize("kind", ["chat", "completion"])
def test_continuous_usage_puts_each_choices_usage_so_far_on_its_events(pp: Preprocessor, kind: str) -> None:
    first = choice(pp, 0)
    second = replace(first, index=1, request=PreprocessedRequest("r-1", "smol", first.request.token_ids))
    texts = [" Paris is the capital.", " Paris."]
    evs = stream(kind, pp, [first, second], [outputs(pp, t) for t in texts], continuous_usage=True)
    seen = [0, 0]
    for ev in evs[:-1]:
        (c,) = ev["choices"]
        seen[c["index"]] += 1
        assert ev["usage"] == {
            "prompt_tokens": first.prompt_len,
            "completion_tokens": seen[c["index"]],  # one token per event here
            "total_tokens": first.prompt_len + seen[c["index"]],
        }
    assert evs[-1]["choices"] == [] and evs[-1]["usage"]["completion_tokens"] == sum(seen)


def test_a_list_of_prompts_counts_every_prompt(pp: Preprocessor) -> None:
    pres = [choice(pp, 0, "Hello there"), choice(pp, 1, PROMPT, prompt_index=1)]
    body = whole("completion", pp, pres, [outputs(pp, " a"), outputs(pp, " b")])
    assert body["usage"]["prompt_tokens"] == pres[0].prompt_len + pres[1].prompt_len
    assert [c["text"] for c in body["choices"]] == [" a", " b"]


def _prompt_logprobs(ids: list[int]) -> list[Any]:
    return [None] + [[t, -1.0 - k, [[t, -1.0 - k], [t + 1, -2.5]]] for k, t in enumerate(ids[1:])]


def test_echo_puts_the_prompt_and_its_logprobs_first(pp: Preprocessor) -> None:
    pre = choice(pp, echo_text=PROMPT, logprobs=1, prompt_logprobs=1)
    ids = pre.request.token_ids
    gen = pp.tokenizer.encode(" Paris", add_special_tokens=False).ids
    batches = [[{"token_ids": [t], "logprobs": [[t, -0.25, [[t, -0.25]]]]}] for t in gen]
    batches[0][0]["prompt_logprobs"] = _prompt_logprobs(ids)
    batches[-1][0]["finish_reason"] = "length"
    evs = stream("completion", pp, [pre], [batches])
    assert evs[0]["choices"][0]["text"].startswith(PROMPT)  # the echo rides on the first chunk
    text = "".join(c["text"] for ev in evs for c in ev["choices"])
    tokens = [t for ev in evs for c in ev["choices"] if c["logprobs"] for t in c["logprobs"]["tokens"]]
    offsets = [o for ev in evs for c in ev["choices"] if c["logprobs"] for o in c["logprobs"]["text_offset"]]
    body = whole("completion", pp, [pre], [batches])
    got = body["choices"][0]
    assert got["text"] == text == PROMPT + " Paris"
    lp = got["logprobs"]
    assert lp["tokens"] == tokens == [pp.token_text(t) for t in [*ids, *gen]]
    assert lp["text_offset"] == offsets == [sum(len(t) for t in tokens[:k]) for k in range(len(tokens))]
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert lp["token_logprobs"][1:] == [-1.0 - k for k in range(len(ids) - 1)] + [-0.25] * len(gen)
    second = pp.token_text(ids[1])
    assert lp["top_logprobs"][1] == {second: -1.0, pp.token_text(ids[1] + 1): -2.5}


def test_echo_without_generation_answers_only_the_prompt(pp: Preprocessor) -> None:
    pre = choice(pp, echo_text=PROMPT, logprobs=0, prompt_logprobs=0, drop_output=True)
    ids = pre.request.token_ids
    batch = [{"token_ids": [42], "logprobs": [[42, -3.0, []]], "finish_reason": "length"}]
    batch[0]["prompt_logprobs"] = _prompt_logprobs(ids)
    body = whole("completion", pp, [pre], [[batch]])
    got = body["choices"][0]
    assert got["text"] == PROMPT and got["finish_reason"] == "length"
    assert got["logprobs"]["tokens"] == [pp.token_text(t) for t in ids]
    evs = stream("completion", pp, [pre], [[batch]])
    assert "".join(c["text"] for ev in evs for c in ev["choices"]) == PROMPT
    assert evs[-1]["usage"]["prompt_tokens"] == len(ids)


def test_echo_without_the_engines_prompt_logprobs_is_an_engine_error(pp: Preprocessor) -> None:
    pre = choice(pp, echo_text=PROMPT, logprobs=0, prompt_logprobs=0)
    b = ResponseBuilder("completion", "id", "smol", [pre], pp)
    with pytest.raises(RequestError) as err:
        b.collect(0, [{"token_ids": [42], "logprobs": [[42, -3.0, []]]}])
    assert err.value.status == 500


def test_an_engine_error_fails_the_choice(pp: Preprocessor) -> None:
    stream_ = ChoiceStream(choice(pp), pp)
    with pytest.raises(RequestError) as err:
        stream_.step([{"finish_reason": "error", "error": "out of blocks"}])
    assert err.value.status == 500 and "out of blocks" in err.value.message


def test_a_parser_this_frontend_does_not_have_is_a_500(pp: Preprocessor) -> None:
    with pytest.raises(RequestError) as err:
        ResponseBuilder("chat", "id", "smol", [choice(pp, tool_mode="auto", tool_parser="nope")], pp)
    assert err.value.status == 500 and "nope" in err.value.message


def _join(deltas: list[ToolCallDelta]) -> list[tuple[str, str]]:
    calls: list[list[str]] = []
    for d in deltas:
        if d.id is not None:
            assert d.index == len(calls) and d.name
            calls.append([d.name, ""])
        calls[d.index][1] += d.arguments
    return [(n, a) for n, a in calls]


def _calls(parser: RequiredCalls | NamedCall, pieces: list[str]) -> list[tuple[str, str]]:
    deltas: list[ToolCallDelta] = []
    for piece in pieces:
        content, more = parser.feed(piece)
        assert content == ""
        deltas += more
    deltas += parser.finish()[1]
    return _join(deltas)


def test_logprob_texts_of_multibyte_output_are_the_same_streamed_and_whole(pp: Preprocessor) -> None:
    pre = choice(pp, logprobs=1)
    gen = pp.tokenizer.encode(" 日本語", add_special_tokens=False).ids
    batches = [[{"token_ids": [t], "logprobs": [[t, -0.5, [[t, -0.5]]]]}] for t in gen]
    batches[-1][0]["finish_reason"] = "stop"
    streamed = [
        lp["token"]
        for ev in stream("chat", pp, [pre], [batches])
        for c in ev["choices"]
        if c["logprobs"]
        for lp in c["logprobs"]["content"]
    ]
    body = whole("chat", pp, [pre], [batches])
    collected = [lp["token"] for lp in body["choices"][0]["logprobs"]["content"]]
    assert streamed == collected and "".join(collected) == " 日本語"
