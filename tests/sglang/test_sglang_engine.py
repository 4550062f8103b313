"""``SglangEngine`` driven against ``FakeSglangEngine`` (the real SGLang needs a GPU): requests in
SGLang's shape, deltas out, finish reasons, cancellation -> abort, KV events over real ZMQ,
prefill/decode through the bootstrap handshake, decoding options (constraints, logit_bias, prompt
logprobs) and the features the card declares."""

from __future__ import annotations

import asyncio
import contextlib
import shlex
from collections.abc import AsyncIterator

import pytest

from dynamo.llm.kv_events import KvEventBatch, KvStored, compute_block_hashes
from dynamo.llm.model_card import EngineFeatures
from dynamo.llm.protocols import (
    EngineOutput,
    GuidedDecoding,
    OutputOptions,
    PreprocessedRequest,
    SamplingOptions,
    StopConditions,
)
from dynamo.sglang.args import parse_args
from dynamo.sglang.engine import SglangEngine
from dynamo.worker import EngineContext, EngineStartError
from tests.sglang.fake_sglang import Behaviour, FakeBootstrapServer, FakeSglangEngine, fake_bindings

pytestmark = pytest.mark.timeout(30)
PROMPT = list(range(100, 140))  # 40 tokens: 2 full pages of 16


def request(rid: str = "req-1", **kw) -> PreprocessedRequest:
    base = {"request_id": rid, "model": "m", "token_ids": PROMPT, "eos_token_ids": [2]}
    return PreprocessedRequest(**{**base, **kw})


def make(behaviour: Behaviour | None = None, args: str = "", sink=None) -> tuple[SglangEngine, Behaviour]:
    behaviour = behaviour or Behaviour()
    config = parse_args(shlex.split(f"--model-path /models/fake {args}"))
    bindings = fake_bindings(behaviour)
    context = EngineContext(worker_id=0x77, kv_event_sink=sink, advertise_host="10.1.2.3")
    return SglangEngine(config, context, bindings=bindings), behaviour


@contextlib.asynccontextmanager
async def running(engine: SglangEngine) -> AsyncIterator[FakeSglangEngine]:
    await engine.start()
    try:
        yield engine._engine
    finally:
        await engine.stop()


async def collect(engine: SglangEngine, req: PreprocessedRequest) -> list[EngineOutput]:
    return [out async for out in engine.generate(req)]


def tokens(outs: list[EngineOutput]) -> list[int]:
    return [t for out in outs for t in out.token_ids]


@pytest.mark.parametrize("cumulative", [True, False], ids=["cumulative", "incremental"])
async def test_fake_engine_streams_new_tokens_only_and_finishes_on_eos(cumulative):
    engine, _ = make(Behaviour(reply=[11, 12, 13, 14, 15], cumulative=cumulative, chunk=2))
    async with running(engine):
        outs = await collect(engine, request(stop=StopConditions(max_tokens=50)))
    assert [o.token_ids for o in outs] == [[11, 12], [13, 14], [15, 2]]
    assert outs[-1].finish_reason == "stop" and outs[-1].stop_reason == 2
    assert outs[0].prompt_tokens == len(PROMPT) and outs[0].cached_tokens == 0
    assert all(o.finish_reason is None for o in outs[:-1])


async def test_fake_engine_gets_token_ids_and_sglang_sampling_params():
    engine, _ = make()
    async with running(engine) as fake:
        await collect(engine, request(stop=StopConditions(max_tokens=3, stop_token_ids=[99])))
        call = fake.calls[0]
        kwargs = fake.server_args
    assert call["input_ids"] == PROMPT and call["stream"] is True and call["rid"].startswith("req-1-")
    assert call["sampling_params"] == {"max_new_tokens": 3, "stop_token_ids": [99, 2]}
    assert (
        kwargs.skip_tokenizer_init is True and kwargs.page_size == 16 and kwargs.model_path == "/models/fake"
    )


async def test_fake_engine_max_tokens_ends_with_length_and_cached_tokens_come_first():
    engine, _ = make(Behaviour(reply=[11, 12, 13, 14, 15], cached_tokens=32))
    async with running(engine):
        outs = await collect(engine, request(stop=StopConditions(max_tokens=3)))
    assert tokens(outs) == [11, 12, 13]
    assert outs[-1].finish_reason == "length" and outs[0].cached_tokens == 32


async def test_fake_engine_without_max_tokens_may_fill_the_context():
    engine, _ = make(Behaviour(context_len=300))
    async with running(engine) as fake:
        await collect(engine, request())
    assert fake.calls[0]["sampling_params"]["max_new_tokens"] == 300 - len(PROMPT)


@pytest.mark.parametrize("how", ["aclose", "cancel"])
async def test_fake_engine_cancellation_aborts_the_sglang_request(how):
    engine, _ = make(Behaviour(reply=list(range(20, 60)), delay=0.02))
    async with running(engine) as fake:
        stream = engine.generate(request(stop=StopConditions(max_tokens=40)))
        if how == "aclose":
            first = await anext(stream)
            assert first.token_ids
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
        rid = fake.calls[0]["rid"]
        assert fake.tokenizer_manager.aborted == [rid]
        assert engine.load_metrics().active_requests == 0


