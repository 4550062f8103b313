"""What every engine worker (vLLM, SGLang, TRT-LLM, mocker) does around its engine.

Journey: the frontend's ``PreprocessedRequest`` arrives on the request plane -> **this module's
handler** -> ``engine.generate`` -> ``EngineOutput`` chunks stream back. Around that it registers
the model deployment card (and serves the card's files, so a frontend on another machine can build
the tokenizer), relays the engine's KV events and periodic load metrics to the event plane, answers
routers that resynchronise (``/kv_replay``: missed events; ``/kv_snapshot``: the cached block set),
turns ``/health`` ready, logs ``Worker ... initialized`` (readiness probes grep for it), and on
SIGTERM deregisters, drains and stops the engine.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, Protocol

from prometheus_client import Counter, Gauge

from dynamo.llm import kv_events
from dynamo.llm.kv_events import KvEventBatch, LoadMetrics
from dynamo.llm.model_card import ModelDeploymentCard
from dynamo.llm.protocols import EngineOutput, PreprocessedRequest, request_from_wire
from dynamo.runtime import DistributedRuntime, EndpointId, RequestContext
from dynamo.runtime.runtime import handler_name

log = logging.getLogger(__name__)

FILES_SUFFIX = "/files"
KV_REPLAY_SUFFIX = "/kv_replay"
KV_SNAPSHOT_SUFFIX = "/kv_snapshot"
LOAD_METRICS_INTERVAL = 1.0
KV_EVENT_HISTORY = 1024


class Engine(Protocol):
    """The engine side every worker adapts to."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def generate(self, req: PreprocessedRequest) -> AsyncIterator[EngineOutput]: ...

    def load_metrics(self) -> LoadMetrics: ...


def files_endpoint_name(endpoint: EndpointId) -> str:
    """Request-plane name of the handler that serves a card's files."""
    return handler_name(endpoint) + FILES_SUFFIX


def kv_replay_endpoint_name(endpoint: EndpointId) -> str:
    """Request-plane name of the handler that replays recent KV events (router resync)."""
    return handler_name(endpoint) + KV_REPLAY_SUFFIX


def kv_snapshot_endpoint_name(endpoint: EndpointId) -> str:
    """Request-plane name of the handler that sends the cached block set (router full resync)."""
    return handler_name(endpoint) + KV_SNAPSHOT_SUFFIX


class CachedBlocks:
    """An engine's cached blocks as its own KV events describe them: what a router's index should
    hold for this worker. Per block: engine hash -> (parent engine hash, local tokens hash)."""

    __slots__ = ("blocks", "last_event_id")

    def __init__(self) -> None:
        self.blocks: dict[int, tuple[int | None, int]] = {}
        self.last_event_id = -1

    def apply(self, event: kv_events.KvEvent) -> None:
        data = event.data
        if isinstance(data, kv_events.KvStored):
            parent = data.parent_hash
            for block in data.blocks:
                self.blocks[block.block_hash] = (parent, block.tokens_hash)
                parent = block.block_hash
        elif isinstance(data, kv_events.KvRemoved):
            for block_hash in data.block_hashes:
                self.blocks.pop(block_hash, None)
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


class KvEventRelay:
    """Takes KV event batches from an engine (sync ``sink``) and publishes them in order.

    Keeps the last ``KV_EVENT_HISTORY`` events so a router that missed some (a gap in event ids)
    can ask for them, and the cached block set (``CachedBlocks``) for a router that started late
    or lost more than the history holds.
    """

    def __init__(self, runtime: DistributedRuntime, endpoint: EndpointId) -> None:
        self.runtime = runtime
        self.subject = kv_events.kv_events_subject(endpoint.namespace, endpoint.component)
        self._queue: asyncio.Queue[KvEventBatch] = asyncio.Queue()
        self.history: collections.deque[kv_events.KvEvent] = collections.deque(maxlen=KV_EVENT_HISTORY)
        self.cached: dict[int, CachedBlocks] = {}  # dp rank -> its blocks
        self._task: asyncio.Task[None] | None = None

    def sink(self, batch: KvEventBatch) -> None:
        """Hand a batch over (called from the engine; never blocks)."""
        self.history.extend(batch.events)
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

    def replay(self, since_event_id: int) -> list[kv_events.KvEvent] | None:
        """Events after ``since_event_id``; None when they are no longer all held."""
        if self.history and self.history[0].event_id > since_event_id + 1:
            return None
        return [e for e in self.history if e.event_id > since_event_id]

    def snapshot(self, worker_id: int, dp_rank: int = 0) -> KvEventBatch:
        """Every cached block of ``dp_rank`` as of the last event handed over (see ``CachedBlocks``)."""
        cached = self.cached.get(dp_rank)
        return (cached or CachedBlocks()).snapshot(worker_id, dp_rank)


