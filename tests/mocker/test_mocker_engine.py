"""MockEngine end to end: streaming, stop conditions, caching, cancellation, preemption,
disaggregated prefill -> decode, events and load metrics.

Simulations run with large speedup ratios; time is checked through the engine's modelled
time (``sim_time_ms``) or with lower bounds only, never tight wall-clock windows.
"""

import asyncio
import math
import time
from collections.abc import AsyncIterator

import pytest

from dynamo.llm.kv_events import KvEventBatch, KvStored
from dynamo.llm.protocols import (
    FINISH_ERROR,
    FINISH_LENGTH,
    FINISH_STOP,
    EngineOutput,
    PreprocessedRequest,
    SamplingOptions,
    StopConditions,
)
from dynamo.mocker.config import MockerConfig
from dynamo.mocker.engine import MockEngine
from dynamo.mocker.timing import decode_ms, prefill_ms

VOCAB = 500
EOS = 2
SPECIAL = {0, 1, 2, 3}


def request(rid: str, prompt: list[int], max_tokens: int | None = 8, **stop) -> PreprocessedRequest:
    return PreprocessedRequest(
        request_id=rid, model="mock", token_ids=prompt, stop=StopConditions(max_tokens=max_tokens, **stop)
    )


def prompt_of(n: int, base: int = 10) -> list[int]:
    return [base + (i % 400) for i in range(n)]


async def collect(gen: AsyncIterator[EngineOutput]) -> list[EngineOutput]:
    return [o async for o in gen]


def tokens(outs: list[EngineOutput]) -> list[int]:
    return [t for o in outs for t in o.token_ids]


@pytest.fixture
def events() -> list[KvEventBatch]:
    return []


async def started(config: MockerConfig, events: list[KvEventBatch] | None = None, **kw) -> MockEngine:
    eng = MockEngine(
        config,
        worker_id=0xABC,
        vocab_size=VOCAB,
        eos_token_id=EOS,
        kv_event_sink=events.append if events is not None else None,
        special_token_ids=SPECIAL,
        **kw,
    )
    await eng.start()
    return eng


FAST = {"speedup_ratio": 1000.0, "num_gpu_blocks": 1000, "block_size": 16}


async def test_streams_max_tokens_valid_ids(events: list[KvEventBatch]) -> None:
    eng = await started(MockerConfig(**FAST), events)
    try:
        outs = await collect(eng.generate(request("r1", prompt_of(100), max_tokens=40)))
    finally:
        await eng.stop()
    toks = tokens(outs)
    assert len(toks) == 40
    assert all(0 <= t < VOCAB and t not in SPECIAL for t in toks)
    assert outs[0].prompt_tokens == 100 and outs[0].cached_tokens == 0
    assert all(o.prompt_tokens is None for o in outs[1:])
    assert outs[-1].finish_reason == FINISH_LENGTH
    assert all(o.finish_reason is None for o in outs[:-1])
    assert eng.kv.num_active == 0


async def test_output_is_deterministic_per_seed() -> None:
    eng = await started(MockerConfig(**FAST))
    try:

        def req(rid: str, seed: int) -> PreprocessedRequest:
            r = request(rid, prompt_of(20), max_tokens=30)
            r.sampling = SamplingOptions(seed=seed)
            return r

        a = tokens(await collect(eng.generate(req("a", 7))))
        b = tokens(await collect(eng.generate(req("b", 7))))
        c = tokens(await collect(eng.generate(req("c", 8))))
    finally:
        await eng.stop()
    assert a == b and a != c


async def test_cached_tokens_for_repeated_prefix(events: list[KvEventBatch]) -> None:
    eng = await started(MockerConfig(**FAST), events)
    try:
        shared = prompt_of(96)
        first = await collect(eng.generate(request("a", [*shared, 7, 8, 9])))
        sim_first = eng.sim_time_ms
        second = await collect(eng.generate(request("b", [*shared, 4, 5])))
        sim_second = eng.sim_time_ms - sim_first
    finally:
        await eng.stop()
    assert first[0].cached_tokens == 0
    assert second[0].cached_tokens == 96 and second[0].prompt_tokens == 98
    assert eng.stats.prefill_tokens == 99 + 2  # only uncached tokens are computed
    assert sim_second < sim_first  # cheaper prefill
    assert eng.load_metrics().prefix_hit_rate == pytest.approx((0 + 96 / 98) / 2)


