"""A worker's cached-block snapshot (``dynamo.worker.kv_publisher.CachedBlocks``) rebuilds exactly the index that
the worker's KV events built, and tells the router which event id comes next."""

from __future__ import annotations

from dynamo.llm.kv_events import (
    KvCleared,
    KvEvent,
    KvEventBatch,
    KvRemoved,
    KvStored,
    StoredBlock,
    compute_block_hashes,
)
from dynamo.router import KvIndexer, ResyncRequest
from dynamo.worker.kv_publisher import CachedBlocks

BLOCK = 4
WORKER = 0xABC


def stored(event_id: int, tokens: list[int], engine_hashes: list[int], parent: int | None) -> KvEvent:
    local = compute_block_hashes(tokens, BLOCK)
    blocks = [StoredBlock(h, t) for h, t in zip(engine_hashes, local, strict=True)]
    return KvEvent(event_id, KvStored(blocks=blocks, parent_hash=parent))


TRUNK = list(range(100, 112))  # three blocks, engine hashes 1, 2, 3
BRANCH = list(range(200, 208))  # two blocks after the trunk's second block, engine hashes 4, 5
EVENTS = [
    stored(0, TRUNK, [1, 2, 3], None),
    stored(1, BRANCH, [4, 5], 2),
    KvEvent(2, KvRemoved(block_hashes=[3])),
    stored(3, list(range(300, 304)), [7], 99),  # parent never stored: unreachable
    stored(4, list(range(400, 404)), [8], None),
]


def prompts() -> list[list[int]]:
    return [TRUNK, TRUNK[:8] + BRANCH, list(range(400, 404)), list(range(300, 304)), [1, 2, 3, 4]]


def scores(index: KvIndexer) -> list[dict[int, int]]:
    return [index.find_matches(compute_block_hashes(p, BLOCK)).scores for p in prompts()]


def test_snapshot_rebuilds_the_index_the_events_built():
    cached = CachedBlocks()
    live = KvIndexer()
    for event in EVENTS:
        cached.apply(event)
    live.apply(KvEventBatch(WORKER, EVENTS))

    restarted = KvIndexer()
    restarted.resync(cached.snapshot(WORKER, 0))

    assert scores(restarted) == scores(live)
    assert scores(restarted)[:3] == [{WORKER: 2}, {WORKER: 4}, {WORKER: 1}]
    assert restarted.tree_size(WORKER) == 5  # the unreachable block is left out
    assert restarted.last_event_id(WORKER) == 4


def test_after_a_snapshot_the_next_id_is_contiguous_and_a_jump_asks_for_a_replay():
    asked: list[ResyncRequest] = []
    index = KvIndexer(asked.append)
    index.resync(CachedBlocks().snapshot(WORKER, 0))  # a worker that has published nothing yet
    index.apply(KvEventBatch(WORKER, [EVENTS[0]]))
    assert asked == [] and index.last_event_id(WORKER) == 0
    index.apply(KvEventBatch(WORKER, [KvEvent(5, KvCleared())]))  # ids 1..4 were lost
    assert [(r.worker, r.after_event_id) for r in asked] == [(WORKER, 0)]


def test_cleared_empties_the_snapshot():
    cached = CachedBlocks()
    for event in [*EVENTS, KvEvent(5, KvCleared())]:
        cached.apply(event)
    snapshot = cached.snapshot(WORKER, 0)
    assert [type(e.data) for e in snapshot.events] == [KvCleared]
    assert snapshot.events[0].event_id == 5
