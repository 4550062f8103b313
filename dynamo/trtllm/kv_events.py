"""TensorRT-LLM's KV cache events to the KV router, as our ``KvEventBatch``.

Journey: the **engine**'s KV cache manager stores / evicts blocks (``kv_cache_config:
event_buffer_max_size`` > 0, block reuse on) -> ``llm.get_kv_cache_events_async()`` yields them
as dicts -> ``KvEventConverter`` -> the worker's sink -> event plane -> router. TensorRT-LLM hands
its events out through the LLM API, not a ZMQ socket, so this poller stands in for the shared ZMQ
subscriber (``dynamo.worker.zmq_kv_events``).

Event shape: ``{"event_id", "data": {"type": "stored", "parent_hash", "blocks": [{"block_hash",
"tokens": [{"token_id", ...}], ...}]}, "attention_dp_rank"?}``, ``{"type": "removed",
"block_hashes"}``, and ``created`` / ``updated`` (not for the router). A stored block with fewer
tokens than the block size is partial: it and the blocks after it are not relayed (the router
hashes full blocks only), and its later removal is dropped too. Our event ids increase per worker
and skip where TensorRT-LLM's do, so the router notices lost events and resynchronises.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from dynamo.llm.kv_events import (
    KvEvent,
    KvEventBatch,
    KvEventData,
    KvRemoved,
    KvStored,
    StoredBlock,
    compute_block_hashes,
)
from dynamo.worker.engine import KvEventSink
from dynamo.worker.zmq_kv_events import block_hash_to_u64

logger = logging.getLogger(__name__)

POLL_TIMEOUT_S = 1.0  # how long one get_kv_cache_events_async pass waits for events
RETRY_S = 1.0  # before asking again when TensorRT-LLM has no event stream yet (before the first request)


class KvEventConverter:
    """Turns TensorRT-LLM event dicts into ``KvEvent``s for one worker (stateful: ids, partial blocks)."""

    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        self._next_id = 0
        self._last_engine_id: int | None = None
        self._partial: set[int] = set()

    def convert(self, event: dict[str, Any]) -> tuple[int, list[KvEvent]]:
        """(attention-DP rank, our events) for one TensorRT-LLM event."""
        engine_id = event.get("event_id")
        if isinstance(engine_id, int):
            if self._last_engine_id is not None and engine_id > self._last_engine_id + 1:
                missed = engine_id - self._last_engine_id - 1
                logger.warning("missed %d TensorRT-LLM KV events; the router will resync", missed)
                self._next_id += missed
            self._last_engine_id = engine_id
        rank = event.get("attention_dp_rank")
        data = self._data(event.get("data") or {})
        if data is None:
            return int(rank or 0), []
        out = KvEvent(event_id=self._next_id, data=data)
        self._next_id += 1
        return int(rank or 0), [out]

    def _data(self, data: dict[str, Any]) -> KvEventData | None:
        kind = data.get("type")
        if kind == "stored":
            blocks: list[StoredBlock] = []
            for block in data.get("blocks") or []:
                tokens = [
                    int(t["token_id"]) if isinstance(t, dict) else int(t) for t in block.get("tokens") or []
                ]
                block_hash = block_hash_to_u64(int(block["block_hash"]))
                if len(tokens) != self.block_size:
                    self._partial.add(block_hash)
                    break
                blocks.append(StoredBlock(block_hash, compute_block_hashes(tokens, self.block_size)[0]))
            if not blocks:
                return None
            parent = data.get("parent_hash")
            return KvStored(
                blocks=blocks, parent_hash=None if parent is None else block_hash_to_u64(int(parent))
            )
        if kind == "removed":
            hashes = []
            for raw in data.get("block_hashes") or []:
                block_hash = block_hash_to_u64(int(raw))
                if block_hash in self._partial:
                    self._partial.discard(block_hash)
                    continue
                hashes.append(block_hash)
            return KvRemoved(block_hashes=hashes) if hashes else None
        return None  # created / updated: cache tiers and priorities, nothing for the router


async def relay_kv_events(llm: Any, converter: KvEventConverter, worker_id: int, sink: KvEventSink) -> None:
    """Poll ``llm.get_kv_cache_events_async`` forever and hand converted batches to ``sink``
    (runs as an owned task; cancel it to stop)."""
    waiting_logged = False
    while True:
        got = 0
        try:
            async for event in llm.get_kv_cache_events_async(timeout=POLL_TIMEOUT_S):
                got += 1
                if not isinstance(event, dict):
                    continue
                rank, events = converter.convert(event)
                if events:
                    try:
                        sink(KvEventBatch(worker_id=worker_id, events=events, dp_rank=rank))
                    except Exception:
                        logger.exception("KV event sink failed; %d events lost", len(events))
        except (IndexError, asyncio.QueueEmpty, TimeoutError):
            pass  # no event within the timeout
        except (
            RuntimeError
        ) as exc:  # e.g. "IterationResult is not properly instantiated" before the first request
            if not waiting_logged:
                logger.debug("TensorRT-LLM KV events not available yet: %s", exc)
                waiting_logged = True
            await asyncio.sleep(RETRY_S)
            continue
        if got == 0:
            await asyncio.sleep(0.05)  # an empty pass may return at once