async def test_modelled_time_follows_the_reference_formulas() -> None:
    # 640-token prompt = 40 full blocks of 16; + 1 block for the tokens to come: p = 41 / 1000
    eng = await started(MockerConfig(**FAST))
    try:
        await collect(eng.generate(request("a", prompt_of(640), max_tokens=5)))
    finally:
        await eng.stop()
    assert eng.sim_time_ms == pytest.approx(prefill_ms(640) + 5 * decode_ms(41 / 1000))


async def test_wall_time_scales_with_speedup() -> None:
    cfg = MockerConfig(speedup_ratio=20.0, num_gpu_blocks=1000, block_size=16)
    eng = await started(cfg)
    try:
        t0 = time.perf_counter()
        await collect(eng.generate(request("a", prompt_of(200), max_tokens=40)))
        wall = time.perf_counter() - t0
    finally:
        await eng.stop()
    modelled = eng.sim_time_ms / 1000 / cfg.speedup_ratio  # ~0.013 s
    assert wall >= modelled - 0.006  # never faster than modelled (minus the bounded catch-up)
    assert wall < modelled * 50  # and not absurdly slower (generous for a noisy machine)


async def test_decode_speedup_only_speeds_up_decode() -> None:
    eng = await started(
        MockerConfig(speedup_ratio=1e6, decode_speedup_ratio=4.0, num_gpu_blocks=1000, block_size=16)
    )
    try:
        await collect(eng.generate(request("a", prompt_of(16), max_tokens=3)))
    finally:
        await eng.stop()
    # modelled time is before any speedup; the divisors only change how long the loop sleeps
    assert eng.sim_time_ms == pytest.approx(prefill_ms(16) + 3 * decode_ms(2 / 1000))


async def test_max_num_seqs_respected() -> None:
    eng = await started(MockerConfig(**{**FAST, "max_num_seqs": 2}))
    seen: list[int] = []

    async def one(i: int) -> list[int]:
        out = []
        async for o in eng.generate(request(f"r{i}", prompt_of(30, base=10 + i), max_tokens=10)):
            seen.append(eng.load_metrics().active_requests)
            out.extend(o.token_ids)
        return out

    try:
        results = await asyncio.gather(*(one(i) for i in range(6)))
    finally:
        await eng.stop()
    assert all(len(r) == 10 for r in results)
    assert max(seen) <= 2 and eng.stats.max_running == 2


async def test_cancellation_frees_blocks_and_stops_output() -> None:
    eng = await started(MockerConfig(**{**FAST, "speedup_ratio": 50.0}))
    try:
        gen = eng.generate(request("long", prompt_of(200), max_tokens=100_000))
        got = [await anext(gen), await anext(gen)]
        assert eng.kv.num_active > 0
        await gen.aclose()
        assert eng.kv.num_active == 0 and eng.stats.aborted == 1
        assert not eng.scheduler.has_work()
        with pytest.raises(StopAsyncIteration):
            await anext(gen)
        produced = eng.stats.output_tokens
        await asyncio.sleep(0.02)
        assert eng.stats.output_tokens == produced  # nothing runs for it any more
        assert len(tokens(got)) >= 2
    finally:
        await eng.stop()


