"""KV block manager: reference counting, the inactive LRU (prefix hits, eviction) and its events."""

from dynamo.llm.kv_events import (
    KvCleared,
    KvEventBatch,
    KvRemoved,
    KvStored,
    StoredBlock,
    compute_block_hashes,
    compute_sequence_hashes,
)
from dynamo.mocker.event_log import KvEventLog
from dynamo.mocker.kv_manager import KvManager

BS = 4


def blocks(*token_blocks: list[int]) -> tuple[list[int], list[int]]:
    """(sequence hashes, local hashes) of a prompt made of the given full blocks."""
    tokens = [t for b in token_blocks for t in b]
    local = compute_block_hashes(tokens, BS)
    return compute_sequence_hashes(local), local


def make(num_blocks: int, watermark: float = 0.0) -> tuple[KvManager, list[KvEventBatch]]:
    batches: list[KvEventBatch] = []
    log = KvEventLog(worker_id=7, sink=batches.append, dp_rank=1)
    return KvManager(num_blocks, BS, log, watermark), batches


def events(kv: KvManager, batches: list[KvEventBatch]) -> list:
    kv.events.flush()
    out = [e for b in batches for e in b.events]
    batches.clear()
    return out


A, B, C, D = [1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12], [13, 14, 15, 16]


def test_reference_counting_and_inactive_cache() -> None:
    kv, _ = make(8)
    h, loc = blocks(A, B)
    assert kv.acquire(h, loc, 1)
    assert kv.acquire(h, loc, 1)  # a second sequence shares the full blocks
    assert kv.num_active == 2 + 2  # two shared full blocks + one anonymous block each
    assert [kv.ref_count(x) for x in h] == [2, 2]
    kv.release(h, 1)
    assert [kv.ref_count(x) for x in h] == [1, 1] and kv.num_inactive == 0
    kv.release(h, 1)
    # unreferenced full blocks stay cached (inactive); anonymous blocks are gone
    assert kv.num_active == 0 and kv.num_inactive == 2 and kv.num_free == 6
    assert all(kv.is_cached(x) for x in h)
    assert kv.cached_prefix(h) == 2


def test_prefix_hit_reuses_blocks_and_stops_at_first_miss() -> None:
    kv, batches = make(8)
    h_ab, loc_ab = blocks(A, B)
    kv.acquire(h_ab, loc_ab, 0)
    kv.release(h_ab, 0)
    h_abc, loc_abc = blocks(A, B, C)
    h_xbc, _ = blocks(D, B, C)
    assert kv.cached_prefix(h_abc) == 2
    assert kv.cached_prefix(h_xbc) == 0  # chained hashes: same block after another prefix is a miss
    events(kv, batches)
    assert kv.acquire(h_abc, loc_abc, 0)
    ev = events(kv, batches)
    # only the new block is stored, chained to its cached parent
    assert [e.data for e in ev] == [
        KvStored(blocks=[StoredBlock(h_abc[2], loc_abc[2])], parent_hash=h_abc[1])
    ]
    assert kv.num_inactive == 0 and kv.num_active == 3


def test_lru_eviction_takes_least_recently_used_tail_first() -> None:
    kv, batches = make(4)
    h_ab, loc_ab = blocks(A, B)
    h_c, loc_c = blocks(C)
    kv.acquire(h_ab, loc_ab, 0)
    kv.release(h_ab, 0)  # inactive order: B (tail) then A
    kv.acquire(h_c, loc_c, 0)
    kv.release(h_c, 0)  # C most recent
    events(kv, batches)
    # 3 new blocks in a cache of 4 holding 3 inactive: one eviction, the LRU one = the tail of A,B
    h_d, loc_d = blocks(D)
    kv.acquire(h_d, loc_d, 1)
    ev = events(kv, batches)
    assert isinstance(ev[0].data, KvRemoved) and ev[0].data.block_hashes == [h_ab[1]]
    assert isinstance(ev[1].data, KvStored) and ev[1].data.parent_hash is None
    assert kv.cached_prefix(h_ab) == 1 and kv.is_cached(h_c[0])
    # touching A again makes it more recent than C: C goes next
    kv.acquire(h_ab[:1], loc_ab[:1], 0)
    kv.release(h_ab[:1], 0)
    assert kv.allocate_anonymous()
    assert not kv.is_cached(h_c[0]) and kv.is_cached(h_ab[0])
    assert events(kv, batches)[0].data == KvRemoved(block_hashes=[h_c[0]])


