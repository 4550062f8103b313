"""The mocker worker answers a router's snapshot from its own block manager
(``MockerWorkerEngine.kv_block_source``), so the KV event relay keeps no copy of its blocks: the
answer must equal what the relay's ``CachedBlocks`` would have built from the same events,
after stores, prefix hits and evictions."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from dynamo.llm.kv_events import KvEventBatch, KvStored
from dynamo.llm.protocols import PreprocessedRequest, StopConditions
from dynamo.mocker.worker import MockerWorkerEngine
from dynamo.runtime import EndpointId
from dynamo.worker import EngineContext
from dynamo.worker.kv_publisher import CachedBlocks, KvEventPublisher

pytestmark = pytest.mark.timeout(60)

WORKER = 0x5A


def blocks_of(snapshot: KvEventBatch) -> tuple[int, set[tuple[int, int | None, int]]]:
    """(event id, {(block, parent, tokens hash)}) of a snapshot, whatever its runs' grouping."""
    out: set[tuple[int, int | None, int]] = set()
    for event in snapshot.events[1:]:
        data = event.data
        assert isinstance(data, KvStored)
        parent = data.parent_hash
        for block in data.blocks:
            out.add((block.block_hash, parent, block.tokens_hash))
            parent = block.block_hash
    return snapshot.events[0].event_id, out


async def test_the_engine_snapshot_equals_the_one_built_from_its_events(smollm2_tokenizer_dir: Path):
    config = MockerWorkerEngine.parse_config(
        [
            "--model-path",
            str(smollm2_tokenizer_dir),
            "--speedup-ratio",
            "1000",
            "--block-size",
            "4",
            "--num-gpu-blocks-override",
            "120",  # small: later prompts evict earlier ones
        ]
    )
    from_events = CachedBlocks()
    publisher = KvEventPublisher(None, EndpointId("test", "mocker", "generate"))  # type: ignore[arg-type]

    def sink(batch: KvEventBatch) -> None:
        publisher.sink(batch)
        for event in batch.events:
            from_events.apply(event)

    engine = MockerWorkerEngine(config, EngineContext(worker_id=WORKER, kv_event_sink=sink))
    source = engine.kv_block_source()
    publisher.use_block_source(source)
    assert blocks_of(publisher.snapshot(WORKER)) == (-1, set())  # before start: nothing cached
    await engine.start()
    try:
        rng = random.Random(7)
        shared = [rng.randrange(100, 20000) for _ in range(40)]
        for i in range(12):
            tail = [rng.randrange(100, 20000) for _ in range(rng.randrange(5, 60))]
            prompt = (shared if i % 2 else []) + tail
            req = PreprocessedRequest(
                request_id=f"r{i}", model="mock", token_ids=prompt, stop=StopConditions(max_tokens=6)
            )
            outputs = [o async for o in engine.generate(req)]
            assert outputs[-1].finish_reason == "length"
            got = publisher.snapshot(WORKER, 0)
            want = from_events.snapshot(WORKER, 0)
            assert blocks_of(got) == blocks_of(want), i
        assert engine.engine is not None and engine.engine.kv.num_free < 20  # evictions happened
        assert publisher.cached == {}  # the relay kept no copy
        assert blocks_of(publisher.snapshot(WORKER, 1)) == (-1, set())  # a rank it does not run
    finally:
        await engine.stop()