async def test_fake_engine_a_rejected_prompt_ends_with_an_error_chunk():
    engine, _ = make(Behaviour(context_len=len(PROMPT)))
    async with running(engine) as fake:
        outs = await collect(engine, request())
        assert fake.tokenizer_manager.aborted == []  # SGLang ended it itself
    assert len(outs) == 1 and outs[0].finish_reason == "error" and "context length" in (outs[0].error or "")
    assert outs[0].error_code == "invalid_request"  # SGLang aborted it as a bad request


async def test_fake_engine_raising_on_a_request_ends_it_with_an_error_chunk():
    engine, _ = make(Behaviour(raise_on_generate=ValueError("Invalid sampling params: top_p")))
    async with running(engine):
        outs = await collect(engine, request())
    assert [(o.finish_reason, o.error) for o in outs] == [("error", "Invalid sampling params: top_p")]


async def test_fake_engine_start_reads_the_engines_facts_on_our_loop():
    engine, _ = make(Behaviour(context_len=8192, max_total_num_tokens=16_000, max_running_requests=64))
    async with running(engine) as fake:
        assert fake.tokenizer_manager.handle_loop_started  # SGLang's loop (and SIGTERM handler) before ours
        assert (engine.context_length, engine.kv_cache_block_size) == (8192, 16)
        assert (engine.total_kv_blocks, engine.max_num_seqs) == (1000, 64)
        assert engine.load_metrics().max_requests == 64 and engine.bootstrap_address is None
    assert fake.shut_down


async def test_fake_engine_page_size_is_the_one_sglang_resolved():
    engine, _ = make(Behaviour(resolved_page_size=64))  # e.g. what FlashMLA needs
    async with running(engine):
        assert engine.kv_cache_block_size == 64


async def test_fake_engine_start_failure_is_one_clear_error():
    engine, _ = make(Behaviour(fail_start=RuntimeError("CUDA out of memory.\nTried to allocate 2 GiB")))
    with pytest.raises(EngineStartError, match=r"failed to start: RuntimeError: CUDA out of memory\.$"):
        await engine.start()


async def test_fake_engine_stop_aborts_requests_in_flight():
    engine, _ = make(Behaviour(reply=list(range(20, 60)), delay=0.05))
    await engine.start()
    fake = engine._engine
    stream = engine.generate(request(stop=StopConditions(max_tokens=40)))
    first = await anext(stream)
    assert first.token_ids
    await engine.stop()
    rest = [o async for o in stream]
    assert fake.tokenizer_manager.aborted == [fake.calls[0]["rid"]] and fake.shut_down
    assert rest[-1].finish_reason == "cancelled" and rest[-1].error is None


async def test_fake_engine_kv_events_reach_the_sink_over_zmq():
    batches: list[KvEventBatch] = []
    engine, _ = make(sink=batches.append)
    async with running(engine) as fake:
        endpoint = fake.server_args.kv_events_config
        assert '"publisher": "zmq"' in endpoint and "ipc://" in endpoint
        await asyncio.sleep(0.2)  # the ZMQ subscription settles
        await collect(engine, request(stop=StopConditions(max_tokens=2)))
        for _ in range(100):
            if batches:
                break
            await asyncio.sleep(0.02)
    (batch,) = batches  # one SGLang batch, one BlockStored per page
    assert batch.worker_id == 0x77 and [e.event_id for e in batch.events] == [0, 1]
    stored = [e.data for e in batch.events]
    assert all(isinstance(d, KvStored) for d in stored)
    blocks = [b for d in stored for b in d.blocks]  # type: ignore[union-attr]
    assert [b.tokens_hash for b in blocks] == compute_block_hashes(PROMPT, 16)
    assert blocks[0].block_hash == hash(tuple(PROMPT[:16])) & ((1 << 64) - 1)
    assert stored[1].parent_hash == blocks[0].block_hash  # type: ignore[union-attr]


async def test_fake_engine_without_kv_events_configures_no_publisher():
    engine, _ = make(args="--no-kv-events", sink=lambda b: None)
    async with running(engine) as fake:
        assert getattr(fake.server_args, "kv_events_config", None) is None


# ----- decoding options ------------------------------------------------------------------------------


async def test_fake_engine_declares_structured_outputs_only_with_a_grammar_backend():
    for args, structured in (("", False), ("--grammar-backend xgrammar", True)):
        engine, _ = make(args=args)
        facts = await engine.start()
        fake = engine._engine
        await engine.stop()
        assert facts.features == EngineFeatures(
            structured_outputs=structured, logit_bias=True, prompt_logprobs=True
        )
        # SGLang's grammar backend needs its tokenizer loaded.
        assert fake.server_args.skip_tokenizer_init is not structured


async def test_fake_engine_without_a_grammar_backend_refuses_constraints_as_invalid_requests():
    engine, _ = make()
    async with running(engine):
        outs = await collect(engine, request(guided=GuidedDecoding(regex=r"\d+")))
    assert [(o.finish_reason, o.error_code) for o in outs] == [("error", "invalid_request")]
    assert "grammar-backend" in (outs[0].error or "")


