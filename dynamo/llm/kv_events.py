"""KV cache event schema and block hashing, shared by engines (producers) and the KV router.

Journey: engine KV cache changes -> ``KvEventBatch`` on the event plane -> router indexer.
Load reports (``LoadMetrics``) travel the same way.

Block hashing is compatible with the reference router (NVIDIA Dynamo 1.6.1): a prompt is cut into
blocks of exactly ``block_size`` tokens (a trailing partial block is not hashed); each block's
*local* hash is XXH3-64 (seed 1337) over its token ids as little-endian u32; the *sequence* hash
chains them: ``seq[0] = local[0]``, ``seq[i] = xxh3_64(le64(seq[i-1]) || le64(local[i]))``.
A LoRA adapter name salts the local hashes.
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Sequence
from typing import Literal

import msgspec
import xxhash

from dynamo.llm.token_ids import as_token_ids

HASH_SEED = 1337

_le64x2 = struct.Struct("<QQ")


def _salt_bytes(lora_name: str | None) -> bytes:
    return lora_name.encode() if lora_name else b""


def compute_block_hashes(
    token_ids: Sequence[int], block_size: int, lora_name: str | None = None
) -> list[int]:
    """Local hashes of the full blocks of ``token_ids``."""
    n_full = len(token_ids) // block_size
    if n_full == 0:
        return []
    buf = as_token_ids(token_ids)  # TokenIds already: read in place (its bytes)
    if sys.byteorder != "little":  # pragma: no cover - big-endian host
        buf = array(buf.typecode, buf)
        buf.byteswap()
    raw = memoryview(buf).cast("B")
    step = block_size * 4
    end = n_full * step
    salt = _salt_bytes(lora_name)
    h = xxhash.xxh3_64_intdigest
    seed = HASH_SEED
    if salt:
        return [h(bytes(raw[i : i + step]) + salt, seed) for i in range(0, end, step)]
    return [h(raw[i : i + step], seed) for i in range(0, end, step)]


def compute_sequence_hashes(local_hashes: list[int]) -> list[int]:
    """Chained sequence hashes from local block hashes."""
    if not local_hashes:
        return []
    prev = local_hashes[0]
    out = [prev]
    append = out.append
    h = xxhash.xxh3_64_intdigest
    pack = _le64x2.pack
    seed = HASH_SEED
    for local in local_hashes[1:]:
        prev = h(pack(prev, local), seed)
        append(prev)
    return out


# ----- events -----------------------------------------------------------------------------------


class StoredBlock(msgspec.Struct, array_like=True, gc=False):
    """A block now held by a worker: the engine's own (chained) hash and our local token hash.

    Not tracked by the garbage collector (it holds two ints, so it can be in no cycle): an
    event of a long prompt carries thousands of them, and the histories keep ~1,000 events."""

    block_hash: int
    tokens_hash: int


class KvStored(msgspec.Struct, tag="stored"):
    """Blocks appended after ``parent_hash`` (an engine block hash; ``None`` = from the root)."""

    blocks: list[StoredBlock]
    parent_hash: int | None = None


class KvRemoved(msgspec.Struct, tag="removed"):
    """Blocks evicted from a worker, by engine block hash."""

    block_hashes: list[int]


class KvCleared(msgspec.Struct, tag="cleared"):
    """The worker dropped every cached block."""


KvEventData = KvStored | KvRemoved | KvCleared


class KvEvent(msgspec.Struct):
    """One cache change, numbered by a per-worker increasing ``event_id`` (a gap means resync)."""

    event_id: int
    data: KvEventData


class KvEventBatch(msgspec.Struct):
    """Events from one worker (and data-parallel rank), in order."""

    worker_id: int
    events: list[KvEvent]
    dp_rank: int = 0


class LoadMetrics(msgspec.Struct, omit_defaults=True):
    """Periodic load report of one worker."""

    worker_id: int
    dp_rank: int = 0
    active_requests: int = 0  # running sequences
    waiting_requests: int = 0
    max_requests: int = 0  # request slots (max_num_seqs)
    kv_active_blocks: int = 0
    kv_total_blocks: int = 0
    cache_usage: float = 0.0  # kv_active_blocks / kv_total_blocks
    prefix_hit_rate: float = 0.0
    # Id of the last KV event this rank handed to the event plane (None: no KV events yet): a
    # router whose index holds fewer lost the rest in transit and asks for them.
    kv_last_event_id: int | None = None
    kind: Literal["load"] = "load"


_batch_encoder = msgspec.msgpack.Encoder()
_batch_decoder = msgspec.msgpack.Decoder(KvEventBatch)
_metrics_decoder = msgspec.msgpack.Decoder(LoadMetrics)


def encode(obj: KvEventBatch | LoadMetrics) -> bytes:
    """Encode an event batch or a load report for the event plane."""
    return _batch_encoder.encode(obj)


def decode_event_batch(payload: bytes) -> KvEventBatch:
    """Decode a ``KvEventBatch`` from the event plane."""
    return _batch_decoder.decode(payload)


def decode_load_metrics(payload: bytes) -> LoadMetrics:
    """Decode a ``LoadMetrics`` report from the event plane."""
    return _metrics_decoder.decode(payload)


def kv_events_subject(namespace: str, component: str) -> str:
    """Event-plane subject of a component's KV events."""
    return f"dynamo.{namespace}.{component}.kv_events"


def load_metrics_subject(namespace: str, component: str) -> str:
    """Event-plane subject of a component's load reports."""
    return f"dynamo.{namespace}.{component}.load_metrics"
