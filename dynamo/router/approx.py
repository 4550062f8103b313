"""Cache prediction without KV events (``--no-kv-events``): a routed prefix is assumed cached for a TTL.

Journey: route -> ``record_routed`` after each decision; ``find_matches`` at the next request. Built on
``KvIndexer`` (same tree, same queries) but fed by the router's own decisions: each block of a
routed prompt is taken to stay on that worker for ``ttl_s`` seconds (reference default 120 s),
refreshed whenever a prompt with that prefix is routed there again. The index is bounded: past
``max_blocks`` (worker, block) entries it drops the oldest down to ``prune_target_ratio`` of that.

Expiry needs no timer: entries sit in one insertion-ordered dict, whose order is their expiry order
(one TTL for all), and each query first pops what has expired. Within a prompt the deepest blocks
are queued first, so expiry and pruning take a prefix's tail before its head.
Cost: ``record_routed`` O(prompt blocks); expiry O(1) per expired entry.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

from dynamo.llm.kv_events import compute_sequence_hashes
from dynamo.router.indexer import KvIndexer
from dynamo.router.overlap import OverlapScores

logger = logging.getLogger(__name__)

DEFAULT_TTL_S = 120.0
DEFAULT_MAX_BLOCKS = 1 << 20


class ApproxKvIndexer:
    """A ``KvIndexer`` fed by routing decisions, whose entries expire after a TTL."""

    def __init__(
        self,
        ttl_s: float = DEFAULT_TTL_S,
        max_blocks: int = DEFAULT_MAX_BLOCKS,
        prune_target_ratio: float = 0.8,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl_s <= 0 or max_blocks <= 0 or not 0 < prune_target_ratio <= 1:
            raise ValueError("ttl_s and max_blocks must be positive and prune_target_ratio in (0, 1]")
        self.ttl_s = ttl_s
        self.max_blocks = max_blocks
        self.prune_target = max(1, int(max_blocks * prune_target_ratio))
        self._clock = clock
        self._index = KvIndexer()
        self._expiry: OrderedDict[tuple[int, int], float] = OrderedDict()  # (worker, seq hash) -> deadline

    def __len__(self) -> int:
        """(worker, block) entries currently assumed cached."""
        return len(self._expiry)

    def record_routed(self, worker: int, sequence_hashes: Sequence[int]) -> None:
        """A prompt with these chained block hashes was routed to ``worker``."""
        now = self._clock()
        self._expire(now)
        if not sequence_hashes:
            return
        self._index.store_sequence(worker, sequence_hashes)
        deadline = now + self.ttl_s
        expiry = self._expiry
        for h in reversed(sequence_hashes):
            key = (worker, h)
            expiry[key] = deadline
            expiry.move_to_end(key)
        if len(expiry) > self.max_blocks:
            self._prune()

    def find_matches(self, local_hashes: Sequence[int], early_exit: bool = False) -> OverlapScores:
        """Per worker, leading blocks of the prompt assumed still cached there."""
        return self.find_matches_sequence(compute_sequence_hashes(list(local_hashes)), early_exit)

    def find_matches_sequence(
        self, sequence_hashes: Sequence[int], early_exit: bool = False
    ) -> OverlapScores:
        """``find_matches`` for a prompt already hashed with ``compute_sequence_hashes``."""
        self._expire(self._clock())
        return self._index.find_matches_sequence(sequence_hashes, early_exit)

    def remove_worker(self, worker: int) -> None:
        """Forget a worker. Its queued entries stay until they expire; they are no-ops then."""
        self._index.remove_worker(worker)

    def workers(self) -> list[int]:
        """Keys of the workers with blocks assumed cached (or not yet forgotten)."""
        return self._index.workers()

    def expire(self) -> int:
        """Drop what has outlived the TTL now; returns how many entries went."""
        return self._expire(self._clock())

    def tree_size(self, worker: int) -> int:
        """Blocks currently assumed cached on ``worker``."""
        return self._index.tree_size(worker)

    def _expire(self, now: float) -> int:
        expiry = self._expiry
        dropped = 0
        while expiry:
            key = next(iter(expiry))
            if expiry[key] > now:
                break
            del expiry[key]
            self._index.remove_blocks(key[0], (key[1],))
            dropped += 1
        return dropped

    def _prune(self) -> None:
        expiry = self._expiry
        excess = len(expiry) - self.prune_target
        logger.info("approximate kv index over %d blocks; pruning the %d oldest", self.max_blocks, excess)
        for _ in range(excess):
            (worker, h), _deadline = expiry.popitem(last=False)
            self._index.remove_blocks(worker, (h,))
