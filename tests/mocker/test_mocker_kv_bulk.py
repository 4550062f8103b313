"""The KV block manager's run-at-a-time bookkeeping (``KvManager``, ``BlockLru``) against the
per-block model it replaced: the same operations give the same events, reference counts, cached
set and LRU order, for random workloads (shared prefixes, partial hits, eviction, preemption-like
partial releases, decode blocks filling up, clears) and for the cases the bulk paths special-case;
with blocks held in chunks (small ones here, so short chains span several) and without."""

from __future__ import annotations

import random
from collections import OrderedDict

import pytest

from dynamo.llm.kv_events import (
    KvEventBatch,
    KvRemoved,
    KvStored,
    StoredBlock,
    compute_block_hashes,
    compute_sequence_hashes,
)
from dynamo.mocker.block_lru import BlockLru
from dynamo.mocker.event_log import KvEventLog
from dynamo.mocker.kv_manager import KvManager

BS = 4


class PerBlockKv:
    """The block manager as it was before the bulk paths (one Python step per block): the model."""

    def __init__(self, num_blocks: int, events: KvEventLog) -> None:
        self.num_blocks = num_blocks
        self.events = events
        self.active: dict[int, int] = {}
        self.inactive: OrderedDict[int, None] = OrderedDict()
        self.meta: dict[int, tuple[int, int | None, int]] = {}
        self.anonymous = 0

    @property
    def num_free(self) -> int:
        return self.num_blocks - len(self.active) - self.anonymous - len(self.inactive)

    def cached_prefix(self, hashes: list[int]) -> int:
        n = 0
        for h in hashes:
            if h not in self.active and h not in self.inactive:
                break
            n += 1
        return n

    def blocks_to_activate(self, hashes: list[int], anonymous: int) -> int:
        return sum(1 for h in hashes if h not in self.active) + anonymous

    def acquire(self, hashes: list[int], local: list[int], anonymous: int) -> bool:
        active, inactive = self.active, self.inactive
        reactivate = sum(1 for h in hashes if h not in active and h in inactive)
        new = sum(1 for h in hashes if h not in active and h not in inactive)
        if new + anonymous > self.num_free + len(inactive) - reactivate:
            return False
        for h in hashes:
            if h in inactive:
                del inactive[h]
                active[h] = 0
        evicted: list[int] = []
        run: list[StoredBlock] = []
        run_parent: int | None = None
        parent: int | None = None
        for i, h in enumerate(hashes):
            count = active.get(h)
            if count is None:
                if self.num_free <= 0:
                    evicted.append(self._evict_one())
                active[h] = 1
                self.meta[h] = (local[i], parent, i)
                if not run:
                    run_parent = parent
                run.append(StoredBlock(h, local[i]))
            else:
                active[h] = count + 1
                if run:
                    self._flush(evicted, run_parent, run)
                    evicted, run = [], []
            parent = h
        if anonymous:
            for _ in range(anonymous - self.num_free):
                evicted.append(self._evict_one())
            self.anonymous += anonymous
        self._flush(evicted, run_parent, run)
        return True

    def _flush(self, evicted: list[int], parent: int | None, run: list[StoredBlock]) -> None:
        if evicted:
            self.events.removed(evicted)
        if run:
            self.events.stored(parent, run)

    def _evict_one(self) -> int:
        h, _ = self.inactive.popitem(last=False)
        del self.meta[h]
        return h

    def release(self, hashes: list[int], anonymous: int) -> None:
        for h in reversed(hashes):
            count = self.active[h] - 1
            if count:
                self.active[h] = count
            else:
                del self.active[h]
                self.inactive[h] = None
        self.anonymous -= anonymous

    def allocate_anonymous(self) -> bool:
        if self.num_free <= 0:
            if not self.inactive:
                return False
            self.events.removed([self._evict_one()])
        self.anonymous += 1
        return True

    def promote(self, h: int, local: int, parent: int | None, depth: int) -> None:
        self.anonymous -= 1
        count = self.active.get(h)
        if count is not None:
            self.active[h] = count + 1
            return
        if h in self.inactive:
            del self.inactive[h]
            self.active[h] = 1
            return
        self.active[h] = 1
        self.meta[h] = (local, parent, depth)
        self.events.stored(parent, [StoredBlock(h, local)])


def make(
    num_blocks: int, chunk_blocks: int = 2
) -> tuple[KvManager, PerBlockKv, list[KvEventBatch], list[KvEventBatch]]:
    got: list[KvEventBatch] = []
    want: list[KvEventBatch] = []
    kv = KvManager(num_blocks, BS, KvEventLog(3, got.append), chunk_blocks=chunk_blocks)
    model = PerBlockKv(num_blocks, KvEventLog(3, want.append))
    return kv, model, got, want


