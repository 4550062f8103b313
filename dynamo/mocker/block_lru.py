"""The order in which the mocker evicts its inactive KV blocks, changed a run at a time.

Journey: engine stage, inside ``KvManager``: a finished sequence's blocks are pushed here (its
tail first), a prefix hit takes its blocks back (``reactivate``), and a new block that finds the
cache full evicts the oldest. Every operation takes a whole run of block hashes, so a 32k-token
prompt (~2,000 blocks) costs a few C-level passes over lists, not a Python step per block.

Structure: the pushed blocks in push order (a list read from ``_head``), and, for blocks taken
back since, how many of their entries are stale (``_stale``: only blocks a prefix hit reused,
usually few). Only a block's last entry can be live, and entries are read oldest first, so an
entry of a block with stale entries left is one of them. No per-block table: which blocks are
inactive is the block manager's (cached and not in use); this keeps only their order. Stale
entries are dropped once they outnumber the live ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import repeat

# Drop read entries from the front of the queue once this many have piled up.
_TRIM_AT = 4096

_plus_one = (1).__add__


class BlockLru:
    """Block hashes in least-recently-pushed order: bulk push, reactivate and evict."""

    __slots__ = ("_head", "_live", "_queue", "_stale")

    def __init__(self) -> None:
        self._queue: list[int] = []
        self._head = 0
        self._stale: dict[int, int] = {}  # block -> its stale entries still in the queue
        self._live = 0

    def __len__(self) -> int:
        """Inactive blocks (live entries)."""
        return self._live

    def __iter__(self) -> Iterator[int]:
        """The inactive blocks, least recently pushed first."""
        stale = dict(self._stale)
        for h in self._queue[self._head :]:
            n = stale.get(h)
            if n:
                stale[h] = n - 1
            else:
                yield h

    def push(self, hashes: list[int]) -> None:
        """Append blocks that just became inactive, in order, as the most recently used."""
        self._queue += hashes
        self._live += len(hashes)
        if len(self._queue) - self._head > 2 * self._live + _TRIM_AT:
            self._compact()

    def reactivate(self, hashes: list[int]) -> None:
        """These inactive blocks (no repeats) are in use again: their entries go stale. When they
        are the newest entries, pushed in reverse (a chain released and taken back at once), the
        entries are dropped instead."""
        k = len(hashes)
        queue = self._queue
        if k and len(queue) - self._head >= k and queue[-1] == hashes[0] and queue[-k:] == hashes[::-1]:
            del queue[-k:]  # each block's newest entry: its live one
            self._live -= k
            return
        stale = self._stale
        stale.update(zip(hashes, map(_plus_one, map(stale.get, hashes, repeat(0))), strict=True))
        self._live -= len(hashes)

    def pop_oldest(self, k: int) -> list[int]:
        """Remove and return the ``k`` least recently pushed inactive blocks, oldest first."""
        if k > self._live:
            raise ValueError(f"cannot evict {k} of {self._live} blocks")
        queue, stale = self._queue, self._stale
        head = self._head
        out: list[int] = []
        while k > 0:
            end = head + k
            chunk = queue[head:end]
            head = end
            if stale and any(map(stale.__contains__, chunk)):
                live: list[int] = []
                for h in chunk:
                    n = stale.get(h)
                    if n is None:
                        live.append(h)
                    elif n == 1:
                        del stale[h]
                    else:
                        stale[h] = n - 1
                chunk = live
            k -= len(chunk)
            out += chunk
        self._live -= len(out)
        if head >= _TRIM_AT and 2 * head >= len(queue):
            del queue[:head]
            head = 0
        self._head = head
        return out

    def clear(self) -> None:
        """Forget every entry (the block manager dropped all inactive blocks)."""
        self._queue = []
        self._head = 0
        self._stale = {}
        self._live = 0

    def _compact(self) -> None:
        """Queue = the live entries only."""
        self._queue = list(self)
        self._head = 0
        self._stale = {}
