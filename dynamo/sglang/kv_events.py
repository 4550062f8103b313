"""SGLang's KV cache events in our terms, for the shared ZMQ subscriber (``dynamo.worker.zmq_kv_events``).

Journey: the **engine**'s radix cache stores / evicts pages -> SGLang's scheduler publishes a
msgpack ``KVEventBatch`` on a ZMQ PUB socket (``--kv-events-config``; one publisher per
attention-DP rank on consecutive ports) -> the subscriber decodes it here (``decode_batch``),
converts each event (``convert_event``) -> the worker's sink -> event plane -> router indexer.

The payload is decoded as plain msgpack, so neither ``sglang`` nor its structs are needed here:
a batch is ``[ts, events, attn_dp_rank?]`` and each event a tagged array ``["BlockStored",
block_hashes, parent_block_hash, token_ids, block_size, lora_id, medium?, ...]``,
``["BlockRemoved", block_hashes, medium?]`` or ``["AllBlocksCleared"]``. Block hashes (Python
ints, possibly negative) become unsigned 64-bit; each stored block also gets our local hash of its
token ids. Blocks on other media than the GPU pool (``medium`` set and not ``GPU``) are left out:
our schema has no tier.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec

from dynamo.llm.kv_events import KvCleared, KvEventData, KvRemoved
from dynamo.worker.engine import KvEventSink
from dynamo.worker.zmq_kv_events import MAIN_POOL_MEDIA, ZmqKvEventSubscriber, block_hash_to_u64, stored_event

logger = logging.getLogger(__name__)


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
        if medium not in MAIN_POOL_MEDIA:
            return None
        return KvRemoved(block_hashes=[block_hash_to_u64(h) for h in f[0]])
    if tag == "BlockStored":
        medium = f[5] if len(f) > 5 and isinstance(f[5], str | None) else None
        if medium not in MAIN_POOL_MEDIA:
            return None
        token_ids = [int(t) for t in f[2]]
        size = int(f[3]) if f[3] else len(token_ids) // max(1, len(f[0]))
        return stored_event(f[0], f[1], token_ids, size)
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


def decode_batch(payload: bytes) -> tuple[list[Any], int] | None:
    """An SGLang batch ``[ts, events, attn_dp_rank?]`` -> (its events, its rank); None for any other shape."""
    batch = msgspec.msgpack.decode(payload)
    if not isinstance(batch, list | tuple) or len(batch) < 2:
        return None
    dp_rank = int(batch[2]) if len(batch) > 2 and isinstance(batch[2], int) else 0
    return list(batch[1]), dp_rank


def kv_event_subscriber(
    endpoints: list[str], worker_id: int, sink: KvEventSink, topic: str = ""
) -> ZmqKvEventSubscriber:
    """The shared ZMQ subscriber, reading SGLang's batches from ``endpoints`` (``subscriber_endpoints``)."""
    return ZmqKvEventSubscriber(
        endpoints, worker_id, sink, decode=decode_batch, convert=convert_event, topic=topic, engine="SGLang"
    )