def assert_same(kv: KvManager, model: PerBlockKv, got: list[KvEventBatch], want: list[KvEventBatch]) -> None:
    kv.events.flush()
    model.events.flush()
    assert got == want
    assert kv.num_active == len(model.active) + model.anonymous
    assert kv.num_inactive == len(model.inactive) and kv.num_free == model.num_free
    assert {h: kv.ref_count(h) for h in model.active} == model.active
    assert list(kv._inactive) == list(model.inactive)  # the LRU order itself
    assert {h: (b.local, b.parent, b.depth) for h, b in kv._meta.items()} == model.meta


def chain_of(tokens: list[int]) -> tuple[list[int], list[int]]:
    local = compute_block_hashes(tokens, BS)
    return compute_sequence_hashes(local), local


@pytest.mark.parametrize("chunk_blocks", [0, 2, 3])
@pytest.mark.parametrize("seed", range(12))
def test_random_workloads_match_the_per_block_model(seed: int, chunk_blocks: int) -> None:
    rng = random.Random(seed)
    kv, model, got, want = make(rng.choice([24, 40, 64, 200]), chunk_blocks)
    prefixes = [[rng.randrange(1000) for _ in range(BS * rng.randrange(1, 6))] for _ in range(3)]
    # (hashes, local, anonymous, how many of the hashes acquire took) held
    running: list[tuple[list[int], list[int], int, int]] = []
    for _ in range(300):
        op = rng.random()
        if op < 0.45:
            prefix = rng.choice(prefixes) if rng.random() < 0.7 else []
            tokens = prefix + [rng.randrange(1000) for _ in range(BS * rng.randrange(0, 8))]
            hashes, local = chain_of(tokens)
            if rng.random() < 0.2 and running:  # the same chain again (all cached / all active)
                hashes, local, _, _ = rng.choice(running)
            anonymous = rng.randrange(0, 3)
            assert kv.cached_prefix(hashes) == model.cached_prefix(hashes)
            assert kv.blocks_to_activate(hashes, anonymous) == model.blocks_to_activate(hashes, anonymous)
            ok = kv.acquire(hashes, local, anonymous)
            assert ok == model.acquire(hashes, local, anonymous)
            if ok:
                running.append((hashes, local, anonymous, len(hashes)))
        elif op < 0.8 and running:
            hashes, local, anonymous, acquired = running.pop(rng.randrange(len(running)))
            kv.release(hashes, anonymous, acquired)
            model.release(hashes, anonymous)
        elif op < 0.9 and running:
            # a sequence's partial block fills up: promote it to a full block of the chain
            i = rng.randrange(len(running))
            hashes, local, anonymous, acquired = running[i]
            if anonymous:
                loc = rng.randrange(1 << 60)
                parent = hashes[-1] if hashes else None
                h = compute_sequence_hashes([parent, loc])[1] if parent is not None else loc
                kv.promote(h, loc, parent, len(hashes))
                model.promote(h, loc, parent, len(hashes))
                running[i] = ([*hashes, h], [*local, loc], anonymous - 1, acquired)
        elif op < 0.97:
            ok = kv.allocate_anonymous()
            assert ok == model.allocate_anonymous()
            if ok:
                if running:
                    i = rng.randrange(len(running))
                    hashes, local, anonymous, acquired = running[i]
                    running[i] = (hashes, local, anonymous + 1, acquired)
                else:
                    kv.release([], 1)
                    model.release([], 1)
        else:
            kv.clear()
            model.events.cleared()
            for h in list(model.inactive):
                del model.meta[h]
            model.inactive.clear()
            ordered = sorted(model.active, key=lambda h: model.meta[h][2])
            for h in ordered:
                model.events.stored(model.meta[h][1], [StoredBlock(h, model.meta[h][0])])
        assert_same(kv, model, got, want)


def test_a_long_release_is_evicted_tail_first_across_runs() -> None:
    kv, model, got, want = make(10)
    a, la = chain_of(list(range(24)))  # 6 blocks
    b, lb = chain_of(list(range(100, 112)))  # 3 blocks
    for m in (kv, model):
        m.acquire(a, la, 0)
        m.acquire(b, lb, 0)
        m.release(a, 0)  # LRU: a5 .. a0
        m.release(b, 0)  # then b2 .. b0
    c, lc = chain_of(list(range(200, 228)))  # 7 new blocks into 1 free slot: evict 6
    assert kv.acquire(c, lc, 0) and model.acquire(c, lc, 0)
    assert_same(kv, model, got, want)
    removed = [e.data for b_ in got for e in b_.events if isinstance(e.data, KvRemoved)]
    assert removed[-1].block_hashes == a[::-1]  # the whole of a, its tail first; b is kept
    assert all(kv.is_cached(h) for h in b)


