"""A worker's KV events on their way to the routers: published in order, and kept for resyncs.

Journey: the engine's cache stores / evicts blocks -> its event source (``dynamo.worker.zmq_kv_events``
or an engine's own poller) -> **``KvEventPublisher.sink``** -> event plane -> every router's
indexer. A router that missed events (a gap in event ids, or a load report naming a later last
event than it applied) asks the worker's ``/kv_replay`` for the last ``KV_EVENT_HISTORY``; one
that started late or lost more asks ``/kv_snapshot`` for the cached block set (``CachedBlocks``,
or the engine's own when it keeps one: ``use_block_source``).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from itertools import chain, repeat
from operator import attrgetter

from dynamo.llm import kv_events
from dynamo.llm.kv_events import KvEventBatch
from dynamo.runtime import DistributedRuntime, EndpointId
from dynamo.worker.engine import KvBlockSource

log = logging.getLogger(__name__)

_block_hash = attrgetter("block_hash")
_tokens_hash = attrgetter("tokens_hash")

KV_EVENT_HISTORY = 1024


class CachedBlocks:
    """An engine's cached blocks as its own KV events describe them: what a router's index should
    hold for this worker. Per block: engine hash -> (parent engine hash, local tokens hash)."""

    __slots__ = ("blocks", "last_event_id")

    def __init__(self) -> None:
        self.blocks: dict[int, tuple[int | None, int]] = {}
        self.last_event_id = -1

    def apply(self, event: kv_events.KvEvent) -> None:
        """Apply one event, a whole run of blocks per C-level pass (a 32k-token prompt stores
        ~2,000 blocks in one event)."""
        data = event.data
        if isinstance(data, kv_events.KvStored):
            blocks = data.blocks
            hashes = list(map(_block_hash, blocks))
            parents = chain((data.parent_hash,), hashes)  # each block's parent: the one before it
            entries = zip(parents, map(_tokens_hash, blocks), strict=False)  # parents: one longer
            self.blocks.update(zip(hashes, entries, strict=True))
        elif isinstance(data, kv_events.KvRemoved):
            collections.deque(map(self.blocks.pop, data.block_hashes, repeat(None)), 0)
        else:
            self.blocks.clear()
        self.last_event_id = event.event_id

    def snapshot(self, worker_id: int, dp_rank: int) -> KvEventBatch:
        """``cleared`` then the blocks as ``stored`` events, parents first, all numbered
        ``last_event_id`` (-1 before any event), so the router expects the next id after it (blocks
        whose parent is gone are left out: no prompt can reach them)."""
        children: dict[int | None, list[int]] = {}
        for block_hash, (parent, _) in self.blocks.items():
            if parent is None or parent in self.blocks:
                children.setdefault(parent, []).append(block_hash)
        events = [kv_events.KvEvent(self.last_event_id, kv_events.KvCleared())]
        stack: list[tuple[int | None, int]] = [(None, h) for h in reversed(children.get(None, []))]
        current: kv_events.KvStored | None = None
        while stack:
            parent, block_hash = stack.pop()
            block = kv_events.StoredBlock(block_hash, self.blocks[block_hash][1])
            if current is not None and current.blocks[-1].block_hash == parent:
                current.blocks.append(block)
            else:
                current = kv_events.KvStored(blocks=[block], parent_hash=parent)
                events.append(kv_events.KvEvent(self.last_event_id, current))
            stack.extend((block_hash, child) for child in reversed(children.get(block_hash, [])))
        return KvEventBatch(worker_id=worker_id, events=events, dp_rank=dp_rank)


class KvEventPublisher:
    """Takes KV event batches from an engine (sync ``sink``) and publishes them in order.

    Keeps the last ``KV_EVENT_HISTORY`` events of each data-parallel rank so a router that missed
    some can ask for them, and the cached block set (``CachedBlocks``) for a router that started
    late or lost more than the history holds.
    """

    def __init__(self, runtime: DistributedRuntime, endpoint: EndpointId) -> None:
        self.runtime = runtime
        self.subject = kv_events.kv_events_subject(endpoint.namespace, endpoint.component)
        self._queue: asyncio.Queue[KvEventBatch] = asyncio.Queue()
        self.history: dict[int, collections.deque[kv_events.KvEvent]] = {}  # dp rank -> its last events
        self.cached: dict[int, CachedBlocks] = {}  # dp rank -> its blocks
        self._block_source: KvBlockSource | None = None
        self._task: asyncio.Task[None] | None = None
        self._sent: dict[int, int] = {}  # dp rank -> id of the last event handed to the event plane

    def use_block_source(self, source: KvBlockSource) -> None:
        """The engine keeps its cached block set itself (the mocker): snapshots come from
        ``source`` and the publisher keeps no copy (a long prompt's ~2,000 blocks would otherwise
        be recorded twice in the same process). ``source`` must answer as of the last batch
        handed to ``sink``."""
        self._block_source = source
        self.cached.clear()

    def sink(self, batch: KvEventBatch) -> None:
        """Hand a batch over (called from the engine; never blocks)."""
        history = self.history.get(batch.dp_rank)
        if history is None:
            history = self.history[batch.dp_rank] = collections.deque(maxlen=KV_EVENT_HISTORY)
        history.extend(batch.events)
        if self._block_source is None:
            cached = self.cached.get(batch.dp_rank)
            if cached is None:
                cached = self.cached[batch.dp_rank] = CachedBlocks()
            for event in batch.events:
                cached.apply(event)
        self._queue.put_nowait(batch)

    def start(self) -> None:
        self._task = self.runtime.spawn(self._publish(), "kv-event-relay")

    async def _publish(self) -> None:
        events = await self.runtime.event_plane()
        while True:
            batch = await self._queue.get()
            try:
                await events.publish(self.subject, kv_events.encode(batch))
            except Exception as exc:
                log.warning("could not publish KV events: %s", exc)
            finally:  # sent or lost, the load report says how far this rank got
                if batch.events:
                    self._sent[batch.dp_rank] = batch.events[-1].event_id

    def last_sent_event_id(self, dp_rank: int = 0) -> int | None:
        """Id of the last event of ``dp_rank`` handed to the event plane (None before the first).
        Published in the load reports, after those events on the same plane, so a router that has
        applied fewer knows events were lost even when no later event comes to show the gap."""
        return self._sent.get(dp_rank)

    def replay(self, since_event_id: int, dp_rank: int = 0) -> list[kv_events.KvEvent] | None:
        """``dp_rank``'s events after ``since_event_id``; None when they are not all held (older than
        the history, or a hole in it: batches the relay itself missed), so a snapshot is needed."""
        history = self.history.get(dp_rank, ())
        events = [e for e in history if e.event_id > since_event_id]
        if not events:
            return events  # nothing after it
        first, last = events[0].event_id, events[-1].event_id
        contiguous = first == since_event_id + 1 and last - first + 1 == len(events)
        return events if contiguous else None

    def snapshot(self, worker_id: int, dp_rank: int = 0) -> KvEventBatch:
        """Every cached block of ``dp_rank`` as of the last event handed over (see ``CachedBlocks``)."""
        if self._block_source is not None:
            return self._block_source(worker_id, dp_rank)
        cached = self.cached.get(dp_rank)
        return (cached or CachedBlocks()).snapshot(worker_id, dp_rank)