async def test_cancelling_the_consumer_task_frees_blocks() -> None:
    eng = await started(MockerConfig(**{**FAST, "speedup_ratio": 50.0}))
    try:
        first = asyncio.Event()

        async def consume() -> None:
            async for _ in eng.generate(request("long", prompt_of(200), max_tokens=100_000)):
                first.set()

        task = asyncio.create_task(consume())
        await asyncio.wait_for(first.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert eng.kv.num_active == 0 and not eng.scheduler.has_work()
        # the engine keeps serving
        outs = await collect(eng.generate(request("next", prompt_of(20), max_tokens=3)))
        assert len(tokens(outs)) == 3
    finally:
        await eng.stop()


async def test_preemption_under_memory_pressure_completes_every_request() -> None:
    cfg = MockerConfig(speedup_ratio=1000.0, num_gpu_blocks=40, block_size=16, watermark=0.0)
    eng = await started(cfg)
    try:
        results = await asyncio.gather(
            *(
                collect(eng.generate(request(f"r{i}", prompt_of(40, base=10 + i), max_tokens=80)))
                for i in range(8)
            )
        )
    finally:
        await eng.stop()
    assert eng.stats.preemptions > 0
    for outs in results:
        assert len(tokens(outs)) == 80 and outs[-1].finish_reason == FINISH_LENGTH
    assert eng.kv.num_active == 0


async def test_eos_min_tokens_and_ignore_eos() -> None:
    cfg = MockerConfig(**FAST, max_model_len=300, mean_output_tokens=20)
    eng = await started(cfg)
    try:
        natural = await collect(eng.generate(request("a", prompt_of(50), max_tokens=None)))
        at_least = await collect(eng.generate(request("b", prompt_of(50), max_tokens=None, min_tokens=120)))
        ignored = await collect(eng.generate(request("c", prompt_of(50), max_tokens=None, ignore_eos=True)))
    finally:
        await eng.stop()
    assert natural[-1].finish_reason == FINISH_STOP and tokens(natural)[-1] == EOS
    assert EOS not in tokens(natural)[:-1] and len(tokens(natural)) < 40
    assert at_least[-1].finish_reason == FINISH_STOP and len(tokens(at_least)) >= 120
    # without EOS a request runs to the context limit
    assert ignored[-1].finish_reason == FINISH_LENGTH and len(tokens(ignored)) == 300 - 50


async def test_context_limit_and_rejected_prompts() -> None:
    eng = await started(MockerConfig(**FAST, max_model_len=100))
    try:
        capped = await collect(eng.generate(request("a", prompt_of(90), max_tokens=50)))
        too_long = await collect(eng.generate(request("b", prompt_of(100))))
        empty = await collect(eng.generate(request("c", [])))
    finally:
        await eng.stop()
    assert len(tokens(capped)) == 10 and capped[-1].finish_reason == FINISH_LENGTH
    assert too_long[-1].finish_reason == FINISH_ERROR and "context limit" in (too_long[-1].error or "")
    assert empty[-1].finish_reason == FINISH_ERROR


async def test_kv_events_and_generated_blocks(events: list[KvEventBatch]) -> None:
    eng = await started(MockerConfig(**FAST), events)
    try:
        await collect(eng.generate(request("a", prompt_of(32), max_tokens=20)))
    finally:
        await eng.stop()
    evs = [e for b in events for e in b.events]
    assert [e.event_id for e in evs] == list(range(len(evs)))
    stored = [e.data for e in evs if isinstance(e.data, KvStored)]
    # prompt blocks, then the block filled by generated tokens chained after them
    assert stored[0].parent_hash is None and len(stored[0].blocks) == 2
    assert stored[1].parent_hash == stored[0].blocks[-1].block_hash and len(stored[1].blocks) == 1
    assert all(b.worker_id == 0xABC for b in events)
    snap = eng.kv_block_set()
    assert [s.blocks[0].block_hash for s in snap.blocks] == [b.block_hash for s in stored for b in s.blocks]
    assert eng.recent_events(-1) == evs and eng.recent_events(evs[-1].event_id) == []


async def test_no_events_without_a_sink_and_load_metrics() -> None:
    eng = await started(MockerConfig(**FAST))
    try:
        gen = eng.generate(request("a", prompt_of(64), max_tokens=1000))
        await anext(gen)
        m = eng.load_metrics()
        assert m.worker_id == 0xABC and m.active_requests == 1 and m.waiting_requests == 0
        assert m.kv_total_blocks == 1000 and m.kv_active_blocks == 5  # 4 prompt blocks + 1 growing
        assert m.cache_usage == pytest.approx(5 / 1000) and m.max_requests == 256
        await gen.aclose()
    finally:
        await eng.stop()


async def test_prefill_to_decode_handoff_with_transfer_time() -> None:
    prefill = await started(MockerConfig(**FAST, is_prefill_worker=True))
    # 0.2 s of real transfer time: 1000 tokens * 1 MB at 5 GB/s = 200 ms simulated, speedup 1
    decode = await started(
        MockerConfig(
            num_gpu_blocks=1000,
            block_size=16,
            is_decode_worker=True,
            kv_transfer_bandwidth=5.0,
            kv_bytes_per_token=1_000_000,
            speedup_ratio=1.0,
            decode_speedup_ratio=1000.0,
        )
    )
    try:
        prompt = prompt_of(1000)
        p_out = await collect(prefill.generate(request("r", prompt, max_tokens=50)))
        assert len(p_out) == 1 and len(p_out[0].token_ids) == 1
        assert p_out[0].finish_reason == FINISH_LENGTH
        params = p_out[0].kv_transfer_params
        assert params is not None and params["mock_worker"] == 0xABC and params["num_tokens"] == 1000
        assert len(params["block_hashes"]) == 1000 // 16
        assert prefill.kv.num_active == 0 and prefill.kv.num_inactive == 62

        req = request("r", prompt, max_tokens=5)
        req.kv_transfer_params = params
        t0 = time.perf_counter()
        d_out = await collect(decode.generate(req))
        wall = time.perf_counter() - t0
    finally:
        await prefill.stop()
        await decode.stop()
    assert len(tokens(d_out)) == 5 and d_out[-1].finish_reason == FINISH_LENGTH
    assert decode.stats.transfers == 1 and decode.stats.transfer_ms == pytest.approx(200.0)
    assert decode.stats.prefill_tokens == 0  # KV pulled, not computed
    assert wall >= 0.19
    assert decode.kv.num_active == 0 and decode.kv.num_inactive == 62  # registered as its own


async def test_prefill_only_request_on_an_aggregated_worker() -> None:
    eng = await started(MockerConfig(**FAST))
    try:
        req = request("r", prompt_of(40), max_tokens=10)
        req.prefill_only = True
        outs = await collect(eng.generate(req))
    finally:
        await eng.stop()
    assert len(tokens(outs)) == 1 and outs[-1].kv_transfer_params is not None


async def test_decode_worker_falls_back_to_local_prefill_on_bad_params() -> None:
    eng = await started(MockerConfig(**FAST, is_decode_worker=True))
    try:
        req = request("r", prompt_of(40), max_tokens=3)
        req.kv_transfer_params = "garbage"  # type: ignore[assignment]
        outs = await collect(eng.generate(req))
        plain = await collect(eng.generate(request("s", prompt_of(40, base=200), max_tokens=3)))
    finally:
        await eng.stop()
    assert len(tokens(outs)) == 3 and len(tokens(plain)) == 3
    assert eng.stats.transfers == 0 and eng.stats.prefill_tokens == 80


async def test_stop_fails_in_flight_requests() -> None:
    eng = await started(MockerConfig(**{**FAST, "speedup_ratio": 10.0}))
    gen = eng.generate(request("a", prompt_of(40), max_tokens=100_000))
    await anext(gen)
    await eng.stop()
    rest = [o async for o in gen]
    assert rest[-1].finish_reason == FINISH_ERROR and rest[-1].error == "engine stopped"
    with pytest.raises(RuntimeError):
        await anext(eng.generate(request("b", prompt_of(4))))


async def test_a_failing_loop_fails_requests_instead_of_hanging(monkeypatch: pytest.MonkeyPatch) -> None:
    eng = await started(MockerConfig(**FAST))
    try:

        def boom(step):  # a bug in the simulation
            raise ValueError("boom")

        monkeypatch.setattr(eng.scheduler, "complete", boom)
        outs = await asyncio.wait_for(collect(eng.generate(request("a", prompt_of(20)))), 5)
        assert outs[-1].finish_reason == FINISH_ERROR and "boom" in (outs[-1].error or "")
        assert not eng.running
        with pytest.raises(RuntimeError):
            await anext(eng.generate(request("b", prompt_of(4))))
    finally:
        await eng.stop()


async def test_logprobs_are_those_of_a_uniform_sampler() -> None:
    """Asked for logprobs, the mocker answers every token with -ln(vocab) and that many
    alternatives; not asked, none."""
    eng = await started(MockerConfig(**FAST))
    try:
        req = request("lp", prompt_of(20), max_tokens=12)
        req.output.logprobs = 3
        outs = await collect(eng.generate(req))
        plain = await collect(eng.generate(request("plain", prompt_of(20), max_tokens=12)))
    finally:
        await eng.stop()
    entries = [e for o in outs for e in (o.logprobs or [])]
    assert [e.token_id for e in entries] == tokens(outs)
    assert all(e.logprob == pytest.approx(-math.log(VOCAB)) and len(e.top) == 3 for e in entries)
    assert all(e.top[0][0] == e.token_id for e in entries)
    assert all(o.logprobs is None for o in plain)
