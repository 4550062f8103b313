"""The in-process vLLM engine on SmolLM2 (CPU): answers, limits, cancellation, prefix cache, KV events.

One engine is shared by the whole module (``vllm_engine`` in conftest.py): ~25 s to start.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest

pytest.importorskip("vllm")

from prometheus_client import CollectorRegistry, generate_latest

from dynamo.llm.kv_events import KvCleared, KvStored, compute_block_hashes
from dynamo.llm.protocols import (
    EngineOutput,
    OutputOptions,
    PreprocessedRequest,
    SamplingOptions,
    StopConditions,
)
from dynamo.vllm.args import parse_args
from dynamo.vllm.engine import EngineStartError, VllmEngine
from dynamo.vllm.metrics import register_vllm_metrics
from dynamo.worker import EngineContext

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(180)]

EOS = 2  # <|im_end|>
QUESTION = "What is the capital of France?"
N_COMPARE = 20


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(smollm2_dir))


@pytest.fixture(scope="module")
def question_ids(tokenizer) -> list[int]:
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": QUESTION}], add_generation_prompt=True, tokenize=False
    )
    return list(tokenizer(text, add_special_tokens=False).input_ids)


def hf_greedy(model_dir: Path, prompt: list[int], n: int) -> list[int]:
    """Reference: n greedy tokens from HF transformers in float32, not stopping at EOS."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    model.eval()
    tokens: list[int] = []
    with torch.no_grad():
        out = model(torch.tensor([prompt]), use_cache=True)
        for _ in range(n):
            nxt = int(out.logits[0, -1].argmax())
            tokens.append(nxt)
            out = model(torch.tensor([[nxt]]), past_key_values=out.past_key_values, use_cache=True)
    return tokens


def make_request(token_ids: list[int], rid: str, **stop: object) -> PreprocessedRequest:
    return PreprocessedRequest(
        request_id=rid,
        model="smollm2",
        token_ids=token_ids,
        sampling=SamplingOptions(temperature=0.0),
        stop=StopConditions(**stop),  # type: ignore[arg-type]
        eos_token_ids=[EOS],
    )


async def collect(engine: VllmEngine, req: PreprocessedRequest) -> list[EngineOutput]:
    return [chunk async for chunk in engine.generate(req)]


def tokens_of(chunks: list[EngineOutput]) -> list[int]:
    return [t for c in chunks for t in c.token_ids]


def long_prompt(tokenizer, tag: str, n_items: int = 80) -> list[int]:
    text = f"[{tag}] " + " ".join(f"item {i} weighs {(i * 37) % 101} grams;" for i in range(n_items))
    return list(tokenizer(text, add_special_tokens=False).input_ids)


async def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def test_greedy_answer_matches_transformers(
    vllm_engine: VllmEngine, smollm2_dir: Path, tokenizer, question_ids
):
    reference = asyncio.create_task(asyncio.to_thread(hf_greedy, smollm2_dir, question_ids, N_COMPARE))
    chunks = await collect(
        vllm_engine, make_request(question_ids, "greedy", max_tokens=N_COMPARE, ignore_eos=True)
    )
    got = tokens_of(chunks)
    expected = await reference

    assert got == expected
    answer = tokenizer.decode(got[: got.index(EOS)] if EOS in got else got)
    assert "Paris" in answer
    assert chunks[0].prompt_tokens == len(question_ids)
    assert chunks[0].cached_tokens is not None
    assert chunks[-1].finish_reason == "length"
    assert all(c.finish_reason is None for c in chunks[:-1])


async def test_stops_at_eos(vllm_engine: VllmEngine, tokenizer, question_ids):
    chunks = await collect(vllm_engine, make_request(question_ids, "eos", max_tokens=64))
    got = tokens_of(chunks)
    assert got[-1] == EOS and EOS not in got[:-1]
    assert "Paris" in tokenizer.decode(got[:-1])
    assert chunks[-1].finish_reason == "stop"


async def test_max_tokens_gives_length(vllm_engine: VllmEngine, question_ids):
    chunks = await collect(vllm_engine, make_request(question_ids, "len", max_tokens=3))
    assert len(tokens_of(chunks)) == 3
    assert chunks[-1].finish_reason == "length"


