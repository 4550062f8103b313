"""vLLM's KV cache events in our terms, for the shared ZMQ subscriber (``dynamo.worker.zmq_kv_events``).

Journey: the **engine**'s prefix cache stores / evicts blocks -> vLLM publishes a msgpack
``KVEventBatch`` on a ZMQ PUB socket -> the subscriber decodes it as vLLM's struct and converts
each event here -> the worker's sink -> event plane -> router indexer.

Conversion: ``BlockStored`` -> ``KvStored`` (each block's vLLM hash as a 64-bit int plus our local
``compute_block_hashes`` hash of its token ids), ``BlockRemoved`` -> ``KvRemoved``,
``AllBlocksCleared`` -> ``KvCleared``. Event ids increase per worker; when vLLM's sequence skips
(events dropped at the ZMQ high-water mark), the id skips too, so the router sees the gap and
resynchronises. Only the engine's main KV pool is relayed (``medium`` GPU or unset; vLLM says GPU
on the CPU build too); offload tiers are skipped because our schema has no tier.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec

from dynamo.llm.kv_events import KvCleared, KvEventData, KvRemoved
from dynamo.worker.engine import KvEventSink
from dynamo.worker.zmq_kv_events import MAIN_POOL_MEDIA, ZmqKvEventSubscriber, block_hash_to_u64, stored_event

logger = logging.getLogger(__name__)


def block_hash_to_int(block_hash: bytes | int) -> int:
    """vLLM block hash -> 64-bit int, the way vLLM itself does with ``VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES``
    (big-endian, low 64 bits), so both representations map to the same number."""
    return block_hash_to_u64(block_hash)


def _lora_name(event: Any) -> str | None:
    name = getattr(event, "lora_name", None)
    return str(name) if name else None


def convert_event(event: Any) -> KvEventData | None:
    """One vLLM ``BlockStored`` / ``BlockRemoved`` / ``AllBlocksCleared`` -> our event data (None: skip)."""
    kind = type(event).__name__
    if kind == "AllBlocksCleared":
        return KvCleared()
    if getattr(event, "medium", None) not in MAIN_POOL_MEDIA:
        return None
    if kind == "BlockRemoved":
        return KvRemoved(block_hashes=[block_hash_to_int(h) for h in event.block_hashes])
    if kind == "BlockStored":
        return stored_event(
            event.block_hashes,
            event.parent_block_hash,
            list(event.token_ids),
            int(event.block_size),
            _lora_name(event),
        )
    logger.debug("ignoring unknown KV event %s", kind)
    return None


def kv_event_subscriber(
    endpoint: str, worker_id: int, sink: KvEventSink, topic: str = "kv"
) -> ZmqKvEventSubscriber:
    """The shared ZMQ subscriber, reading vLLM's ``KVEventBatch`` (needs vLLM installed)."""
    from vllm.distributed.kv_events import KVEventBatch

    decoder = msgspec.msgpack.Decoder(type=KVEventBatch)

    def decode(payload: bytes) -> tuple[list[Any], int]:
        batch = decoder.decode(payload)
        return batch.events, batch.data_parallel_rank or 0

    return ZmqKvEventSubscriber(
        [endpoint], worker_id, sink, decode=decode, convert=convert_event, topic=topic, engine="vLLM"
    )