def test_a_partially_cached_prefix_stores_only_the_new_blocks_after_it() -> None:
    kv, model, got, want = make(32)
    shared = list(range(16))  # 4 blocks
    a, la = chain_of(shared)
    for m in (kv, model):
        m.acquire(a, la, 0)
        m.release(a, 0)
    b, lb = chain_of(shared[:8] + list(range(50, 62)))  # 2 blocks cached, 3 new
    assert kv.acquire(b, lb, 1) and model.acquire(b, lb, 1)
    assert_same(kv, model, got, want)
    last = got[-1].events[-1].data
    assert last == KvStored(
        blocks=[StoredBlock(h, t) for h, t in zip(b[2:], lb[2:], strict=True)], parent_hash=b[1]
    )
    assert [kv.ref_count(h) for h in b] == [1] * 5
    assert list(kv._inactive) == [a[3], a[2]]  # the unshared tail of a stays, in its order


def test_shared_blocks_release_in_bulk_keeps_counts_and_order() -> None:
    kv, model, got, want = make(32)
    a, la = chain_of(list(range(20)))  # 5 blocks
    for m in (kv, model):
        m.acquire(a, la, 0)
        m.acquire(a[:3], la[:3], 0)  # a second user of the first three
        m.release(a, 0)  # mixed counts: a4, a3 become inactive, a0-a2 stay active
    assert_same(kv, model, got, want)
    assert [kv.ref_count(h) for h in a] == [1, 1, 1, 0, 0] and list(kv._inactive) == [a[4], a[3]]
    for m in (kv, model):
        m.release(a[:3], 0)
    assert_same(kv, model, got, want)
    assert list(kv._inactive) == [a[4], a[3], a[2], a[1], a[0]]


def test_a_cached_block_after_a_miss_and_repeated_hashes_take_the_per_block_path() -> None:
    kv, model, got, want = make(32)
    # Hand-made hash lists (not chains): block 2 cached while block 1 is not; a repeated hash.
    for m in (kv, model):
        m.acquire([11, 12, 13], [1, 2, 3], 0)
        m.release([11, 12, 13], 0)
    for hashes in ([11, 99, 13, 98], [97, 96, 97]):
        local = [h + 1000 for h in hashes]
        assert kv.acquire(hashes, local, 0) and model.acquire(hashes, local, 0)
        assert_same(kv, model, got, want)
    for m in (kv, model):
        m.release([97, 96, 97], 0)
        m.release([11, 99, 13, 98], 0)
    assert_same(kv, model, got, want)


def test_no_room_changes_nothing_in_bulk() -> None:
    kv, model, got, want = make(6)
    a, la = chain_of(list(range(16)))
    assert kv.acquire(a, la, 1) and model.acquire(a, la, 1)
    b, lb = chain_of(list(range(100, 108)))
    assert not kv.acquire(b, lb, 0) and not model.acquire(b, lb, 0)
    assert_same(kv, model, got, want)


def test_block_lru_skips_stale_entries_and_keeps_push_order() -> None:
    lru = BlockLru()
    lru.push([1, 2, 3, 4])
    lru.reactivate([2])  # a prefix hit takes 2 back
    assert list(lru) == [1, 3, 4] and len(lru) == 3
    lru.push([5, 2])  # 2 released again: now newer than 5
    assert list(lru) == [1, 3, 4, 5, 2] and len(lru) == 5
    lru.reactivate([2, 4])
    lru.push([2])  # 2 has two stale entries now
    assert list(lru) == [1, 3, 5, 2]
    assert lru.pop_oldest(2) == [1, 3]
    assert lru.pop_oldest(2) == [5, 2]  # the stale entries of 2 and 4 were skipped
    assert len(lru) == 0 and lru._stale == {}
    with pytest.raises(ValueError):
        lru.pop_oldest(1)


def test_block_lru_compacts_without_changing_order() -> None:
    lru = BlockLru()
    keep = list(range(1_000_000, 1_000_010))
    lru.push(keep)
    for i in range(3000):  # the same blocks reused and released again: stale entries pile up
        lru.push([i % 7])
        lru.reactivate([i % 7])
    lru.push(list(range(7)))
    assert len(lru._queue) - lru._head <= 2 * len(lru) + 4096 + 7
    order = list(lru)
    assert order == [*keep, *range(7)]
    assert lru.pop_oldest(len(lru)) == order
    big = list(range(10_000))
    lru.push(big)
    assert lru.pop_oldest(9_000) == big[:9_000] and lru._head < 9_000  # read front trimmed
    assert lru.pop_oldest(1_000) == big[9_000:]


def test_a_chunk_repeated_in_one_list_and_shared_later_counts_like_its_blocks() -> None:
    kv, model, got, want = make(16, chunk_blocks=2)
    twice, once = [41, 42, 41, 42, 43], [41, 42]  # hand-made: the chunk (41, 42) twice, then once
    for hashes in (twice, once):
        local = [h + 1000 for h in hashes]
        assert kv.acquire(hashes, local, 0) and model.acquire(hashes, local, 0)
        assert_same(kv, model, got, want)
    assert kv.ref_count(41) == 3 and kv.ref_count(43) == 1
    for hashes in (once, twice):
        kv.release(hashes, 0)
        model.release(hashes, 0)
        assert_same(kv, model, got, want)
    assert list(kv._inactive) == [43, 42, 41] and not kv._chunks
