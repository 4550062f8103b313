"""Relay of SGLang's KV cache events to the KV router, as our ``KvEventBatch``.

Journey: the **engine**'s radix cache stores / evicts pages -> SGLang's scheduler publishes a
msgpack ``KVEventBatch`` on a ZMQ PUB socket (``--kv-events-config``; frames ``[topic, seq (8
bytes big-endian), payload]``, one publisher per attention-DP rank on consecutive ports) -> this
subscriber converts it -> the sink (the worker puts it on the event plane) -> router indexer.

The payload is decoded as plain msgpack, so neither ``sglang`` nor its structs are needed here:
a batch is ``[ts, events, attn_dp_rank?]`` and each event a tagged array ``["BlockStored",
block_hashes, parent_block_hash, token_ids, block_size, lora_id, medium?, ...]``,
``["BlockRemoved", block_hashes, medium?]`` or ``["AllBlocksCleared"]``. Block hashes (Python
ints, possibly negative) become unsigned 64-bit; each stored block also gets our local hash of its
token ids. Event ids increase per worker; a skipped SGLang sequence number (events dropped at the
ZMQ high-water mark) skips ids too, so the router notices and resynchronises. Blocks on other
media than the GPU pool (``medium`` set and not ``GPU``) are left out: our schema has no tier.
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
_MAIN_POOL = (None, "GPU")


def block_hash(value: int | bytes) -> int:
    """An SGLang block hash as an unsigned 64-bit int."""
    if isinstance(value, bytes | bytearray):
        return int.from_bytes(value, "big") & _U64
    return int(value) & _U64


def _fields(raw: Any) -> tuple[str, list[Any]]:
    """(tag, positional fields) of a tagged msgpack event (array or map form)."""
    if isinstance(raw, list | tuple) and raw:
        return str(raw[0]), list(raw[1:])
    if isinstance(raw, dict):
        tag = str(raw.get("type", ""))
        order = {
            "BlockStored": (
                "block_hashes",
                "parent_block_hash",
                "token_ids",
                "block_size",
                "lora_id",
                "medium",
            ),
            "BlockRemoved": ("block_hashes", "medium"),
        }.get(tag, ())
        return tag, [raw.get(name) for name in order]
    return "", []


def convert_event(raw: Any) -> KvEventData | None:
    """One decoded SGLang event -> our event data (None: not for the router)."""
    tag, f = _fields(raw)
    if tag == "AllBlocksCleared":
        return KvCleared()
    if tag == "BlockRemoved":
        medium = f[1] if len(f) > 1 else None
        if medium not in _MAIN_POOL:
            return None
        return KvRemoved(block_hashes=[block_hash(h) for h in f[0]])
    if tag == "BlockStored":
        medium = f[5] if len(f) > 5 and isinstance(f[5], str | None) else None
        if medium not in _MAIN_POOL:
            return None
        hashes = [block_hash(h) for h in f[0]]
        token_ids = [int(t) for t in f[2]]
        size = int(f[3]) if f[3] else len(token_ids) // max(1, len(hashes))
        local = compute_block_hashes(token_ids, size)
        if len(local) != len(hashes):
            logger.warning(
                "BlockStored with %d block hashes but %d full blocks of token ids; keeping the common prefix",
                len(hashes),
                len(local),
            )
        parent = f[1]
        return KvStored(
            blocks=[StoredBlock(h, t) for h, t in zip(hashes, local, strict=False)],
            parent_hash=None if parent is None else block_hash(parent),
        )
    logger.debug("ignoring unknown SGLang KV event %r", tag)
    return None


def subscriber_endpoints(endpoint: str, dp_ranks: int = 1) -> list[str]:
    """Where to connect for a publisher bound at ``endpoint``: ``*``/``0.0.0.0`` become loopback,
    and each attention-DP rank publishes on the next TCP port (SGLang's ``offset_endpoint_port``)."""
    local = endpoint.replace("*", "127.0.0.1").replace("0.0.0.0", "127.0.0.1")
    if dp_ranks <= 1 or not local.startswith("tcp://"):
        return [local]
    base, _, port = local.rpartition(":")
    return [f"{base}:{int(port) + rank}" for rank in range(dp_ranks)]


class SglangKvEventRelay:
    """Subscribes to one engine's KV event publishers and hands converted batches to ``sink``.

    Owns one task (``start``/``stop``); the sink is called on the event loop and must not block.
    """

    def __init__(self, endpoints: list[str], worker_id: int, sink: KvEventSink, topic: str = "") -> None:
        self.endpoints = endpoints
        self.worker_id = worker_id
        self._sink = sink
        self._topic = topic.encode()
        self._next_event_id = 0
        self._last_seq: dict[int, int] = {}  # per attention-DP rank
        self._task: asyncio.Task[None] | None = None
        self._ctx: zmq.asyncio.Context | None = None
        self._sock: zmq.asyncio.Socket | None = None
        self.batches_relayed = 0

    def start(self) -> None:
        """Connect (before the engine binds is fine) and start relaying."""
        if self._task is not None:
            return
        self._ctx = zmq.asyncio.Context()
        self._sock = self._ctx.socket(zmq.SUB)
        self._sock.setsockopt(zmq.SUBSCRIBE, self._topic)
        self._sock.setsockopt(zmq.RCVHWM, 100_000)
        for endpoint in self.endpoints:
            self._sock.connect(endpoint)
        self._task = asyncio.create_task(self._run(), name=f"sglang-kv-events-{self.worker_id:x}")
        logger.info(
            "relaying SGLang KV events from %s for worker %x", ", ".join(self.endpoints), self.worker_id
        )

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
                self.handle(frames)
            except Exception:
                logger.exception("dropping an undecodable SGLang KV event batch")

    def handle(self, frames: list[bytes]) -> None:
        """Convert one ZMQ message ``[topic, seq, payload]`` and hand it to the sink."""
        if len(frames) != 3:
            logger.warning("SGLang KV event message with %d frames (expected 3); ignored", len(frames))
            return
        _topic, seq_bytes, payload = frames
        seq = int.from_bytes(seq_bytes, "big", signed=True)
        batch = msgspec.msgpack.decode(payload)
        if not isinstance(batch, list | tuple) or len(batch) < 2:
            logger.warning("SGLang KV event batch of unexpected shape; ignored")
            return
        dp_rank = int(batch[2]) if len(batch) > 2 and isinstance(batch[2], int) else 0
        last = self._last_seq.get(dp_rank)
        if last is not None and seq > last + 1:
            missed = seq - last - 1
            logger.warning(
                "missed %d SGLang KV event batches (rank %d); the router will resync", missed, dp_rank
            )
            self._next_event_id += missed
        self._last_seq[dp_rank] = seq
        events: list[KvEvent] = []
        for raw in batch[1]:
            data = convert_event(raw)
            if data is None:
                continue
            events.append(KvEvent(event_id=self._next_event_id, data=data))
            self._next_event_id += 1
        if not events:
            return
        self.batches_relayed += 1
        try:
            self._sink(KvEventBatch(worker_id=self.worker_id, events=events, dp_rank=dp_rank))
        except Exception:
            logger.exception("KV event sink failed; %d events lost", len(events))