async def test_fake_engine_with_a_grammar_backend_gets_the_constraint():
    engine, _ = make(Behaviour(reply=[11, 12]), args="--grammar-backend xgrammar")
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    async with running(engine) as fake:
        outs = await collect(engine, request(guided=GuidedDecoding(json=schema)))
        assert (
            fake.calls[0]["sampling_params"]["json_schema"]
            == '{"type": "object", "properties": {"a": {"type": "integer"}}}'
        )
        bad = await collect(engine, request("bad", guided=GuidedDecoding(json={"type": "nonsense"})))
    assert tokens(outs) == [11, 12, 2] and outs[-1].finish_reason == "stop"
    assert [(o.finish_reason, o.error_code) for o in bad] == [("error", "invalid_request")]
    assert "Failed to compile json grammar" in (bad[0].error or "")


async def test_fake_engine_logit_bias_forces_a_token_and_out_of_vocabulary_is_invalid():
    engine, _ = make(Behaviour(reply=[11, 12, 13]))
    async with running(engine):
        forced = await collect(
            engine,
            request(sampling=SamplingOptions(logit_bias={42: 100.0}), stop=StopConditions(max_tokens=3)),
        )
        bad = await collect(engine, request("bad", sampling=SamplingOptions(logit_bias={10**7: 1.0})))
    assert tokens(forced) == [42, 42, 42]
    assert [(o.finish_reason, o.error_code) for o in bad] == [("error", "invalid_request")]
    assert "logit_bias" in (bad[0].error or "")


async def test_fake_engine_prompt_logprobs_come_once_on_the_first_chunk():
    engine, _ = make(Behaviour(reply=[11, 12, 13], chunk=1))
    async with running(engine) as fake:
        outs = await collect(engine, request(output=OutputOptions(prompt_logprobs=2)))
        call = fake.calls[0]
    assert (call["return_logprob"], call["logprob_start_len"], call["top_logprobs_num"]) == (True, 0, 2)
    first = outs[0].prompt_logprobs
    assert first is not None and len(first) == len(PROMPT) and first[0] is None
    assert [e.token_id for e in first[1:] if e] == PROMPT[1:]
    assert all(e is not None and len(e.top) == 2 for e in first[1:])
    assert all(o.prompt_logprobs is None for o in outs[1:])
    assert tokens(outs) == [11, 12, 13, 2]


# ----- disaggregation --------------------------------------------------------------------------------


async def test_fake_engines_prefill_then_decode_meet_through_the_bootstrap_room():
    server = FakeBootstrapServer()
    prefill, _ = make(
        Behaviour(bootstrap=server), "--disaggregation-mode prefill --disaggregation-bootstrap-port 9100"
    )
    decode, _ = make(Behaviour(bootstrap=server, reply=[31, 32, 33]), "--disaggregation-mode decode")
    async with running(prefill) as pfake, running(decode) as dfake:
        assert prefill.bootstrap_address == "10.1.2.3:9100"
        (answer,) = await collect(prefill, request(prefill_only=True, stop=StopConditions(max_tokens=1)))
        params = answer.kv_transfer_params or {}
        assert answer.finish_reason == "stop" and answer.token_ids == []
        assert (params["bootstrap_host"], params["bootstrap_port"]) == ("10.1.2.3", 9100)
        assert pfake.calls[0]["bootstrap_room"] == params["bootstrap_room"]
        assert (
            prefill.load_metrics().active_requests == 1
        )  # SGLang holds the KV until the decode side pulls it
        outs = await collect(decode, request(kv_transfer_params=params, stop=StopConditions(max_tokens=10)))
        assert tokens(outs) == [31, 32, 33, 2]
        assert dfake.calls[0]["bootstrap_room"] == params["bootstrap_room"]
        for _ in range(50):
            if prefill.load_metrics().active_requests == 0:
                break
            await asyncio.sleep(0.01)
        assert prefill.load_metrics().active_requests == 0 and pfake.tokenizer_manager.aborted == []


async def test_fake_engine_decode_without_a_prefill_is_an_error_not_a_hang():
    engine, _ = make(args="--disaggregation-mode decode")
    async with running(engine) as fake:
        outs = await collect(engine, request())
        assert fake.calls == []
    assert outs[0].finish_reason == "error" and "cannot prefill on a decode worker" in (outs[0].error or "")


async def test_fake_engine_prefill_nobody_pulls_is_aborted_after_the_timeouts(monkeypatch):
    monkeypatch.setenv("DYN_PREFILL_TIMEOUT", "0.1")
    monkeypatch.setenv("DYN_KV_TRANSFER_TIMEOUT", "0.1")
    engine, _ = make(args="--disaggregation-mode prefill")
    async with running(engine) as fake:
        (answer,) = await collect(engine, request())
        assert answer.kv_transfer_params
        await asyncio.sleep(0.4)
        assert fake.tokenizer_manager.aborted == [fake.calls[0]["rid"]]
        assert engine.load_metrics().active_requests == 0