async def serve_engine(
    runtime: DistributedRuntime,
    endpoint: EndpointId,
    card: ModelDeploymentCard,
    engine: Engine,
    *,
    relay: KvEventRelay | None = None,
    worker_name: str = "Worker",
) -> None:
    """Register ``engine`` under ``endpoint`` with ``card`` and start its background publishers.

    The engine must already be started. Returns once the instance is discoverable and ready.
    """
    files = card.read_files()
    inflight = Gauge("dynamo_worker_inflight_requests", "requests being generated", registry=runtime.metrics)
    handled = Counter(
        "dynamo_worker_requests",
        "requests by outcome (completed, cancelled, error)",
        ["outcome"],
        registry=runtime.metrics,
    )

    async def generate(request: Any, ctx: RequestContext) -> AsyncGenerator[EngineOutput, None]:
        req = request_from_wire(request)
        inflight.inc()
        outcome = "error"
        try:
            async for out in engine.generate(req):
                yield out
            outcome = "completed"
        except (asyncio.CancelledError, GeneratorExit):
            outcome = "cancelled"
            raise
        finally:
            inflight.dec()
            handled.labels(outcome).inc()

    async def serve_files(request: Any, ctx: RequestContext) -> AsyncGenerator[dict[str, bytes], None]:
        names = request.get("names") if isinstance(request, dict) else None
        yield {n: files[n] for n in (names or files) if n in files}

    async def kv_replay(request: Any, ctx: RequestContext) -> AsyncGenerator[Any, None]:
        since = int(request.get("since_event_id", -1)) if isinstance(request, dict) else -1
        events = relay.replay(since) if relay is not None else None
        yield {"events": events}

    async def kv_snapshot(request: Any, ctx: RequestContext) -> AsyncGenerator[Any, None]:
        rank = int(request.get("dp_rank", 0)) if isinstance(request, dict) else 0
        batch = relay.snapshot(runtime.instance_id, rank) if relay is not None else None
        yield {"batch": kv_events.encode(batch) if batch is not None else None}

    server = await runtime.request_server()
    server.register(files_endpoint_name(endpoint), serve_files)
    server.register(kv_replay_endpoint_name(endpoint), kv_replay)
    server.register(kv_snapshot_endpoint_name(endpoint), kv_snapshot)
    # The first load report opens this process's event publisher before the instance is
    # discoverable, so routers are listening by the time its first KV events go out.
    await _report_load(runtime, endpoint, engine)
    if relay is not None:
        relay.start()
    runtime.spawn(_publish_load(runtime, endpoint, engine), "load-metrics")
    await runtime.serve_endpoint(endpoint, generate, model_card=card.to_json())
    runtime.set_ready()
    log.info(
        "%s %x initialized: serving model '%s' on %s",
        worker_name,
        runtime.instance_id,
        card.display_name,
        endpoint,
    )


async def _publish_load(runtime: DistributedRuntime, endpoint: EndpointId, engine: Engine) -> None:
    while True:
        await asyncio.sleep(LOAD_METRICS_INTERVAL)
        await _report_load(runtime, endpoint, engine)


async def _report_load(runtime: DistributedRuntime, endpoint: EndpointId, engine: Engine) -> None:
    try:
        events = await runtime.event_plane()
        metrics = engine.load_metrics()
        metrics.worker_id = runtime.instance_id
        subject = kv_events.load_metrics_subject(endpoint.namespace, endpoint.component)
        await events.publish(subject, kv_events.encode(metrics))
    except Exception as exc:
        log.debug("load metrics not published: %s", exc)


async def run_until_shutdown(runtime: DistributedRuntime, engine: Engine) -> None:
    """Wait for SIGTERM/SIGINT, then deregister, drain, stop the engine and revoke the lease."""
    runtime.install_signal_handlers()
    await runtime.wait_for_shutdown()
    try:
        await runtime.shutdown()
    finally:
        with contextlib.suppress(Exception):
            await engine.stop()
