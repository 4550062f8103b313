"""Our wire types to SGLang's and back: sampling/stop options, constraints, logit_bias, bootstrap
parameters, token deltas (cumulative and incremental streaming), finish reasons and bad-request
aborts, cached tokens, logprobs and prompt logprobs, KV events (through the shared ZMQ subscriber's
``handle``)."""

from __future__ import annotations

import re

import msgspec
import pytest

from dynamo.llm.kv_events import KvCleared, KvRemoved, KvStored, compute_block_hashes
from dynamo.llm.protocols import (
    GuidedDecoding,
    OutputOptions,
    PreprocessedRequest,
    SamplingOptions,
    StopConditions,
)
from dynamo.sglang.kv_events import convert_event, kv_event_subscriber, subscriber_endpoints
from dynamo.sglang.outputs import OutputConverter, TokenDeltas, error_code_of, finish_of, prompt_logprobs_of
from dynamo.sglang.request import Bootstrap, build_sampling_params, generate_kwargs, guided_params
from dynamo.worker.zmq_kv_events import block_hash_to_u64 as block_hash


def request(**kw) -> PreprocessedRequest:
    base = {"request_id": "r1", "model": "m", "token_ids": [1, 2, 3, 4], "eos_token_ids": [2, 7]}
    return PreprocessedRequest(**{**base, **kw})


def test_sampling_and_stop_options_map_to_sglang_names():
    req = request(
        sampling=SamplingOptions(
            temperature=0.5, top_p=0.9, top_k=20, min_p=0.1, seed=7, presence_penalty=0.2,
            frequency_penalty=0.3, repetition_penalty=1.1,
        ),
        stop=StopConditions(max_tokens=16, min_tokens=2, stop_token_ids=[9]),
    )  # fmt: skip
    assert build_sampling_params(req) == {
        "max_new_tokens": 16,
        "min_new_tokens": 2,
        "stop_token_ids": [9, 2, 7],  # the card's EOS ids join the request's stop ids
        "temperature": 0.5,
        "top_p": 0.9,
        "min_p": 0.1,
        "presence_penalty": 0.2,
        "frequency_penalty": 0.3,
        "repetition_penalty": 1.1,
        "top_k": 20,
        "sampling_seed": 7,
    }


def test_defaults_fill_the_context_ignore_eos_and_top_k_off():
    req = request(stop=StopConditions(ignore_eos=True), sampling=SamplingOptions(top_k=0))
    assert build_sampling_params(req, context_length=100) == {
        "max_new_tokens": 96,
        "ignore_eos": True,
        "top_k": -1,
    }
    assert "max_new_tokens" not in build_sampling_params(request())  # unknown context: SGLang's default


def test_generate_kwargs_stream_token_ids_with_logprobs_and_bootstrap():
    boot = Bootstrap("10.0.0.5", 9100, 42)
    kw = generate_kwargs(request(output=OutputOptions(logprobs=3)), "r1-ab", bootstrap=boot)
    assert kw["input_ids"] == [1, 2, 3, 4] and kw["stream"] is True and kw["rid"] == "r1-ab"
    assert kw["return_logprob"] is True and kw["top_logprobs_num"] == 3
    assert (kw["bootstrap_host"], kw["bootstrap_port"], kw["bootstrap_room"]) == ("10.0.0.5", 9100, 42)
    assert Bootstrap.from_params(boot.to_params()) == boot
    assert Bootstrap.from_params({"bootstrap_host": "h"}) is None and Bootstrap.from_params(None) is None
    with pytest.raises(ValueError):
        generate_kwargs(request(output=OutputOptions(logprobs=-1)), "x")


def test_token_deltas_from_cumulative_and_incremental_streams():
    cumulative = TokenDeltas()
    assert cumulative.new_tokens([5, 6], 2) == [5, 6]
    assert cumulative.new_tokens([5, 6, 7, 8], 4) == [7, 8]
    assert cumulative.new_tokens([5, 6, 7, 8, 9], 5) == [9]
    incremental = TokenDeltas()
    assert incremental.new_tokens([5, 6], 2) == [5, 6]
    assert incremental.new_tokens([7, 8], 4) == [7, 8]
    assert incremental.new_tokens([], 4) == []
    assert incremental.new_tokens([9], 5) == [9]
    # Without SGLang's count, the configured shape decides.
    assert TokenDeltas(cumulative=True).new_tokens([1], None) == [1]
    unsure = TokenDeltas(cumulative=True)
    unsure.new_tokens([1, 2], None)
    assert unsure.new_tokens([1, 2, 3], None) == [3]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, (None, None, None)),
        ({"type": "stop", "matched": 2}, ("stop", 2, None)),
        ({"type": "stop", "matched": "</s>"}, ("stop", "</s>", None)),
        ({"type": "length", "length": 16}, ("length", None, None)),
        ({"type": "abort", "message": "too long"}, ("error", None, "too long")),
        ({"type": "abort"}, ("error", None, "the request was aborted by SGLang")),
        ("stop", ("stop", None, None)),
    ],
)
def test_finish_reasons(raw, expected):
    assert finish_of({"finish_reason": raw}) == expected