async def test_stop_token_ids(vllm_engine: VllmEngine, question_ids):
    full = tokens_of(await collect(vllm_engine, make_request(question_ids, "full", max_tokens=12)))
    index = next(i for i in range(2, len(full)) if full[i] not in full[:i] and full[i] != EOS)
    stop_id = full[index]
    chunks = await collect(
        vllm_engine, make_request(question_ids, "stopid", max_tokens=12, stop_token_ids=[stop_id])
    )
    assert tokens_of(chunks) == full[: index + 1]
    assert chunks[-1].finish_reason == "stop"
    assert chunks[-1].stop_reason == stop_id


async def test_cancelling_the_task_aborts_in_vllm(vllm_engine: VllmEngine, tokenizer):
    req = make_request(long_prompt(tokenizer, "cancel", 20), "cancel", max_tokens=1000, ignore_eos=True)
    started = asyncio.Event()

    async def consume() -> None:
        async for chunk in vllm_engine.generate(req):
            if chunk.token_ids:
                started.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(started.wait(), 30)
    assert vllm_engine.num_requests_in_flight == 1
    assert vllm_engine.load_metrics().active_requests + vllm_engine.load_metrics().waiting_requests == 1
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert vllm_engine.num_requests_in_flight == 0
    metrics = vllm_engine.load_metrics()
    assert (metrics.active_requests, metrics.waiting_requests) == (0, 0)

    # The engine core dropped it too: after another request's last step it reports nothing running.
    await collect(vllm_engine, make_request(long_prompt(tokenizer, "after-cancel", 5), "after", max_tokens=2))
    await wait_for(lambda: vllm_engine.load_state.running == 0 and vllm_engine.load_state.waiting == 0)


async def test_closing_the_stream_aborts_in_vllm(vllm_engine: VllmEngine, tokenizer):
    req = make_request(long_prompt(tokenizer, "close", 20), "close", max_tokens=1000, ignore_eos=True)
    stream = vllm_engine.generate(req)
    async for chunk in stream:
        if chunk.token_ids:
            break
    assert vllm_engine.num_requests_in_flight == 1
    await stream.aclose()  # type: ignore[attr-defined]
    assert vllm_engine.num_requests_in_flight == 0
    await collect(vllm_engine, make_request(long_prompt(tokenizer, "after-close", 5), "after2", max_tokens=2))
    await wait_for(lambda: vllm_engine.load_state.running == 0)


