"""Our wire types to TensorRT-LLM's and back: sampling/stop options, constraints and logit_bias,
disaggregated parameters over the wire, deltas of cumulative token ids, finish reasons, cached
tokens, KV events."""

from __future__ import annotations

from types import SimpleNamespace

import msgspec
import pytest

from dynamo.llm.kv_events import KvRemoved, KvStored, compute_block_hashes
from dynamo.llm.protocols import (
    GuidedDecoding,
    OutputOptions,
    PreprocessedRequest,
    SamplingOptions,
    StopConditions,
)
from dynamo.trtllm.kv_events import KvEventConverter
from dynamo.trtllm.outputs import OutputConverter
from dynamo.trtllm.request import (
    build_sampling_kwargs,
    decoding_kwargs,
    guided_decoding,
    is_trtllm_params,
    params_from_wire,
    params_to_wire,
)
from tests.trtllm.fake_trtllm import FakeDisaggregatedParams, FakeGuidedDecodingParams, FakeSamplingParams


def request(**kw) -> PreprocessedRequest:
    base = {"request_id": "r1", "model": "m", "token_ids": [1, 2, 3, 4], "eos_token_ids": [2, 7]}
    return PreprocessedRequest(**{**base, **kw})


def test_sampling_and_stop_options_map_to_sampling_params():
    req = request(
        sampling=SamplingOptions(
            temperature=0.5, top_p=0.9, top_k=20, min_p=0.1, seed=7, repetition_penalty=1.1
        ),
        stop=StopConditions(max_tokens=16, min_tokens=2, stop_token_ids=[9]),
        output=OutputOptions(logprobs=0),
    )
    kwargs = build_sampling_kwargs(req)
    assert kwargs == {
        "detokenize": False,
        "max_tokens": 16,
        "min_tokens": 2,
        "end_id": 2,  # TensorRT-LLM has no tokenizer here: the card's first EOS
        "pad_id": 2,
        "stop_token_ids": [9, 7],  # the other EOS ids stop too
        "temperature": 0.5,
        "top_p": 0.9,
        "min_p": 0.1,
        "seed": 7,
        "repetition_penalty": 1.1,
        "top_k": 20,
        "logprobs": 1,  # the sampled token's logprob at least
    }
    FakeSamplingParams(**kwargs)  # every keyword is one TensorRT-LLM's SamplingParams knows


def test_prefill_makes_one_token_and_defaults_fill_the_sequence():
    assert (
        build_sampling_kwargs(request(stop=StopConditions(max_tokens=50, min_tokens=3)), prefill=True)[
            "max_tokens"
        ]
        == 1
    )
    assert "min_tokens" not in build_sampling_kwargs(request(stop=StopConditions(min_tokens=3)), prefill=True)
    assert build_sampling_kwargs(request(), max_seq_len=100)["max_tokens"] == 96
    ignoring = build_sampling_kwargs(
        request(stop=StopConditions(ignore_eos=True), sampling=SamplingOptions(top_k=0))
    )
    assert ignoring["ignore_eos"] is True and "stop_token_ids" not in ignoring and "top_k" not in ignoring
    with pytest.raises(ValueError):
        build_sampling_kwargs(request(output=OutputOptions(logprobs=-1)))


def test_disaggregated_params_cross_the_wire_and_come_back_as_generation_only():
    prefill = FakeDisaggregatedParams(
        request_type="context_only", first_gen_tokens=[42], ctx_request_id=7, opaque_state=b"\x00\xffstate"
    )
    wire = params_to_wire(prefill)
    assert wire == {
        "request_type": "context_only",
        "first_gen_tokens": [42],
        "ctx_request_id": 7,
        "opaque_state": "AP9zdGF0ZQ==",
    }
    wire = msgspec.msgpack.decode(msgspec.msgpack.encode(wire))  # as the request plane carries it
    assert (
        is_trtllm_params(wire) and not is_trtllm_params({"bootstrap_room": 1}) and not is_trtllm_params(None)
    )
    decode = params_from_wire({**wire, "from_a_newer_trtllm": 1}, FakeDisaggregatedParams)
    assert decode == FakeDisaggregatedParams(
        request_type="generation_only", first_gen_tokens=[42], ctx_request_id=7, opaque_state=b"\x00\xffstate"
    )


