"""One ZMQ subscriber for engines that publish KV cache events on ZMQ PUB sockets (vLLM, SGLang).

Journey: the engine's prefix cache stores / evicts blocks -> the engine publishes a msgpack batch,
frames ``[topic, seq (8 bytes big-endian), payload]`` -> **``ZmqKvEventSubscriber``** decodes it
with the engine's ``KvBatchDecoder`` (payload -> ``(raw events, dp rank)``) and converts each
event with the engine's converter -> ``KvEventBatch`` -> the worker's sink -> event plane -> routers.
Converters share ``block_hash_to_u64``, ``stored_event`` (engine hashes plus our local token hashes)
and ``MAIN_POOL_MEDIA`` (the tier relayed).

Event ids increase per worker. A skipped sequence number (batches dropped at the ZMQ high-water
mark) skips ids too, so the router sees the gap and resynchronises; sequences are tracked per
data-parallel rank (SGLang publishes one socket per attention-DP rank).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from typing import Any

import zmq
import zmq.asyncio

from dynamo.llm.kv_events import (
    KvEvent,
    KvEventBatch,
    KvEventData,
    KvStored,
    StoredBlock,
    compute_block_hashes,
)
from dynamo.worker.engine import KvEventSink

log = logging.getLogger(__name__)

_U64 = (1 << 64) - 1
# The media of an engine's main KV pool in its events; other tiers (CPU offload, disk) are not
# relayed: our schema has no tier.
MAIN_POOL_MEDIA: tuple[str | None, ...] = (None, "GPU")

# payload -> (the batch's raw events, its data-parallel rank); None: not a batch (logged and skipped).
KvBatchDecoder = Callable[[bytes], tuple[Iterable[Any], int] | None]
# one raw engine event -> our event data; None: not for the router (other media, unknown kinds).
KvEventConverter = Callable[[Any], KvEventData | None]


def block_hash_to_u64(value: bytes | int) -> int:
    """An engine's block hash as an unsigned 64-bit int (bytes big-endian, low 64 bits; negative
    Python ints wrap), so every representation of one hash maps to one number."""
    if isinstance(value, bytes | bytearray):
        return int.from_bytes(value, "big") & _U64
    return int(value) & _U64


def stored_event(
    block_hashes: Iterable[bytes | int],
    parent_hash: bytes | int | None,
    token_ids: list[int],
    block_size: int,
    lora_name: str | None = None,
) -> KvStored:
    """An engine's "blocks stored" event in our terms: each block's engine hash as a 64-bit int
    with our local hash of its tokens (``compute_block_hashes``), which the router matches prompts by."""
    hashes = [block_hash_to_u64(h) for h in block_hashes]
    local = compute_block_hashes(token_ids, block_size, lora_name)
    if len(local) != len(hashes):
        log.warning(
            "BlockStored with %d block hashes but %d full blocks of token ids; keeping the common prefix",
            len(hashes),
            len(local),
        )
    return KvStored(
        blocks=[StoredBlock(block_hash=h, tokens_hash=t) for h, t in zip(hashes, local, strict=False)],
        parent_hash=None if parent_hash is None else block_hash_to_u64(parent_hash),
    )


class ZmqKvEventSubscriber:
    """Subscribes to an engine's KV event publishers and hands converted batches to ``sink``.

    Owns one task (``start``/``stop``); the sink is called on the event loop and must not block.
    Connecting before the engine binds is fine.
    """

    def __init__(
        self,
        endpoints: list[str],
        worker_id: int,
        sink: KvEventSink,
        *,
        decode: KvBatchDecoder,
        convert: KvEventConverter,
        topic: str = "",
        engine: str = "engine",
    ) -> None:
        self.endpoints = endpoints
        self.worker_id = worker_id
        self._sink = sink
        self._decode = decode
        self._convert = convert
        self._topic = topic.encode()
        self._engine = engine
        # Per data-parallel rank: routers index each rank as its own worker, so each numbers its
        # events from 0 without holes of its own.
        self._next_event_id: dict[int, int] = {}
        self._last_seq: dict[int, int] = {}
        self._task: asyncio.Task[None] | None = None
        self._ctx: zmq.asyncio.Context | None = None
        self._sock: zmq.asyncio.Socket | None = None
        self.batches_relayed = 0

    def start(self) -> None:
        """Connect and start relaying (idempotent)."""
        if self._task is not None:
            return
        self._ctx = zmq.asyncio.Context()
        self._sock = self._ctx.socket(zmq.SUB)
        self._sock.setsockopt(zmq.SUBSCRIBE, self._topic)
        self._sock.setsockopt(zmq.RCVHWM, 100_000)
        for endpoint in self.endpoints:
            self._sock.connect(endpoint)
        self._task = asyncio.create_task(self._run(), name=f"kv-events-{self.worker_id:x}")
        log.info(
            "relaying %s KV events from %s for worker %x",
            self._engine,
            ", ".join(self.endpoints),
            self.worker_id,
        )

    async def stop(self) -> None:
        """Cancel the task and close the socket (idempotent)."""
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
                self.handle(frames)
            except Exception:
                log.exception("dropping an undecodable %s KV event batch", self._engine)

    def handle(self, frames: list[bytes]) -> None:
        """Convert one ZMQ message ``[topic, seq, payload]`` and hand it to the sink."""
        if len(frames) != 3:
            log.warning("%s KV event message with %d frames (expected 3); ignored", self._engine, len(frames))
            return
        _topic, seq_bytes, payload = frames
        seq = int.from_bytes(seq_bytes, "big", signed=True)
        decoded = self._decode(payload)
        if decoded is None:
            log.warning("%s KV event batch of unexpected shape; ignored", self._engine)
            return
        raw_events, dp_rank = decoded
        next_id = self._next_event_id.get(dp_rank, 0)
        last = self._last_seq.get(dp_rank)
        if last is not None and seq > last + 1:
            missed = seq - last - 1
            log.warning(
                "missed %d %s KV event batches (rank %d); the router will resync",
                missed,
                self._engine,
                dp_rank,
            )
            next_id += missed  # a hole the router sees, and that no replay can fill: it takes a snapshot
        self._last_seq[dp_rank] = seq
        events: list[KvEvent] = []
        for raw in raw_events:
            data = self._convert(raw)
            if data is None:
                continue
            events.append(KvEvent(event_id=next_id, data=data))
            next_id += 1
        self._next_event_id[dp_rank] = next_id
        if not events:
            return
        self.batches_relayed += 1
        try:
            self._sink(KvEventBatch(worker_id=self.worker_id, events=events, dp_rank=dp_rank))
        except Exception:
            log.exception("KV event sink failed; %d events lost", len(events))
