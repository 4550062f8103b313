"""Messages that keep several frontends' predicted worker load in agreement (``--router-replica-sync``).

Journey: route. When a router adds, prefill-completes or frees a request it publishes one of these
on the event plane; the other replicas apply it to their ``ActiveSequences`` so every replica sees
the load all of them put on each worker. Wire format: msgpack, tagged by ``type``.
"""

from __future__ import annotations

import msgspec

from dynamo.router.worker_key import worker_key


class SyncAddRequest(msgspec.Struct, tag="add", array_like=True):
    """A replica routed ``request_id`` to ``worker``: the blocks it will occupy and its pending prefill."""

    router_id: int
    request_id: str
    worker_id: int  # instance id; with dp_rank, ``worker_key`` gives the routing key
    dp_rank: int
    sequence_hashes: list[int]  # the prompt's full blocks, as chained sequence hashes
    private_blocks: int  # blocks without a hash (the partial last block)
    prefill_tokens: int  # prompt tokens the worker must still compute

    @property
    def worker(self) -> int:
        """The routing key of the worker (``dynamo.router.worker_key``)."""
        return worker_key(self.worker_id, self.dp_rank)


class SyncPrefillDone(msgspec.Struct, tag="prefill_done", array_like=True):
    """The request produced its first token: its prompt no longer loads the worker's prefill queue."""

    router_id: int
    request_id: str


class SyncFree(msgspec.Struct, tag="free", array_like=True):
    """The request finished or was cancelled: its blocks are released."""

    router_id: int
    request_id: str


RouterSyncEvent = SyncAddRequest | SyncPrefillDone | SyncFree

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(RouterSyncEvent)
_batch_decoder = msgspec.msgpack.Decoder(list[RouterSyncEvent])


def encode_sync_events(events: RouterSyncEvent | list[RouterSyncEvent]) -> bytes:
    """Encode one event or a list of events for the event plane."""
    return _encoder.encode(events)


def decode_sync_event(payload: bytes) -> RouterSyncEvent:
    """Decode one event."""
    return _decoder.decode(payload)


def decode_sync_events(payload: bytes) -> list[RouterSyncEvent]:
    """Decode a list of events."""
    return _batch_decoder.decode(payload)


def router_sync_subject(namespace: str, component: str) -> str:
    """Event-plane subject on which the routers of a component exchange load updates."""
    return f"dynamo.{namespace}.{component}.router_sync"
