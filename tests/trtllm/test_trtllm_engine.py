"""``TrtllmEngine`` driven against ``FakeTrtllmLLM`` (the real TensorRT-LLM needs a GPU):
requests as ``SamplingParams``, deltas out, finish reasons, cancellation -> ``abort()`` (deferred
while a decode request's KV is in flight), prefill -> decode through ``DisaggregatedParams``,
KV events from ``get_kv_cache_events_async``, decoding options (constraints, logit_bias) and the
features the card declares."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import shlex
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dynamo.llm.kv_events import KvEventBatch, KvRemoved, KvStored
from dynamo.llm.model_card import EngineFeatures
from dynamo.llm.protocols import (
    EngineOutput,
    GuidedDecoding,
    OutputOptions,
    PreprocessedRequest,
    SamplingOptions,
    StopConditions,
)
from dynamo.trtllm.args import parse_args
from dynamo.trtllm.engine import TrtllmBindings, TrtllmEngine
from dynamo.worker import EngineContext, EngineStartError
from tests.trtllm.fake_trtllm import (
    Behaviour,
    FakeDisaggregatedParams,
    FakeGuidedDecodingParams,
    FakeRequestError,
    FakeSamplingParams,
    FakeTrtllmLLM,
    fake_bindings,
)

pytestmark = pytest.mark.timeout(30)
PROMPT = list(range(100, 140))  # 40 tokens: one full block of 32 and a partial one


def request(rid: str = "req-1", **kw) -> PreprocessedRequest:
    base = {"request_id": rid, "model": "m", "token_ids": PROMPT, "eos_token_ids": [2]}
    return PreprocessedRequest(**{**base, **kw})


def make(behaviour: Behaviour | None = None, args: str = "", sink=None) -> TrtllmEngine:
    config = parse_args(shlex.split(f"--model-path /models/fake {args}"))
    context = EngineContext(worker_id=0x88, kv_event_sink=sink)
    return TrtllmEngine(config, context, bindings=fake_bindings(behaviour or Behaviour()))


@contextlib.asynccontextmanager
async def running(engine: TrtllmEngine) -> AsyncIterator[FakeTrtllmLLM]:
    await engine.start()
    try:
        yield engine._llm
    finally:
        await engine.stop()


async def collect(engine: TrtllmEngine, req: PreprocessedRequest) -> list[EngineOutput]:
    return [out async for out in engine.generate(req)]


def tokens(outs: list[EngineOutput]) -> list[int]:
    return [t for out in outs for t in out.token_ids]


async def test_fake_engine_streams_deltas_and_finishes_on_the_end_id():
    engine = make(Behaviour(reply=[11, 12, 13, 14, 15], chunk=2))
    async with running(engine) as llm:
        outs = await collect(engine, request(stop=StopConditions(max_tokens=50)))
        (call,) = llm.calls
    assert [o.token_ids for o in outs] == [[11, 12], [13, 14], [15, 2]]
    assert outs[-1].finish_reason == "stop" and all(o.finish_reason is None for o in outs[:-1])
    assert outs[0].prompt_tokens == len(PROMPT)
    assert call.prompt_token_ids == PROMPT and call.streaming is True and call.disagg is None
    assert call.params == FakeSamplingParams(max_tokens=50, end_id=2, pad_id=2, detokenize=False)


async def test_fake_engine_takes_its_options_from_the_llm_api_arguments():
    engine = make(args="--max-seq-len 2048 --max-batch-size 8 --kv-block-size 64")
    async with running(engine) as llm:
        assert llm.llm_args["skip_tokenizer_init"] is True and llm.llm_args["backend"] == "pytorch"
        assert llm.llm_args["kv_cache_config"] == {"tokens_per_block": 64, "event_buffer_max_size": 1024}
        assert (engine.context_length, engine.kv_cache_block_size, engine.max_num_seqs) == (2048, 64, 8)
        await collect(engine, request())
        assert llm.calls[0].params.max_tokens == 2048 - len(PROMPT)  # no max_tokens: fill the sequence
    assert llm.shut_down


async def test_fake_engine_length_finish_and_cached_tokens_from_perf_metrics():
    engine = make(Behaviour(reply=list(range(20, 40)), reused_blocks=1))
    async with running(engine):
        outs = await collect(engine, request(stop=StopConditions(max_tokens=3)))
    assert tokens(outs) == [20, 21, 22] and outs[-1].finish_reason == "length"
    assert [o.cached_tokens for o in outs if o.cached_tokens is not None] == [32]


@pytest.mark.parametrize("how", ["aclose", "cancel"])
async def test_fake_engine_cancellation_aborts_the_request(how):
    engine = make(Behaviour(reply=list(range(20, 60)), delay=0.02))
    async with running(engine) as llm:
        stream = engine.generate(request(stop=StopConditions(max_tokens=40)))
        if how == "aclose":
            assert (await anext(stream)).token_ids
            await stream.aclose()
        else:

            async def consume() -> None:
                async for _ in stream:
                    pass

            task = asyncio.create_task(consume())
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert llm.aborted == llm.calls and engine.load_metrics().active_requests == 0


async def test_fake_engine_a_refused_request_ends_with_an_error_chunk():
    engine = make(Behaviour(reject=FakeRequestError("prompt length 40 exceeds max_seq_len 32")))
    async with running(engine):
        outs = await collect(engine, request())
    assert [(o.finish_reason, o.error) for o in outs] == [
        ("error", "prompt length 40 exceeds max_seq_len 32")
    ]
    assert outs[0].error_code == "invalid_request"


async def test_fake_engine_bad_sampling_values_end_with_an_error_chunk():
    engine = make()
    engine._bindings = TrtllmBindings(
        LLM=functools.partial(FakeTrtllmLLM, Behaviour()),
        SamplingParams=lambda **kw: FakeSamplingParams(**{**kw, "unknown_knob": 1}),
        DisaggregatedParams=FakeDisaggregatedParams,
    )
    async with running(engine):
        outs = await collect(engine, request())
    assert outs[0].finish_reason == "error" and "invalid sampling options" in (outs[0].error or "")


async def test_fake_engine_start_failure_is_one_clear_error():
    engine = make(Behaviour(fail_start=RuntimeError("No CUDA GPUs are available\nmore")))
    with pytest.raises(EngineStartError, match=r"failed to start: RuntimeError: No CUDA GPUs are available$"):
        await engine.start()


async def test_fake_engine_stop_aborts_requests_in_flight():
    engine = make(Behaviour(reply=list(range(20, 60)), delay=0.05))
    await engine.start()
    llm = engine._llm
    stream = engine.generate(request(stop=StopConditions(max_tokens=40)))
    assert (await anext(stream)).token_ids
    await engine.stop()
    rest = [o async for o in stream]
    assert llm.aborted == llm.calls and rest[-1].finish_reason == "cancelled" and llm.shut_down


# ----- decoding options ------------------------------------------------------------------------------

GUIDED = """--override-engine-args '{"guided_decoding_backend": "xgrammar"}'"""


def model_dir(tmp_path: Path, vocab_size: int = 1000) -> Path:
    (tmp_path / "config.json").write_text(
        json.dumps({"architectures": ["LlamaForCausalLM"], "vocab_size": vocab_size})
    )
    return tmp_path


def make_at(model: Path, behaviour: Behaviour | None = None, args: str = "") -> TrtllmEngine:
    config = parse_args(shlex.split(f"--model-path {model} {args}"))
    return TrtllmEngine(
        config, EngineContext(worker_id=0x88), bindings=fake_bindings(behaviour or Behaviour())
    )


@pytest.mark.parametrize(
    ("args", "with_config", "features"),
    [
        ("", False, EngineFeatures()),  # no vocabulary size, no guided decoder
        ("", True, EngineFeatures(logit_bias=True)),
        (GUIDED, False, EngineFeatures(structured_outputs=True, logit_bias=True)),  # the tokenizer's size
        (GUIDED, True, EngineFeatures(structured_outputs=True, logit_bias=True)),
    ],
    ids=["plain", "config-json", "guided", "guided-config-json"],
)
async def test_fake_engine_declares_what_its_configuration_honours(tmp_path, args, with_config, features):
    model = model_dir(tmp_path) if with_config else tmp_path / "hub-name-not-cached"
    engine = make_at(model, args=args)
    facts = await engine.start()
    await engine.stop()
    assert facts.features == features
    assert facts.features.prompt_logprobs is False


async def test_fake_engine_with_a_guided_decoder_gets_the_constraint(tmp_path):
    engine = make_at(model_dir(tmp_path), Behaviour(reply=[11, 12]), args=GUIDED)
    async with running(engine) as llm:
        outs = await collect(engine, request(guided=GuidedDecoding(choice=["yes", "no"])))
        assert llm.calls[0].params.guided_decoding == FakeGuidedDecodingParams(regex="(yes|no)")
        bad = await collect(engine, request("bad", guided=GuidedDecoding(regex="(unclosed")))
    assert tokens(outs) == [11, 12, 2] and outs[-1].finish_reason == "stop"
    assert [(o.finish_reason, o.error_code) for o in bad] == [("error", "invalid_request")]
    assert "Invalid regex" in (bad[0].error or "")


async def test_fake_engine_logit_bias_forces_a_token_and_out_of_vocabulary_is_invalid(tmp_path):
    engine = make_at(model_dir(tmp_path, vocab_size=100), Behaviour(reply=[11, 12, 13]))
    async with running(engine) as llm:
        forced = await collect(engine, request(sampling=SamplingOptions(logit_bias={42: 100.0})))
        assert tuple(llm.calls[0].params.embedding_bias.shape) == (100,)
        bad = await collect(engine, request("bad", sampling=SamplingOptions(logit_bias={100: 1.0})))
    assert tokens(forced) == [42, 42, 42]
    assert [(o.finish_reason, o.error_code) for o in bad] == [("error", "invalid_request")]
    assert "outside the vocabulary" in (bad[0].error or "")
    assert len(llm.calls) == 1  # refused before it reached TensorRT-LLM


async def test_fake_engine_refuses_what_it_does_not_declare_instead_of_ignoring_it(tmp_path):
    engine = make_at(model_dir(tmp_path), Behaviour(reply=[11]))  # no guided decoder
    async with running(engine) as llm:
        plp = await collect(engine, request(output=OutputOptions(prompt_logprobs=1)))
        guided = await collect(engine, request("g", guided=GuidedDecoding(regex="x")))
        assert llm.calls == []  # neither reached TensorRT-LLM
    assert [(o.finish_reason, o.error_code) for o in plp + guided] == [("error", "invalid_request")] * 2
    assert "prompt logprobs" in (plp[0].error or "") and "guided_decoding_backend" in (guided[0].error or "")


# ----- disaggregation --------------------------------------------------------------------------------


async def test_fake_engines_prefill_hands_params_the_decode_request_continues_from():
    prefill = make(args="--disaggregation-mode prefill")
    decode = make(Behaviour(reply=[31, 32, 33]), args="--disaggregation-mode decode")
    async with running(prefill) as pllm, running(decode) as dllm:
        (answer,) = await collect(prefill, request(prefill_only=True, stop=StopConditions(max_tokens=1)))
        (pcall,) = pllm.calls
        assert (
            pcall.disagg == FakeDisaggregatedParams(request_type="context_only") and pcall.streaming is False
        )
        assert pcall.params.max_tokens == 1
        params = answer.kv_transfer_params or {}
        assert answer.finish_reason == "length" and params["ctx_request_id"] == 4242
        assert isinstance(params["opaque_state"], str)  # base64: msgpack/JSON safe
        outs = await collect(decode, request(kv_transfer_params=params, stop=StopConditions(max_tokens=10)))
        (dcall,) = dllm.calls
    assert (
        dcall.disagg.request_type == "generation_only"
        and dcall.disagg.opaque_state == Behaviour().opaque_state
    )
    assert tokens(outs) == [31, 32, 33, 2]


async def test_fake_engine_decode_without_params_prefills_locally():
    engine = make(args="--disaggregation-mode decode")
    async with running(engine) as llm:
        outs = await collect(engine, request(stop=StopConditions(max_tokens=3)))
    assert llm.calls[0].disagg is None and tokens(outs) == [11, 12, 13]


async def test_fake_engine_cancelled_decode_is_aborted_once_its_kv_arrived():
    engine = make(Behaviour(reply=list(range(20, 60)), delay=0.02), args="--disaggregation-mode decode")
    params = {
        "request_type": "context_only",
        "ctx_request_id": 4242,
        "opaque_state": "AAFwcmVmaWxsLXN0YXRl/w==",
    }
    async with running(engine) as llm:
        stream = engine.generate(request(kv_transfer_params=params, stop=StopConditions(max_tokens=40)))
        task = asyncio.create_task(anext(stream))
        await asyncio.sleep(0.01)  # the KV is still arriving (the fake takes 50 ms)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert llm.aborted == []  # not while the transfer is in flight...
        for _ in range(100):
            if llm.aborted:
                break
            await asyncio.sleep(0.01)
        assert llm.aborted == llm.calls  # ...but as soon as it landed


async def test_fake_engine_kv_events_reach_the_sink():
    batches: list[KvEventBatch] = []
    engine = make(sink=batches.append)
    async with running(engine):
        await collect(engine, request(stop=StopConditions(max_tokens=2)))
        for _ in range(100):
            if len(batches) >= 1:
                break
            await asyncio.sleep(0.02)
    (stored,) = [e for b in batches for e in b.events]  # the partial block's removal is not relayed
    assert isinstance(stored.data, KvStored) and len(stored.data.blocks) == 1 and stored.event_id == 0
    assert batches[0].worker_id == 0x88
    assert not any(isinstance(e.data, KvRemoved) for b in batches for e in b.events)


async def test_fake_engine_without_kv_events_polls_nothing():
    engine = make(args="--no-kv-events", sink=lambda b: None)
    async with running(engine) as llm:
        assert engine._kv_task is None and "event_buffer_max_size" not in llm.llm_args["kv_cache_config"]
