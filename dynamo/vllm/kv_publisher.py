"""Relay of vLLM's KV cache events to the KV router, as our ``KvEventBatch``.

Journey: the **engine**'s prefix cache stores / evicts blocks -> vLLM publishes a msgpack
``KVEventBatch`` on a ZMQ PUB socket (frames ``[topic, seq (8 bytes big-endian), payload]``) ->
this subscriber converts it -> the sink (the worker puts it on the event plane) -> router indexer.

Conversion: ``BlockStored`` -> ``KvStored`` (each block's vLLM hash as a 64-bit int plus our local
``compute_block_hashes`` hash of its token ids), ``BlockRemoved`` -> ``KvRemoved``,
``AllBlocksCleared`` -> ``KvCleared``. Event ids increase per worker; when vLLM's sequence skips
(events dropped at the ZMQ high-water mark), the id skips too, so the router sees the gap and
resynchronises. Only the engine's main KV pool is relayed (``medium`` GPU or unset; vLLM says GPU
on the CPU build too); offload tiers are skipped because our schema has no tier.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import msgspec
import zmq
import zmq.asyncio

from dynamo.llm.kv_events import (
    KvCleared,
    KvEvent,
    KvEventBatch,
    KvEventData,
    KvRemoved,
    KvStored,
    StoredBlock,
    compute_block_hashes,
)

logger = logging.getLogger(__name__)

KvEventSink = Callable[[KvEventBatch], None]

_U64 = (1 << 64) - 1
_MAIN_POOL_MEDIA = (None, "GPU")


def block_hash_to_int(block_hash: bytes | int) -> int:
    """vLLM block hash -> 64-bit int, the way vLLM itself does with ``VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES``
    (big-endian, low 64 bits), so both representations map to the same number."""
    if isinstance(block_hash, int):
        return block_hash & _U64
    return int.from_bytes(block_hash, "big") & _U64


def _lora_name(event: Any) -> str | None:
    name = getattr(event, "lora_name", None)
    return str(name) if name else None


def convert_event(event: Any) -> KvEventData | None:
    """One vLLM ``BlockStored`` / ``BlockRemoved`` / ``AllBlocksCleared`` -> our event data (None: skip)."""
    kind = type(event).__name__
    if kind == "AllBlocksCleared":
        return KvCleared()
    if getattr(event, "medium", None) not in _MAIN_POOL_MEDIA:
        return None
    if kind == "BlockRemoved":
        return KvRemoved(block_hashes=[block_hash_to_int(h) for h in event.block_hashes])
    if kind == "BlockStored":
        hashes = [block_hash_to_int(h) for h in event.block_hashes]
        tokens_hashes = compute_block_hashes(list(event.token_ids), int(event.block_size), _lora_name(event))
        if len(tokens_hashes) != len(hashes):
            logger.warning(
                "BlockStored with %d block hashes but %d full blocks of token ids; keeping the common prefix",
                len(hashes),
                len(tokens_hashes),
            )
        parent = event.parent_block_hash
        return KvStored(
            blocks=[
                StoredBlock(block_hash=h, tokens_hash=t) for h, t in zip(hashes, tokens_hashes, strict=False)
            ],
            parent_hash=None if parent is None else block_hash_to_int(parent),
        )
    logger.debug("ignoring unknown KV event %s", kind)
    return None


class KvEventRelay:
    """Subscribes to one engine's KV event endpoint and hands converted batches to ``sink``.

    Owns one task (``start``/``stop``); the sink is called on the event loop and must not block.
    """

    def __init__(self, endpoint: str, worker_id: int, sink: KvEventSink, topic: str = "kv") -> None:
        self._endpoint = endpoint
        self._worker_id = worker_id
        self._sink = sink
        self._topic = topic.encode()
        self._next_event_id = 0
        self._last_seq: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._ctx: zmq.asyncio.Context | None = None
        self._sock: zmq.asyncio.Socket | None = None
        self._decoder: msgspec.msgpack.Decoder[Any] | None = None
        self.batches_relayed = 0

    @property
    def endpoint(self) -> str:
        return self._endpoint

    def start(self) -> None:
        """Connect the SUB socket (before the engine binds is fine) and start relaying."""
        if self._task is not None:
            return
        from vllm.distributed.kv_events import KVEventBatch

        self._decoder = msgspec.msgpack.Decoder(type=KVEventBatch)
        self._ctx = zmq.asyncio.Context()
        self._sock = self._ctx.socket(zmq.SUB)
        self._sock.setsockopt(zmq.SUBSCRIBE, self._topic)
        self._sock.setsockopt(zmq.RCVHWM, 100_000)
        self._sock.connect(self._endpoint)
        self._task = asyncio.create_task(self._run(), name=f"kv-event-relay-{self._worker_id:x}")
        logger.info("relaying KV events from %s for worker %x", self._endpoint, self._worker_id)

    async def stop(self) -> None:
        """Cancel the relay task and close the socket."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    async def _run(self) -> None:
        assert self._sock is not None
        while True:
            frames = await self._sock.recv_multipart()
            try:
                self._handle(frames)
            except Exception:
                logger.exception("dropping an undecodable KV event batch from %s", self._endpoint)

    def _handle(self, frames: list[bytes]) -> None:
        if len(frames) != 3:
            logger.warning("KV event message with %d frames (expected 3); ignored", len(frames))
            return
        _topic, seq_bytes, payload = frames
        seq = int.from_bytes(seq_bytes, "big", signed=True)
        if self._last_seq is not None and seq > self._last_seq + 1:
            missed = seq - self._last_seq - 1
            logger.warning("missed %d KV event batches from the engine; the router will resync", missed)
            self._next_event_id += missed
        self._last_seq = seq
        assert self._decoder is not None
        batch = self._decoder.decode(payload)
        events: list[KvEvent] = []
        for raw in batch.events:
            data = convert_event(raw)
            if data is None:
                continue
            events.append(KvEvent(event_id=self._next_event_id, data=data))
            self._next_event_id += 1
        if not events:
            return
        out = KvEventBatch(worker_id=self._worker_id, events=events, dp_rank=batch.data_parallel_rank or 0)
        self.batches_relayed += 1
        try:
            self._sink(out)
        except Exception:
            logger.exception("KV event sink failed; %d events lost", len(events))