def test_acquire_fails_without_room_and_changes_nothing() -> None:
    kv, batches = make(3)
    h, loc = blocks(A, B)
    assert kv.acquire(h, loc, 1)
    events(kv, batches)
    h2, loc2 = blocks(C)
    assert not kv.acquire(h2, loc2, 0)
    assert not kv.allocate_anonymous()
    assert kv.num_active == 3 and events(kv, batches) == []


def test_admission_watermark() -> None:
    kv, _ = make(100, watermark=0.1)
    assert kv.can_admit(90) and not kv.can_admit(91)
    h, loc = blocks(A, B)
    kv.acquire(h, loc, 0)
    assert kv.blocks_to_activate(h, 1) == 1  # blocks already active are shared
    assert kv.can_admit(88) and not kv.can_admit(89)


def test_partial_block_promoted_with_parent_and_dedup() -> None:
    kv, batches = make(8)
    h, loc = blocks(A, B, C)
    kv.acquire(h[:2], loc[:2], 1)  # A, B full + a partial third block
    events(kv, batches)
    kv.promote(h[2], loc[2], h[1], 2)
    assert kv.num_active == 3 and kv.ref_count(h[2]) == 1
    assert [e.data for e in events(kv, batches)] == [
        KvStored(blocks=[StoredBlock(h[2], loc[2])], parent_hash=h[1])
    ]
    # another sequence filling an identical block shares it (frees its slot, no event)
    kv.acquire(h[:2], loc[:2], 1)
    kv.promote(h[2], loc[2], h[1], 2)
    assert kv.ref_count(h[2]) == 2 and kv.num_active == 3
    assert events(kv, batches) == []


def test_event_ids_batches_and_history() -> None:
    kv, batches = make(64)
    h, loc = blocks(A, B)
    kv.acquire(h, loc, 0)
    kv.events.flush()
    h2, loc2 = blocks(A, B, C, D)
    kv.acquire(h2, loc2, 0)
    kv.events.flush()
    assert len(batches) == 2
    assert all(b.worker_id == 7 and b.dp_rank == 1 for b in batches)
    ids = [e.event_id for b in batches for e in b.events]
    assert ids == [0, 1]
    assert batches[1].events[0].data.parent_hash == h[1]
    assert [b.block_hash for b in batches[1].events[0].data.blocks] == h2[2:]
    assert kv.events.since(-1) is not None and [e.event_id for e in kv.events.since(-1)] == [0, 1]
    assert [e.event_id for e in kv.events.since(0)] == [1]
    assert kv.events.since(1) == []


def test_event_history_is_bounded() -> None:
    log = KvEventLog(worker_id=1, sink=None, history=3)
    for i in range(5):
        log.removed([i])
        log.flush()
    assert log.last_event_id == 4
    assert log.since(0) is None  # event 1 is forgotten: resync from the block set
    assert [e.event_id for e in log.since(1)] == [2, 3, 4]


def test_clear_and_snapshot() -> None:
    kv, batches = make(16)
    h_ab, loc_ab = blocks(A, B)
    h_abc, loc_abc = blocks(A, B, C)
    kv.acquire(h_abc, loc_abc, 0)
    kv.release(h_abc[2:], 0)  # C inactive, A and B still active
    snap = kv.snapshot()
    assert snap.worker_id == 7 and snap.last_event_id == kv.events.last_event_id
    assert [(s.blocks[0].block_hash, s.parent_hash) for s in snap.blocks] == [
        (h_abc[0], None),
        (h_abc[1], h_abc[0]),
        (h_abc[2], h_abc[1]),
    ]
    events(kv, batches)
    kv.clear()
    ev = [e.data for e in events(kv, batches)]
    assert ev[0] == KvCleared()
    assert ev[1:] == [
        KvStored(blocks=[StoredBlock(h_ab[0], loc_ab[0]), StoredBlock(h_ab[1], loc_ab[1])], parent_hash=None)
    ]
    assert not kv.is_cached(h_abc[2]) and kv.num_inactive == 0