def test_converter_reports_counts_once_skips_idle_ticks_and_carries_logprobs():
    conv = OutputConverter(prompt_tokens=4, num_top_logprobs=1)
    meta = {"prompt_tokens": 4, "cached_tokens": 2, "finish_reason": None, "completion_tokens": 0}
    assert conv.convert({"output_ids": [], "meta_info": meta}) is None
    lp = [[-0.1, 5, None], [-0.2, 6, None]]
    top = [[[-0.1, 5, None], [-1.0, 9, None]], [[-0.2, 6, None]]]
    first = conv.convert(
        {
            "output_ids": [5, 6],
            "meta_info": {
                **meta,
                "completion_tokens": 2,
                "output_token_logprobs": lp,
                "output_top_logprobs": top,
            },
        }
    )
    assert first is not None and first.token_ids == [5, 6]
    assert (first.prompt_tokens, first.cached_tokens) == (4, 2)
    assert [(p.token_id, p.logprob, p.top) for p in first.logprobs or []] == [
        (5, -0.1, [(5, -0.1)]),
        (6, -0.2, [(6, -0.2)]),
    ]
    last = conv.convert(
        {
            "output_ids": [5, 6, 2],
            "meta_info": {**meta, "completion_tokens": 3, "finish_reason": {"type": "stop", "matched": 2}},
        }
    )
    assert last is not None and last.token_ids == [2] and last.finish_reason == "stop"
    assert last.prompt_tokens is None and last.cached_tokens is None and conv.finished


# ----- KV events -------------------------------------------------------------------------------------


def test_kv_events_convert_from_sglangs_tagged_arrays():
    stored = convert_event(["BlockStored", [-5, 7], None, [1, 2, 3, 4], 2, None])
    assert isinstance(stored, KvStored) and stored.parent_hash is None
    assert [b.block_hash for b in stored.blocks] == [block_hash(-5), 7]
    assert block_hash(-5) == (1 << 64) - 5
    assert [b.tokens_hash for b in stored.blocks] == compute_block_hashes([1, 2, 3, 4], 2)
    child = convert_event(["BlockStored", [9], 7, [5, 6], 2, None, "GPU"])
    assert isinstance(child, KvStored) and child.parent_hash == 7
    assert convert_event(["BlockStored", [9], 7, [5, 6], 2, None, "CPU"]) is None  # another tier
    assert convert_event(["BlockRemoved", [9, -1]]) == KvRemoved(block_hashes=[9, (1 << 64) - 1])
    assert isinstance(convert_event(["AllBlocksCleared"]), KvCleared)
    assert isinstance(convert_event({"type": "BlockRemoved", "block_hashes": [3]}), KvRemoved)
    assert convert_event(["SomethingNew", 1]) is None


def test_kv_event_relay_numbers_events_and_skips_ids_over_lost_batches():
    batches = []
    relay = kv_event_subscriber(["ipc:///unused"], worker_id=0x5, sink=batches.append)

    def message(seq: int, events: list, rank: int | None = None) -> list[bytes]:
        body = [1.0, events] + ([rank] if rank is not None else [])
        return [b"kv", seq.to_bytes(8, "big"), msgspec.msgpack.encode(body)]

    relay.handle(message(0, [["BlockStored", [1], None, [1, 2], 2, None], ["BlockRemoved", [1]]]))
    relay.handle(message(3, [["AllBlocksCleared"]]))  # batches 1 and 2 were lost
    relay.handle(message(0, [["AllBlocksCleared"]], rank=1))  # another attention-DP rank counts on its own
    relay.handle(message(4, [["AllBlocksCleared"]]))
    # Routers index each rank as its own worker: each rank's ids run on without the others' events.
    assert [[e.event_id for e in b.events] for b in batches] == [[0, 1], [4], [0], [5]]
    assert [b.dp_rank for b in batches] == [0, 0, 1, 0] and batches[0].worker_id == 0x5


def test_subscriber_endpoints_follow_sglangs_port_per_rank():
    assert subscriber_endpoints("tcp://*:5557") == ["tcp://127.0.0.1:5557"]
    assert subscriber_endpoints("tcp://*:5557", 3) == [
        "tcp://127.0.0.1:5557",
        "tcp://127.0.0.1:5558",
        "tcp://127.0.0.1:5559",
    ]
    assert subscriber_endpoints("ipc:///tmp/x/kv", 2) == ["ipc:///tmp/x/kv"]


