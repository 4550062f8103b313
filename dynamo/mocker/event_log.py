"""Numbering, batching and short-term memory of the mocker's KV cache events.

Journey: block manager changes -> ``KvEventLog`` (numbers each event, merges a step's events) ->
``KvEventBatch`` to the sink (the worker publishes it on the event plane) -> router indexer.
The last ~1024 events stay queryable so a router that missed some can catch up.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable

from dynamo.llm.kv_events import KvCleared, KvEvent, KvEventBatch, KvRemoved, KvStored, StoredBlock

logger = logging.getLogger(__name__)

KvEventSink = Callable[[KvEventBatch], None]

DEFAULT_HISTORY = 1024


class KvEventLog:
    """Assigns per-engine increasing event ids (from 0), queues events until ``flush`` hands them
    to the sink as one batch, and remembers the most recent ``history`` events.

    Within one unflushed batch, a ``stored`` event that continues the previous ``stored`` event's
    chain, or a ``removed`` that follows a ``removed``, is merged into it (same event id).
    """

    def __init__(
        self, worker_id: int, sink: KvEventSink | None, dp_rank: int = 0, history: int = DEFAULT_HISTORY
    ) -> None:
        self.worker_id = worker_id
        self.dp_rank = dp_rank
        self._sink = sink
        self._next_id = 0
        self._pending: list[KvEvent] = []
        self._history: deque[KvEvent] = deque(maxlen=history)

    @property
    def last_event_id(self) -> int:
        """Id of the newest event, -1 when none was emitted yet."""
        return self._next_id - 1

    def stored(self, parent_hash: int | None, blocks: list[StoredBlock]) -> None:
        """Record blocks stored after ``parent_hash`` (engine hash; None = root)."""
        if not blocks:
            return
        if self._pending:
            last = self._pending[-1].data
            if isinstance(last, KvStored) and last.blocks[-1].block_hash == parent_hash:
                last.blocks.extend(blocks)
                return
        self._append(KvStored(blocks=blocks, parent_hash=parent_hash))

    def removed(self, block_hashes: list[int]) -> None:
        """Record blocks evicted from the cache."""
        if not block_hashes:
            return
        if self._pending:
            last = self._pending[-1].data
            if isinstance(last, KvRemoved):
                last.block_hashes.extend(block_hashes)
                return
        self._append(KvRemoved(block_hashes=block_hashes))

    def cleared(self) -> None:
        """Record that every cached block was dropped."""
        self._append(KvCleared())

    def _append(self, data: KvStored | KvRemoved | KvCleared) -> None:
        event = KvEvent(event_id=self._next_id, data=data)
        self._next_id += 1
        self._pending.append(event)
        self._history.append(event)

    def flush(self) -> None:
        """Hand the queued events to the sink as one ``KvEventBatch``."""
        if not self._pending:
            return
        events, self._pending = self._pending, []
        if self._sink is None:
            return
        try:
            self._sink(KvEventBatch(worker_id=self.worker_id, events=events, dp_rank=self.dp_rank))
        except Exception:
            logger.exception(
                "KV event sink failed; %d events dropped (ids %d..%d)",
                len(events),
                events[0].event_id,
                events[-1].event_id,
            )

    def since(self, event_id: int) -> list[KvEvent] | None:
        """Events with id > ``event_id``, oldest first; None when some of them are no longer kept
        (the caller must resynchronise from the full block set instead)."""
        if event_id >= self.last_event_id:
            return []
        oldest = self._history[0].event_id if self._history else self._next_id
        if event_id + 1 < oldest:
            return None
        start = event_id + 1 - oldest
        return [self._history[i] for i in range(start, len(self._history))]