async def test_repeated_long_prompt_hits_prefix_cache(vllm_engine: VllmEngine, tokenizer):
    prompt = long_prompt(tokenizer, "prefix")
    block = vllm_engine.kv_cache_block_size
    assert len(prompt) > 3 * block
    first = await collect(vllm_engine, make_request(prompt, "prefix-1", max_tokens=2))
    second = await collect(vllm_engine, make_request(prompt, "prefix-2", max_tokens=2))
    assert first[0].prompt_tokens == second[0].prompt_tokens == len(prompt)
    assert first[0].cached_tokens == 0
    assert (
        second[0].cached_tokens is not None and second[0].cached_tokens >= (len(prompt) // block - 1) * block
    )
    assert tokens_of(first) == tokens_of(second)
    await wait_for(lambda: vllm_engine.load_metrics().prefix_hit_rate > 0)


async def test_kv_events_carry_our_block_hashes(vllm_engine: VllmEngine, shared_vllm, tokenizer):
    prompt = long_prompt(tokenizer, "kv-events")
    block = vllm_engine.kv_cache_block_size
    expected = compute_block_hashes(prompt, block)
    assert len(expected) >= 2
    shared_vllm.kv_batches.clear()
    await collect(vllm_engine, make_request(prompt, "kv", max_tokens=1))

    def stored() -> list[KvStored]:
        return [e.data for b in shared_vllm.kv_batches for e in b.events if isinstance(e.data, KvStored)]

    await wait_for(lambda: sum(len(s.blocks) for s in stored()) >= len(expected))
    events = stored()
    blocks = [blk for s in events for blk in s.blocks]
    assert [blk.tokens_hash for blk in blocks[: len(expected)]] == expected
    assert events[0].parent_hash is None  # a new prefix starts at the root
    assert len({blk.block_hash for blk in blocks}) == len(blocks)
    assert all(0 <= blk.block_hash < 2**64 for blk in blocks)
    assert all(b.worker_id == vllm_engine.context.worker_id for b in shared_vllm.kv_batches)

    # Clearing the cache is announced once the engine steps again.
    assert await vllm_engine.clear_kv_blocks()
    await collect(vllm_engine, make_request(prompt[:40], "kv-after-clear", max_tokens=1))
    await wait_for(
        lambda: any(isinstance(e.data, KvCleared) for b in shared_vllm.kv_batches for e in b.events)
    )
    ids = [e.event_id for b in shared_vllm.kv_batches for e in b.events]
    assert ids == list(range(ids[0], ids[0] + len(ids)))


async def test_logprobs(vllm_engine: VllmEngine, question_ids):
    req = make_request(question_ids, "logprobs", max_tokens=4)
    req.output = OutputOptions(logprobs=3)
    chunks = await collect(vllm_engine, req)
    lps = [lp for c in chunks for lp in (c.logprobs or [])]
    assert [lp.token_id for lp in lps] == tokens_of(chunks)
    for lp in lps:
        assert lp.logprob <= 0.0
        assert len(lp.top) == 3
        assert lp.top[0] == (lp.token_id, pytest.approx(lp.logprob))  # greedy: the best token
        assert [v for _, v in lp.top] == sorted((v for _, v in lp.top), reverse=True)


async def test_prefill_only_request_returns_one_token(vllm_engine: VllmEngine, question_ids):
    req = make_request(question_ids, "prefill", max_tokens=50)
    req.prefill_only = True
    chunks = await collect(vllm_engine, req)
    assert len(tokens_of(chunks)) == 1
    assert chunks[-1].finish_reason == "length"


async def test_too_long_prompt_ends_with_an_error_chunk(vllm_engine: VllmEngine):
    chunks = await collect(vllm_engine, make_request([100] * 3000, "too-long", max_tokens=5))
    assert len(chunks) == 1
    assert chunks[0].finish_reason == "error"
    assert chunks[0].error is not None and "3000" in chunks[0].error  # vLLM names the prompt length
    assert vllm_engine.num_requests_in_flight == 0


async def test_model_card_values_and_load(vllm_engine: VllmEngine):
    assert vllm_engine.kv_cache_block_size == 128
    assert vllm_engine.context_length == 2048
    assert vllm_engine.max_num_seqs == 8
    assert vllm_engine.max_num_batched_tokens >= 2048
    assert vllm_engine.total_kv_blocks > 0
    load = vllm_engine.load_metrics()
    assert load.worker_id == vllm_engine.context.worker_id
    assert load.kv_total_blocks == vllm_engine.total_kv_blocks
    assert load.max_requests == 8
    assert (load.active_requests, load.waiting_requests, load.kv_active_blocks) == (0, 0, 0)


async def test_vllm_prometheus_metrics_on_our_registry(vllm_engine: VllmEngine):
    registry = CollectorRegistry()
    register_vllm_metrics(registry)
    text = generate_latest(registry).decode()
    for name in (
        "vllm:num_requests_running",
        "vllm:kv_cache_usage_perc",
        "vllm:prefix_cache_queries",
        "vllm:prompt_tokens",
    ):
        assert name in text


async def test_bad_model_path_fails_with_one_clear_error(tmp_path: Path):
    engine = VllmEngine(parse_args(["--model", str(tmp_path / "missing")]), EngineContext(worker_id=1))
    with pytest.raises(EngineStartError, match="cannot load model"):
        await engine.start()
    await engine.stop()


async def test_unsupported_architecture_fails_clearly(tmp_path: Path, smollm2_dir: Path):
    config = json.loads((smollm2_dir / "config.json").read_text())
    config["architectures"] = ["NoSuchModelForCausalLM"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    engine = VllmEngine(parse_args(["--model", str(tmp_path)]), EngineContext(worker_id=1))
    with pytest.raises(EngineStartError, match="not supported"):
        await engine.start()