def result(token_ids, finish=None, finished=False, **out):
    output = SimpleNamespace(token_ids=token_ids, finish_reason=finish, stop_reason=None, logprobs=None,
                             disaggregated_params=None, request_perf_metrics=None)  # fmt: skip
    for k, v in out.items():
        setattr(output, k, v)
    return SimpleNamespace(outputs=[output], finished=finished)


def test_cumulative_token_ids_become_deltas_with_counts_and_finish():
    conv = OutputConverter(prompt_tokens=4, block_size=32, num_top_logprobs=0)
    first = conv.convert(result([5, 6], logprobs=[-0.1, -0.2]))
    assert first is not None and first.token_ids == [5, 6] and first.prompt_tokens == 4
    assert [(p.token_id, p.logprob) for p in first.logprobs or []] == [(5, -0.1), (6, -0.2)]
    assert conv.convert(result([5, 6])) is None  # nothing new
    metrics = SimpleNamespace(kv_cache_metrics=SimpleNamespace(num_reused_blocks=3))
    last = conv.convert(
        result([5, 6, 7, 2], "stop", True, request_perf_metrics=metrics, logprobs=[-0.1, -0.2, -0.3, -0.4])
    )
    assert last is not None and last.token_ids == [7, 2] and last.finish_reason == "stop"
    assert last.prompt_tokens is None and last.cached_tokens == 4  # min(prompt, 3 blocks x 32)
    assert [p.logprob for p in last.logprobs or []] == [-0.3, -0.4] and conv.finished


@pytest.mark.parametrize(
    ("raw", "ours"), [("length", "length"), ("cancelled", "cancelled"), ("timeout", "error")]
)
def test_finish_reasons(raw, ours):
    chunk = OutputConverter(4, 32).convert(result([5], raw, True))
    assert chunk is not None and chunk.finish_reason == ours
    assert (chunk.error is not None) == (ours == "error")


def test_a_finished_request_without_output_is_an_error_and_prefill_carries_params():
    conv = OutputConverter(4, 32)
    assert conv.convert(SimpleNamespace(outputs=[], finished=False)) is None
    assert conv.convert(SimpleNamespace(outputs=[], finished=True)).finish_reason == "error"  # type: ignore[union-attr]
    params = FakeDisaggregatedParams(request_type="context_only", ctx_request_id=9, opaque_state=b"s")
    chunk = OutputConverter(4, 32, prefill=True).convert(
        result([5], "length", True, disaggregated_params=params)
    )
    assert chunk is not None and chunk.kv_transfer_params == {
        "request_type": "context_only",
        "ctx_request_id": 9,
        "opaque_state": "cw==",
    }


# ----- KV events ---------------------------------------------------------------------------------------


def event(event_id: int, data: dict) -> dict:
    return {"event_id": event_id, "data": data, "window_size": 4096}


def block(block_hash: int, tokens: list[int]) -> dict:
    return {"type": "stored_block", "block_hash": block_hash, "tokens": [{"token_id": t} for t in tokens]}


