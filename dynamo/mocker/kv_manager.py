"""The mocker's KV block manager: which blocks the simulated GPU holds, shared and cached.

Journey: engine stage. The scheduler asks it whether a sequence fits (admission), acquires and
releases a sequence's blocks, and grows sequences block by block while they decode; every change
to the set of cached blocks becomes a KV event for the router (via ``KvEventLog``).

Model (after the reference mocker and vLLM's block pool):

- A *full* block is keyed by its sequence (chained) hash and reference-counted while sequences use
  it. At zero it moves to the *inactive* LRU: still cached, so a later prompt with the same prefix
  hits it, until a new block needs its slot and the least recently used inactive block is evicted.
- Blocks that are not (yet) hashed — the partial last block of a sequence, and every block when
  prefix caching is off — are *anonymous*: counted, private to one sequence, freed on release.
- Capacity: active full + anonymous + inactive <= ``num_blocks``.

Events use the chained sequence hash as the engine block hash and the block's local token hash
as ``tokens_hash``; ``stored`` carries the parent's engine hash.

Chunks: a sequence holds each whole run of ``chunk_blocks`` blocks from its start (a *chunk*,
keyed by the tuple of its hashes) as one reference on the chunk, and only the rest block by block.
A block's count in ``_active`` is its direct references plus one per held chunk that contains it,
so it changes only when a chunk's count goes 0 <-> 1: the many sequences of a shared prompt take
and drop its chunks with one dict operation each, not one per block. ``release`` must be given
what ``acquire`` took (``acquired``: how many of the hashes, the rest promoted since).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable
from itertools import chain, compress, filterfalse, islice, repeat, takewhile
from operator import not_

import msgspec

from dynamo.llm.kv_events import KvStored, StoredBlock
from dynamo.mocker.block_lru import BlockLru
from dynamo.mocker.event_log import KvEventLog

logger = logging.getLogger(__name__)

_plus_one = (1).__add__
_minus_one = (-1).__add__
_is_one = (1).__eq__

CHUNK_BLOCKS = 32  # blocks a chunk: a 32k-token prompt of 16-token blocks is ~63 chunks


class KvBlockSnapshot(msgspec.Struct):
    """Every cached block of a worker, as ``stored`` events ordered parents first (replay them
    after a ``cleared`` to rebuild the worker's part of a router index), taken at ``last_event_id``."""

    worker_id: int
    dp_rank: int
    last_event_id: int
    blocks: list[KvStored]


class BlockMeta(msgspec.Struct, array_like=True, gc=False):
    """What the router needs to know of a cached full block besides its hash. Not tracked by the
    garbage collector (ints only): a long prompt makes thousands at once, and tracked objects
    (tuples) would set off a collection every ~700 of them."""

    local: int  # the block's local (tokens) hash
    parent: int | None  # the previous block's sequence hash
    depth: int  # position in its sequence


class KvManager:
    """Reference-counted block pool with an LRU of cached inactive blocks."""

    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        events: KvEventLog,
        watermark: float = 0.0,
        chunk_blocks: int = CHUNK_BLOCKS,
    ) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.events = events
        # Admission keeps this many blocks free for running sequences to grow into.
        self.admission_limit = (1.0 - watermark) * num_blocks
        self._active: dict[int, int] = {}  # seq hash -> direct references + held chunks with it
        self.chunk_blocks = chunk_blocks  # 0: every block by itself
        self._chunks: dict[tuple[int, ...], int] = {}  # held chunk -> references
        # The order of the cached blocks nobody uses (inactive: in ``_meta``, not in ``_active``),
        # least recently released first.
        self._inactive = BlockLru()
        # seq hash -> BlockMeta of every cached full block (its keys are exactly the active full
        # blocks plus the inactive ones)
        self._meta: dict[int, BlockMeta] = {}
        self._anonymous = 0

    # ----- accounting ---------------------------------------------------------------------------

    @property
    def num_active(self) -> int:
        """Blocks in use by sequences (full and anonymous)."""
        return len(self._active) + self._anonymous

    @property
    def num_inactive(self) -> int:
        """Cached blocks no sequence uses (evictable)."""
        return len(self._inactive)

    @property
    def num_free(self) -> int:
        """Slots holding nothing."""
        return self.num_blocks - len(self._active) - self._anonymous - len(self._inactive)

    def ref_count(self, seq_hash: int) -> int:
        """References to a full block (0 if inactive or absent); looks at every held chunk (for
        tests and debugging)."""
        n = self._active.get(seq_hash, 0)
        for chunk, count in self._chunks.items():
            n += (count - 1) * chunk.count(seq_hash)
        return n

    def is_cached(self, seq_hash: int) -> bool:
        """Whether a full block is held, active or inactive."""
        return seq_hash in self._meta

    def cached_prefix(self, seq_hashes: list[int]) -> int:
        """How many leading blocks of ``seq_hashes`` are cached (a prefix-cache hit)."""
        if not seq_hashes or seq_hashes[0] not in self._meta:
            return 0
        start = self._held_start(seq_hashes)  # blocks of held chunks are cached
        return start + self._cached_lead(islice(seq_hashes, start, None) if start else seq_hashes)

    def _cached_lead(self, seq_hashes: Iterable[int]) -> int:
        """How many leading blocks of ``seq_hashes`` are cached (active or inactive)."""
        return len(list(takewhile(self._meta.__contains__, seq_hashes)))

    def blocks_to_activate(self, seq_hashes: list[int], num_anonymous: int) -> int:
        """How many more blocks would be in use after acquiring ``seq_hashes`` plus
        ``num_anonymous`` anonymous blocks (blocks some sequence already uses are shared)."""
        start = self._held_start(seq_hashes)  # blocks of held chunks are in use
        rest = seq_hashes[start:] if start else seq_hashes
        shared = len(list(filter(self._active.__contains__, rest)))
        return len(rest) - shared + num_anonymous

    def _chunk_keys(self, seq_hashes: list[int], num_blocks: int | None = None) -> list[tuple[int, ...]]:
        """The whole chunks among the first ``num_blocks`` (default: all) of ``seq_hashes``."""
        c = self.chunk_blocks
        if not c:
            return []
        end = (len(seq_hashes) if num_blocks is None else num_blocks) // c * c
        return list(
            map(tuple, map(seq_hashes.__getitem__, map(slice, range(0, end, c), range(c, end + 1, c))))
        )

    def _held_start(self, seq_hashes: list[int]) -> int:
        """How many leading blocks of ``seq_hashes`` are in chunks some sequence holds."""
        if not self._chunks or not seq_hashes or seq_hashes[0] not in self._active:
            return 0  # (a held first chunk keeps the first block in use)
        return self._held_lead(self._chunk_keys(seq_hashes)) * self.chunk_blocks

    def _held_lead(self, keys: list[tuple[int, ...]]) -> int:
        """How many of the leading chunks ``keys`` some sequence holds (all their blocks are active)."""
        chunks = self._chunks
        if not keys or keys[0] not in chunks:
            return 0
        return len(list(takewhile(chunks.__contains__, keys)))

    def can_admit(self, new_active_blocks: int) -> bool:
        """Admission check: active + new blocks within capacity minus the watermark."""
        return self.num_active + new_active_blocks <= self.admission_limit

    # ----- sequence operations ------------------------------------------------------------------
    #
    # A sequence's blocks are handled a run at a time: C-level passes (``map``, ``zip``, dict
    # ``update``) over the whole hash list instead of a Python statement per block, which for a
    # 32k-token prompt (2,000 blocks of 16) was most of the mocker's CPU per request. Runs that
    # the bulk path does not cover exactly (a cached block after a miss, a hash twice in one
    # sequence) take the per-block path, which defines the semantics.

    def acquire(self, seq_hashes: list[int], local_hashes: list[int], num_anonymous: int) -> bool:
        """Take references on a sequence's full blocks (in order, reusing cached ones) and
        allocate ``num_anonymous`` anonymous blocks. All or nothing: returns False, changing
        nothing, when there is no room even after evicting every other inactive block.

        Events: the evicted blocks (``removed``), then each run of new blocks (``stored``, chained
        to the block before it); a cached block between two runs emits what came before it."""
        keys = self._chunk_keys(seq_hashes)
        lead = self._held_lead(keys)
        start = lead * self.chunk_blocks
        if start:
            # The leading chunks some sequence holds: in use, cached, nothing to store; the blocks
            # after them are taken one by one, as if the chunks' blocks had been (same events).
            hashes, local, parent = seq_hashes[start:], local_hashes[start:], seq_hashes[start - 1]
        else:
            hashes, local, parent = seq_hashes, local_hashes, None
        if not self._acquire_blocks(hashes, local, num_anonymous, parent, start):
            return False
        chunks = self._chunks
        if lead:
            for key in keys[:lead]:
                chunks[key] += 1
        fresh = keys[lead:] if lead else keys
        if chunks.keys().isdisjoint(fresh):
            size = len(chunks)
            # Their blocks were just taken one by one: those references become the chunks'.
            chunks.update(zip(fresh, repeat(1)))
            if len(chunks) - size == len(fresh):
                return True
            deque(map(chunks.pop, fresh, repeat(None)), 0)  # a chunk repeats in this list: undo
        for key in fresh:  # some held already: one by one
            count = chunks.get(key)
            if count is None:
                chunks[key] = 1
            else:
                chunks[key] = count + 1
                self._drop_direct(key)  # held: its blocks' own references are the chunk's
        return True

    def _drop_direct(self, blocks: tuple[int, ...]) -> None:
        """One direct reference fewer on each of ``blocks`` (a held chunk keeps them active)."""
        active = self._active
        for h in blocks:
            active[h] -= 1

    def _acquire_blocks(
        self,
        seq_hashes: list[int],
        local_hashes: list[int],
        num_anonymous: int,
        parent0: int | None,
        depth0: int,
    ) -> bool:
        """``acquire`` of blocks ``depth0``.. of a sequence, one reference each (``parent0``: the
        block before them)."""
        meta = self._meta
        n = len(seq_hashes)
        m = 0 if not seq_hashes or seq_hashes[0] not in meta else self._cached_lead(seq_hashes)
        head = seq_hashes[:m] if m else []
        if m and len(set(head)) < m:
            return self._acquire_blockwise(seq_hashes, local_hashes, num_anonymous, parent0, depth0)
        # Bulk path: ``head`` is cached (active or inactive), the blocks after the first miss are
        # new (the cached set is closed under parents: a sequence holds its whole chain and
        # releases it tail first), no hash repeats.
        active, inactive = self._active, self._inactive
        reused = list(filterfalse(active.__contains__, head)) if m else []  # inactive: cached, unused
        reactivate = len(reused)
        new = n - m
        free = self.num_free
        if new + num_anonymous > free + len(inactive) - reactivate:
            return self._acquire_blockwise(seq_hashes, local_hashes, num_anonymous, parent0, depth0)  # exact
        parent = seq_hashes[m - 1] if m else parent0
        run: list[StoredBlock] = []
        if new:
            tail = seq_hashes[m:] if m else seq_hashes
            # A block after the first miss already cached: the per-block path. (One lookup per new
            # block; the insert right after it finds its slot in cache.)
            if not meta.keys().isdisjoint(tail):
                return self._acquire_blockwise(seq_hashes, local_hashes, num_anonymous, parent0, depth0)
            local = local_hashes[m:n]
            parents = chain((parent,), tail)  # one longer than tail: its last block is no one's parent
            size = len(meta)
            meta.update(zip(tail, map(BlockMeta, local, parents, range(depth0 + m, depth0 + n)), strict=True))
            if len(meta) - size < new:  # a hash repeats in the tail: undo (all were new), per block
                deque(map(meta.pop, tail, repeat(None)), 0)
                return self._acquire_blockwise(seq_hashes, local_hashes, num_anonymous, parent0, depth0)
            active.update(zip(tail, repeat(1)))
            run = list(map(StoredBlock, tail, local))
        if m:
            # Reactivate before evicting, so that making room cannot evict the prefix.
            if reused:
                inactive.reactivate(reused)
            if reactivate == m:  # nobody used any of them
                active.update(zip(head, repeat(1)))
            else:
                counts = list(map(active.get, head, repeat(0)))
                active.update(zip(head, map(_plus_one, counts), strict=True))
        evict = new + num_anonymous - free
        evicted = self._evict(evict) if evict > 0 else []
        self._anonymous += num_anonymous
        self._flush_run(evicted, parent, run)
        return True

    def _acquire_blockwise(
        self,
        seq_hashes: list[int],
        local_hashes: list[int],
        num_anonymous: int,
        parent0: int | None,
        depth0: int,
    ) -> bool:
        """``_acquire_blocks`` one block at a time (any hash list)."""
        active, inactive, meta = self._active, self._inactive, self._meta
        reactivate = 0
        new = 0
        for h in seq_hashes:
            if h in active:
                continue
            if h in meta:
                reactivate += 1
            else:
                new += 1
        if new + num_anonymous > self.num_free + len(inactive) - reactivate:
            return False
        # Reactivate cached blocks first so that making room cannot evict them.
        for h in seq_hashes:
            if h not in active and h in meta:
                inactive.reactivate([h])
                active[h] = 0
        evicted: list[int] = []
        run: list[StoredBlock] = []
        run_parent: int | None = None
        parent = parent0
        for i, h in enumerate(seq_hashes):
            count = active.get(h)
            if count is None:
                if self.num_free <= 0:
                    evicted += self._evict(1)
                active[h] = 1
                meta[h] = BlockMeta(local_hashes[i], parent, depth0 + i)
                if not run:
                    run_parent = parent
                run.append(StoredBlock(h, local_hashes[i]))
            else:
                active[h] = count + 1
                if run:
                    self._flush_run(evicted, run_parent, run)
                    evicted, run = [], []
            parent = h
        if num_anonymous:
            need = num_anonymous - self.num_free
            if need > 0:
                evicted += self._evict(need)
            self._anonymous += num_anonymous
        self._flush_run(evicted, run_parent, run)
        return True

    def _flush_run(self, evicted: list[int], parent: int | None, run: list[StoredBlock]) -> None:
        if evicted:
            self.events.removed(evicted)
        if run:
            self.events.stored(parent, run)

    def _evict(self, k: int) -> list[int]:
        """Drop the ``k`` least recently used inactive blocks; their hashes, oldest first."""
        evicted = self._inactive.pop_oldest(k)
        deque(map(self._meta.__delitem__, evicted), 0)
        return evicted

    def release(self, seq_hashes: list[int], num_anonymous: int, acquired: int | None = None) -> None:
        """Drop a sequence's references: ``seq_hashes`` as ``acquire`` took them (its first
        ``acquired``, default all) plus the blocks promoted since. Full blocks that nobody uses any
        more become inactive (still cached); they are queued last block first, so a sequence's
        tail is evicted before its prefix."""
        keys = self._chunk_keys(seq_hashes, acquired)
        if keys:
            # The blocks after the chunks, then each chunk whose last reference this was.
            rev = seq_hashes[len(keys) * self.chunk_blocks :][::-1]
            chunks = self._chunks
            keys.reverse()
            counts = list(map(chunks.__getitem__, keys))
            if counts.count(1) == len(counts) and len(set(keys)) == len(keys):  # the only holder
                deque(map(chunks.__delitem__, keys), 0)
                rev = seq_hashes[::-1]  # the blocks after the chunks, then every chunk's, reversed
            else:
                for key in keys:
                    count = chunks[key] - 1
                    if count:
                        chunks[key] = count
                    else:
                        del chunks[key]
                        rev += key[::-1]
        else:
            rev = seq_hashes[::-1]
        if rev:
            active = self._active
            counts = list(map(active.__getitem__, rev))
            if counts.count(1) == len(counts):  # the sequence was each block's only user
                deque(map(active.__delitem__, rev), 0)
                self._inactive.push(rev)
            elif len(set(rev)) == len(rev):
                last = list(map(_is_one, counts))
                shared = list(map(not_, last))
                active.update(
                    zip(compress(rev, shared), map(_minus_one, compress(counts, shared)), strict=True)
                )
                unused = list(compress(rev, last))
                deque(map(active.__delitem__, unused), 0)
                self._inactive.push(unused)
            else:
                self._release_blockwise(rev)
        self._anonymous -= num_anonymous
        if self._anonymous < 0:  # pragma: no cover - accounting bug guard
            raise AssertionError("anonymous block count went negative")

    def _release_blockwise(self, reversed_hashes: list[int]) -> None:
        active, inactive = self._active, self._inactive
        for h in reversed_hashes:
            count = active[h] - 1
            if count:
                active[h] = count
            else:
                del active[h]
                inactive.push([h])

    def allocate_anonymous(self) -> bool:
        """Allocate one anonymous block (a sequence grew into a new block), evicting the LRU
        inactive block if needed; False when the cache is full of active blocks (preempt)."""
        if self.num_free <= 0:
            if not self._inactive:
                return False
            self.events.removed(self._evict(1))
        self._anonymous += 1
        return True

    def promote(self, seq_hash: int, local_hash: int, parent_hash: int | None, depth: int) -> None:
        """A sequence's anonymous last block filled up: it becomes the full block ``seq_hash``
        (sharing an identical cached block if one exists, which frees the slot)."""
        self._anonymous -= 1
        count = self._active.get(seq_hash)
        if count is not None:
            self._active[seq_hash] = count + 1
            return
        if seq_hash in self._meta:  # cached and not in use: inactive
            self._inactive.reactivate([seq_hash])
            self._active[seq_hash] = 1
            return
        self._active[seq_hash] = 1
        self._meta[seq_hash] = BlockMeta(local_hash, parent_hash, depth)
        self.events.stored(parent_hash, [StoredBlock(seq_hash, local_hash)])

    # ----- whole-cache operations ---------------------------------------------------------------

    def clear(self) -> None:
        """Drop every cached inactive block (like vLLM's prefix-cache reset) and emit ``cleared``;
        blocks still in use by running sequences are announced again as ``stored``."""
        deque(map(self._meta.__delitem__, self._inactive), 0)
        self._inactive.clear()
        self.events.cleared()
        for stored in self._stored_events(self._active):
            self.events.stored(stored.parent_hash, stored.blocks)

    def snapshot(self) -> KvBlockSnapshot:
        """The current block set, for a router resynchronising this worker."""
        blocks = self._stored_events(self._meta)
        return KvBlockSnapshot(
            worker_id=self.events.worker_id,
            dp_rank=self.events.dp_rank,
            last_event_id=self.events.last_event_id,
            blocks=blocks,
        )

    def _stored_events(self, hashes: Iterable[int]) -> list[KvStored]:
        meta = self._meta
        ordered = sorted(hashes, key=lambda h: meta[h].depth)
        return [KvStored(blocks=[StoredBlock(h, meta[h].local)], parent_hash=meta[h].parent) for h in ordered]
