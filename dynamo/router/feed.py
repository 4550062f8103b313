"""Keeping KV routers current from the network: KV events, load reports, resyncs, replica sync.

Journey: engines' cache changes -> event plane (``dynamo.{ns}.{component}.kv_events`` and
``.load_metrics``) -> **KvFeed** -> ``KvRouter.on_kv_events`` / ``on_load_metrics``, in the background
of every request's route step. When an index meets a worker for the first time (this router
started late) or sees a gap in its event ids, the feed asks that worker over the request plane for
the events it missed (``/kv_replay``) or its whole cached block set (``/kv_snapshot``); when the
event plane's connection comes back it asks every indexed worker for what it published meanwhile. With
``--router-replica-sync`` it publishes this process's load predictions (``.router_sync``) and applies
the other replicas', and forgets the predictions of a replica that stopped heartbeating.

Used by the frontend (``dynamo.frontend.models``) and the standalone router (``dynamo.router.service``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import msgspec
from prometheus_client import CollectorRegistry, Counter

from dynamo.llm import kv_events
from dynamo.llm.endpoints import (
    KvReplayReply,
    KvReplayRequest,
    KvSnapshotReply,
    KvSnapshotRequest,
    kv_replay_endpoint_name,
    kv_snapshot_endpoint_name,
)
from dynamo.llm.kv_events import KvEventBatch
from dynamo.router.indexer import KvIndexer, ResyncRequest
from dynamo.router.kv_router import KvRouter
from dynamo.router.sync_events import RouterSyncEvent, SyncAddRequest, decode_sync_events, encode_sync_events
from dynamo.router.worker_key import format_worker_key, split_worker_key
from dynamo.runtime import DistributedRuntime, InstanceRecord, RequestPlaneError

log = logging.getLogger(__name__)

RESYNC_TIMEOUT = 10.0  # seconds to wait for a worker's replay or snapshot
SWEEP_INTERVAL = 2.0  # seconds between retries of resyncs still pending (a failed fetch)
RETRY_BACKOFF = 10.0  # seconds before a worker whose resync failed is asked again
HEARTBEAT_INTERVAL = 2.0  # seconds between replica-sync heartbeats
REPLICA_TIMEOUT = 10.0  # a replica silent this long is gone: its load predictions are dropped
ALIVE_SUFFIX = "_alive"  # heartbeat subject = the replica-sync subject + this

_ids_encoder = msgspec.msgpack.Encoder()
_ids_decoder = msgspec.msgpack.Decoder(list[int])


class KvFeed:
    """Feeds the KV routers of one process from the event plane and from workers' state endpoints.

    ``routers_of(instance_id)``: the routers whose pool holds that worker instance now;
    ``all_routers()``: every KV router of the process; ``record_of(instance_id)``: how to reach it.
    ``replica_sync``: take part in ``--router-replica-sync`` (otherwise other replicas' updates are
    ignored).
    """

    def __init__(
        self,
        runtime: DistributedRuntime,
        routers_of: Callable[[int], list[KvRouter]],
        all_routers: Callable[[], Iterable[KvRouter]],
        record_of: Callable[[int], InstanceRecord | None],
        *,
        subscription: str = "dynamo.>",
        replica_sync: bool = False,
        registry: CollectorRegistry | None = None,
        metrics_prefix: str = "dynamo_router_",
    ) -> None:
        self.runtime = runtime
        self._routers_of = routers_of
        self._all_routers = all_routers
        self._record_of = record_of
        self._subscription = subscription
        self.replica_sync = replica_sync  # apply the other replicas' load updates
        self._inflight: set[int] = set()  # worker keys with a resync fetch running
        self._retry_after: dict[int, float] = {}  # worker key -> monotonic time of the next retry
        self._outbox: asyncio.Queue[tuple[str, RouterSyncEvent]] = asyncio.Queue()
        self._local_replicas: dict[str, set[int]] = {}  # sync subject -> this process's router ids
        self._replicas_seen: dict[int, float] = {}  # other replicas' router ids -> last heard (monotonic)
        self._resyncs = Counter(
            metrics_prefix + "kv_resyncs",
            "KV index resynchronisations from workers, by kind (replay, snapshot, failed)",
            ["kind"],
            registry=registry if registry is not None else runtime.metrics,
        )

    def start(self) -> None:
        """Start following the event plane (tasks owned by the runtime, cancelled at its shutdown)."""
        self.runtime.spawn(self._follow(), "kv-feed")
        self.runtime.spawn(self._sweep(), "kv-feed-sweep")

    # ----- resynchronisation ------------------------------------------------------------------

    def on_resync_needed(self, request: ResyncRequest) -> None:
        """``KvRouter(on_resync_needed=...)``: fetch what the index of that worker lacks."""
        self._resync(request.worker, request.after_event_id)

    def worker_added(self, instance_id: int) -> None:
        """A worker joined a pool: take its current cache from it (the router may have started late)."""
        self._resync(instance_id, None)

    def _resync(self, worker: int, after_event_id: int | None) -> None:
        if worker in self._inflight:
            return  # the sweep retries whatever is still pending once this one ends
        if not any(r.config.use_kv_events for r in self._routers_of(split_worker_key(worker)[0])):
            return
        self._inflight.add(worker)
        self.runtime.spawn(self._fetch(worker, after_event_id), f"kv-resync-{format_worker_key(worker)}")

    async def _fetch(self, worker: int, after_event_id: int | None) -> None:
        instance_id, dp_rank = split_worker_key(worker)
        self._retry_after.pop(worker, None)
        try:
            record = self._record_of(instance_id)
            if record is None:
                return
            if after_event_id is not None:
                replay = msgspec.convert(
                    await self._call(
                        record,
                        kv_replay_endpoint_name(record.endpoint_id),
                        KvReplayRequest(since_event_id=after_event_id, dp_rank=dp_rank),
                    ),
                    KvReplayReply,
                )
                if replay.events is not None:
                    events = replay.events
                    if not events:
                        return  # nothing was missed
                    batch = KvEventBatch(worker_id=instance_id, events=events, dp_rank=dp_rank)
                    for router in self._routers_of(instance_id):
                        router.on_kv_events(batch)
                    self._resyncs.labels("replay").inc()
                    log.info(
                        "kv index of worker %s: %d missed events replayed after event %d",
                        format_worker_key(worker),
                        len(events),
                        after_event_id,
                    )
                    return
            snapshot_reply = msgspec.convert(
                await self._call(
                    record, kv_snapshot_endpoint_name(record.endpoint_id), KvSnapshotRequest(dp_rank=dp_rank)
                ),
                KvSnapshotReply,
            )
            raw = snapshot_reply.batch
            if raw is None:
                log.info("worker %s publishes no KV events; nothing to resync", format_worker_key(worker))
                return
            snapshot = kv_events.decode_event_batch(raw)
            for router in self._routers_of(instance_id):  # looked up again: it may have left meanwhile
                router.resync(snapshot)
            self._resyncs.labels("snapshot").inc()
        except (RequestPlaneError, TimeoutError, StopAsyncIteration, msgspec.MsgspecError, ValueError) as exc:
            self._resyncs.labels("failed").inc()
            self._retry_after[worker] = time.monotonic() + RETRY_BACKOFF
            log.warning("could not resync the kv index of worker %s: %s", format_worker_key(worker), exc)
        finally:
            self._inflight.discard(worker)

    async def _call(self, record: InstanceRecord, endpoint: str, body: msgspec.Struct) -> Any:
        stream = await self.runtime.request_client.stream(record.address, endpoint, body)
        try:
            async with asyncio.timeout(RESYNC_TIMEOUT):
                reply = await anext(aiter(stream))
        finally:
            await stream.aclose()
        if not isinstance(reply, dict):
            raise ValueError(f"unexpected reply from {endpoint}: {type(reply).__name__}")
        return reply

    async def _sweep(self) -> None:
        """Retry the resyncs that are still pending, and drop replicas that went silent."""
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            now = time.monotonic()
            for router in list(self._all_routers()):
                pending = getattr(router.index, "pending_resyncs", None)
                for request in pending() if pending is not None else ():
                    if self._retry_after.get(request.worker, 0.0) <= now:
                        self._resync(request.worker, request.after_event_id)
            for router_id in [r for r, seen in self._replicas_seen.items() if now - seen > REPLICA_TIMEOUT]:
                del self._replicas_seen[router_id]
                dropped = sum(r.sequences.drop_replica(router_id) for r in self._all_routers())
                log.warning("router replica %x went silent; dropped its %d requests", router_id, dropped)

    # ----- replica sync -----------------------------------------------------------------------

    def sync_publisher(self, subject: str, router_id: int) -> Callable[[RouterSyncEvent], None]:
        """``KvRouter(publish=...)`` for the router ``router_id``: its load updates go out on ``subject``."""
        first = not self._local_replicas
        self._local_replicas.setdefault(subject, set()).add(router_id)
        if first:
            self.runtime.spawn(self._publish_sync(), "router-sync-publisher")
            self.runtime.spawn(self._heartbeat(), "router-sync-heartbeat")
        outbox = self._outbox

        def publish(event: RouterSyncEvent) -> None:
            outbox.put_nowait((subject, event))

        return publish

    async def _publish_sync(self) -> None:
        events = await self.runtime.event_plane()
        while True:
            pending = [await self._outbox.get()]
            while not self._outbox.empty():
                pending.append(self._outbox.get_nowait())
            by_subject: dict[str, list[RouterSyncEvent]] = {}
            for subject, event in pending:
                by_subject.setdefault(subject, []).append(event)
            for subject, batch in by_subject.items():
                try:
                    await events.publish(subject, encode_sync_events(batch))
                except Exception as exc:
                    log.warning("could not publish %d router sync events: %s", len(batch), exc)

    async def _heartbeat(self) -> None:
        events = await self.runtime.event_plane()
        while True:
            for subject, ids in self._local_replicas.items():
                try:
                    await events.publish(subject + ALIVE_SUFFIX, _ids_encoder.encode(sorted(ids)))
                except Exception as exc:
                    log.debug("router heartbeat not published: %s", exc)
            await asyncio.sleep(HEARTBEAT_INTERVAL)

    def _on_sync(self, payload: bytes) -> None:
        local = {rid for ids in self._local_replicas.values() for rid in ids}
        now = time.monotonic()
        for event in decode_sync_events(payload):
            if event.router_id in local:
                continue  # our own update, echoed back
            self._replicas_seen[event.router_id] = now
            if isinstance(event, SyncAddRequest):
                targets: Iterable[KvRouter] = self._routers_of(event.worker_id)
            else:
                targets = self._all_routers()
            for router in targets:
                router.apply_sync_event(event)

    def _on_alive(self, payload: bytes) -> None:
        local = {rid for ids in self._local_replicas.values() for rid in ids}
        now = time.monotonic()
        for router_id in _ids_decoder.decode(payload):
            if router_id not in local:
                self._replicas_seen[router_id] = now

    # ----- the event plane --------------------------------------------------------------------

    def _catch_up(self) -> None:
        """The event plane came back: events published while this process was cut off never arrive,
        and a worker that published nothing since would go unnoticed until its next event. Ask every
        indexed worker for the events after the last one applied (duplicates are skipped)."""
        asked = 0
        for router in list(self._all_routers()):
            index = router.index
            if not isinstance(index, KvIndexer):
                continue
            for worker in index.workers():
                index.ask_for_tail(worker, "the event plane reconnected")
                asked += 1
        log.info(
            "event plane reconnected: asked %d worker(s) for the KV events they published meanwhile", asked
        )

    async def _follow(self) -> None:
        events = await self.runtime.event_plane()
        events.on_reconnect(self._catch_up)
        async for subject, payload in events.subscribe(self._subscription):
            try:
                if subject.endswith(".kv_events"):
                    batch = kv_events.decode_event_batch(payload)
                    for router in self._routers_of(batch.worker_id):
                        router.on_kv_events(batch)
                elif subject.endswith(".load_metrics"):
                    metrics = kv_events.decode_load_metrics(payload)
                    for router in self._routers_of(metrics.worker_id):
                        router.on_load_metrics(metrics)
                elif not self.replica_sync:
                    continue
                elif subject.endswith(".router_sync"):
                    self._on_sync(payload)
                elif subject.endswith(".router_sync" + ALIVE_SUFFIX):
                    self._on_alive(payload)
            except Exception as exc:
                log.debug("ignoring event on %s: %s", subject, exc)