def test_kv_events_convert_and_partial_blocks_stay_out():
    conv = KvEventConverter(block_size=2)
    rank, (stored,) = conv.convert(
        event(
            0,
            {
                "type": "stored",
                "parent_hash": None,
                "blocks": [block(-3, [1, 2]), block(5, [3, 4]), block(6, [5])],
            },
        )
    )
    assert rank == 0 and isinstance(stored.data, KvStored) and stored.event_id == 0
    assert [b.block_hash for b in stored.data.blocks] == [(1 << 64) - 3, 5]  # block 6 is partial
    assert [b.tokens_hash for b in stored.data.blocks] == compute_block_hashes([1, 2, 3, 4], 2)
    assert conv.convert(event(1, {"type": "updated", "block_hash": 5})) == (0, [])
    assert conv.convert(event(2, {"type": "removed", "block_hashes": [6]})) == (0, [])  # only the partial one
    _, (removed,) = conv.convert(event(3, {"type": "removed", "block_hashes": [5, 6]}))
    assert removed.data == KvRemoved(block_hashes=[5, 6]) and removed.event_id == 1  # 6 is a full block again
    _, (child,) = conv.convert(
        {
            **event(9, {"type": "stored", "parent_hash": 5, "blocks": [block(8, [7, 8])]}),
            "attention_dp_rank": 1,
        }
    )
    assert child.event_id == 2 + 5 and child.data.parent_hash == 5  # type: ignore[union-attr]  # 5 engine events lost


# ----- decoding options: constraints, logit_bias ----------------------------------------------------


@pytest.mark.parametrize(
    ("guided", "expected"),
    [
        (GuidedDecoding(json={"type": "object"}), FakeGuidedDecodingParams(json={"type": "object"})),
        (GuidedDecoding(json_object=True), FakeGuidedDecodingParams(json_object=True)),
        (GuidedDecoding(regex=r"\d+"), FakeGuidedDecodingParams(regex=r"\d+")),
        (GuidedDecoding(choice=["a.b", "c"]), FakeGuidedDecodingParams(regex=r"(a\.b|c)")),
        (GuidedDecoding(grammar='root ::= "x"'), FakeGuidedDecodingParams(grammar='root ::= "x"')),
    ],
    ids=["json", "json_object", "regex", "choice", "grammar"],
)
def test_constraints_map_to_guided_decoding_params(guided, expected):
    kwargs = decoding_kwargs(request(guided=guided), guided_factory=FakeGuidedDecodingParams, vocab_size=None)
    assert kwargs == {"guided_decoding": expected}
    assert guided_decoding(guided, FakeGuidedDecodingParams) == expected


def test_logit_bias_becomes_an_embedding_bias_over_the_vocabulary():
    kwargs = decoding_kwargs(
        request(sampling=SamplingOptions(logit_bias={3: 100.0, 7: -2.5})), guided_factory=None, vocab_size=10
    )
    bias = kwargs["embedding_bias"]
    assert str(bias.dtype) == "torch.float32" and tuple(bias.shape) == (10,)
    assert bias.tolist() == [0.0, 0.0, 0.0, 100.0, 0.0, 0.0, 0.0, -2.5, 0.0, 0.0]
    FakeSamplingParams(**build_sampling_kwargs(request()), **kwargs)
    assert decoding_kwargs(request(), guided_factory=None, vocab_size=None) == {}


@pytest.mark.parametrize(
    ("req", "factory", "vocab", "says"),
    [
        (request(sampling=SamplingOptions(logit_bias={10: 1.0})), None, 10, "outside the vocabulary"),
        (request(sampling=SamplingOptions(logit_bias={1: 1.0})), None, None, "vocabulary size"),
        (request(guided=GuidedDecoding(regex="x")), None, 10, "guided decoder"),
        (request(guided=GuidedDecoding(choice=[])), FakeGuidedDecodingParams, 10, "at least one"),
        (request(output=OutputOptions(prompt_logprobs=0)), FakeGuidedDecodingParams, 10, "prompt logprobs"),
    ],
    ids=["out-of-vocabulary", "unknown-vocabulary", "no-guided-decoding", "empty-choice", "prompt-logprobs"],
)
def test_options_that_cannot_be_built_are_value_errors(req, factory, vocab, says):
    with pytest.raises(ValueError, match=says):
        decoding_kwargs(req, guided_factory=factory, vocab_size=vocab)
