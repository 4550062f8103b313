"""The mocker's evictable KV blocks in least-recently-released order, changed a run at a time.

Journey: engine stage, inside ``KvManager``: a finished sequence's blocks are pushed here (its
tail first), a prefix hit takes its blocks back out, and a new block that finds the cache full
evicts the oldest. Every operation takes a whole run of block hashes so that a 32k-token prompt
(~2,000 blocks) costs a few C-level passes, not a Python call per block.

Structure: ``_stamp_of`` maps each block to the stamp of its latest push (a plain dict, whose
insertion order is therefore the LRU order), and two parallel lists hold the pushed (block,
stamp) pairs in stamp order from ``_head`` on. A block taken out (reactivated) leaves a stale
pair that eviction skips (its stamp no longer matches). Unlike evicting from the front of a plain
dict or popping an ``OrderedDict`` one key at a time, eviction never scans deleted slots and
takes ``k`` blocks with one slice. Stale pairs are dropped when they outnumber the live blocks.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from itertools import compress, repeat
from operator import eq

# Drop consumed pairs from the front of the queue lists once this many have been read.
_TRIM_AT = 4096


class BlockLru:
    """Block hashes in least-recently-pushed order with bulk push, remove and evict."""

    __slots__ = ("_hashes", "_head", "_next_stamp", "_stamp_of", "_stamps")

    def __init__(self) -> None:
        self._stamp_of: dict[int, int] = {}
        self._hashes: list[int] = []
        self._stamps: list[int] = []
        self._head = 0
        self._next_stamp = 0

    def __len__(self) -> int:
        return len(self._stamp_of)

    def __contains__(self, block_hash: object) -> bool:
        return block_hash in self._stamp_of

    def __iter__(self) -> Iterator[int]:
        """The blocks, least recently pushed first."""
        return iter(self._stamp_of)

    def push(self, hashes: list[int]) -> None:
        """Append ``hashes`` in order as the most recently used (none of them may be held)."""
        n = len(hashes)
        if not n:
            return
        first = self._next_stamp
        self._next_stamp = first + n
        stamps = range(first, first + n)
        self._stamp_of.update(zip(hashes, stamps, strict=True))
        self._hashes += hashes
        self._stamps += stamps
        if len(self._hashes) - self._head > 2 * len(self._stamp_of) + _TRIM_AT:
            self._rebuild()

    def remove(self, hashes: Iterable[int]) -> None:
        """Take out those of ``hashes`` that are held (others are ignored)."""
        deque(map(self._stamp_of.pop, hashes, repeat(None)), 0)

    def pop_oldest(self, k: int) -> list[int]:
        """Remove and return the ``k`` least recently pushed blocks, oldest first."""
        if k > len(self._stamp_of):
            raise ValueError(f"cannot evict {k} of {len(self._stamp_of)} blocks")
        stamp_of = self._stamp_of
        hashes, stamps = self._hashes, self._stamps
        head = self._head
        out: list[int] = []
        while k > 0:
            end = head + k
            chunk = hashes[head:end]
            live = list(map(eq, map(stamp_of.get, chunk), stamps[head:end]))
            head = end
            if False in live:
                chunk = list(compress(chunk, live))
            deque(map(stamp_of.__delitem__, chunk), 0)
            k -= len(chunk)
            out += chunk
        if head >= _TRIM_AT and 2 * head >= len(hashes):
            del hashes[:head], stamps[:head]
            head = 0
        self._head = head
        return out

    def clear(self) -> None:
        self._stamp_of.clear()
        self._hashes.clear()
        self._stamps.clear()
        self._head = 0

    def _rebuild(self) -> None:
        """Queue = the live blocks only (the dict's order is the stamp order)."""
        self._hashes = list(self._stamp_of)
        self._stamps = list(self._stamp_of.values())
        self._head = 0