# ----- decoding options: constraints, logit_bias, prompt logprobs ------------------------------------


@pytest.mark.parametrize(
    ("guided", "expected"),
    [
        (GuidedDecoding(json={"type": "object", "properties": {"a": {"type": "integer"}}}),
         {"json_schema": '{"type": "object", "properties": {"a": {"type": "integer"}}}'}),
        (GuidedDecoding(json_object=True), {"json_schema": '{"type": "object"}'}),
        (GuidedDecoding(regex=r"\d{3}"), {"regex": r"\d{3}"}),
        (GuidedDecoding(choice=["yes", "no"]), {"regex": "(yes|no)"}),
        (GuidedDecoding(grammar='root ::= "a" | "b"'), {"ebnf": 'root ::= "a" | "b"'}),
    ],
    ids=["json", "json_object", "regex", "choice", "grammar"],
)  # fmt: skip
def test_constraints_map_to_sglangs_grammar_params(guided, expected):
    params = build_sampling_params(request(guided=guided))
    assert {k: params[k] for k in ("json_schema", "regex", "ebnf") if k in params} == expected
    assert guided_params(guided) == expected


def test_choice_strings_are_escaped_in_the_alternation():
    regex = guided_params(GuidedDecoding(choice=["a.b", "(x|y)*", "c/d", "1+1?", "plain text"]))["regex"]
    assert regex == r"(a\.b|\(x\|y\)\*|c\/d|1\+1\?|plain text)"
    assert re.fullmatch(regex, "(x|y)*") and not re.fullmatch(regex, "x")
    with pytest.raises(ValueError):
        guided_params(GuidedDecoding(choice=[]))


def test_logit_bias_keys_become_strings_and_prompt_logprobs_start_at_zero():
    req = request(
        sampling=SamplingOptions(logit_bias={5: 100.0, 9: -2.5}),
        output=OutputOptions(logprobs=1, prompt_logprobs=3),
    )
    kw = generate_kwargs(req, "r1-x")
    assert kw["sampling_params"]["logit_bias"] == {"5": 100.0, "9": -2.5}
    assert kw["return_logprob"] is True and kw["logprob_start_len"] == 0
    assert kw["top_logprobs_num"] == 3  # one count for both; each side keeps its own
    only_prompt = generate_kwargs(request(output=OutputOptions(prompt_logprobs=0)), "r1-y")
    assert (
        only_prompt["return_logprob"],
        only_prompt["top_logprobs_num"],
        only_prompt["logprob_start_len"],
    ) == (
        True,
        0,
        0,
    )
    plain = generate_kwargs(request(), "r1-z")
    assert "logprob_start_len" not in plain and "return_logprob" not in plain
    assert "logit_bias" not in plain["sampling_params"]
    with pytest.raises(ValueError):
        generate_kwargs(request(output=OutputOptions(prompt_logprobs=-1)), "x")


def test_prompt_logprobs_convert_once_with_their_own_count():
    conv = OutputConverter(prompt_tokens=3, num_top_logprobs=None, num_prompt_top_logprobs=1)
    meta = {
        "prompt_tokens": 3,
        "completion_tokens": 0,
        "finish_reason": None,
        "input_token_logprobs": [[None, 4, None], [-1.5, 5, None], [-0.2, 6, None]],
        "input_top_logprobs": [None, [[-0.5, 8, None], [-1.5, 5, None]], [[-0.2, 6, None], [-3.0, 1, None]]],
    }
    first = conv.convert({"output_ids": [], "meta_info": meta})  # prompt logprobs alone still go out
    assert first is not None and first.token_ids == [] and first.prompt_tokens == 3
    assert first.prompt_logprobs is not None and first.prompt_logprobs[0] is None
    assert [(e.token_id, e.logprob, e.top) for e in first.prompt_logprobs[1:] if e] == [
        (5, -1.5, [(8, -0.5)]),
        (6, -0.2, [(6, -0.2)]),
    ]
    assert first.logprobs is None  # output logprobs were not asked
    again = conv.convert({"output_ids": [7], "meta_info": {**meta, "completion_tokens": 1}})
    assert again is not None and again.token_ids == [7] and again.prompt_logprobs is None
    assert prompt_logprobs_of({"input_token_logprobs": []}, 2) is None


def test_bad_request_aborts_carry_invalid_request():
    bad = {
        "finish_reason": {"type": "abort", "message": "Failed to compile json grammar", "status_code": 400}
    }
    assert finish_of(bad) == ("error", None, "Failed to compile json grammar")
    assert error_code_of(bad) == "invalid_request"
    assert error_code_of({"finish_reason": {"type": "abort", "message": "KV transfer failed"}}) is None
    assert error_code_of({"finish_reason": {"type": "abort", "status_code": 503}}) is None
    assert error_code_of({"finish_reason": None}) is None
