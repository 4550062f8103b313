"""What every engine worker (vLLM, SGLang, TRT-LLM, mocker) does around its engine.

Journey: the frontend's ``PreprocessedRequest`` arrives on the request plane -> **this module's
handler** -> ``engine.generate`` -> ``EngineOutput`` chunks stream back. Around that it registers
the model deployment card (and serves the card's files, so a frontend on another machine can build
the tokenizer), relays the engine's KV events and periodic load metrics to the event plane, answers
routers that resynchronise (``/kv_replay``: missed events; ``/kv_snapshot``: the cached block set),
turns ``/health`` ready, logs ``Worker ... initialized`` (readiness probes grep for it), and on
SIGTERM deregisters, drains and stops the engine. ``run_engine_worker`` is that whole life for a
worker ``main`` (vLLM, SGLang, TRT-LLM): start, card (``load_card``), serve, wait, shut down.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import sys
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, NoReturn, Protocol

from prometheus_client import Counter, Gauge

from dynamo.llm import kv_events
from dynamo.llm.kv_events import KvEventBatch, LoadMetrics
from dynamo.llm.model_card import ModelDeploymentCard, RuntimeFacts
from dynamo.llm.protocols import EngineOutput, PreprocessedRequest, request_from_wire
from dynamo.runtime import DistributedRuntime, EndpointId, RequestContext
from dynamo.runtime.names import default_namespace
from dynamo.runtime.runtime import handler_name

log = logging.getLogger(__name__)

BACKEND_COMPONENT = "backend"
PREFILL_COMPONENT = "prefill"
GENERATE_ENDPOINT = "generate"
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


class EngineFacts(Protocol):
    """What a started engine tells the model card (context length, KV block size, capacity)."""

    @property
    def context_length(self) -> int | None: ...

    @property
    def kv_cache_block_size(self) -> int: ...

    @property
    def total_kv_blocks(self) -> int | None: ...

    @property
    def max_num_seqs(self) -> int | None: ...

    @property
    def max_num_batched_tokens(self) -> int | None: ...


def worker_endpoint(endpoint: str | None, namespace: str | None, *, prefill: bool = False) -> EndpointId:
    """The endpoint an engine worker serves: ``--endpoint`` as given, else
    ``dyn://<namespace>.backend.generate`` (prefill workers: ``dyn://<namespace>.prefill.generate``);
    the namespace defaults to ``DYN_NAMESPACE``. ``ValueError`` when ``--namespace`` contradicts
    ``--endpoint``."""
    if endpoint:
        parsed = EndpointId.parse(endpoint, namespace or default_namespace())
        if namespace and namespace != parsed.namespace:
            raise ValueError(f"--namespace {namespace} contradicts --endpoint {endpoint}")
        return parsed
    component = PREFILL_COMPONENT if prefill else BACKEND_COMPONENT
    return EndpointId(namespace or default_namespace(), component, GENERATE_ENDPOINT)


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


async def load_card(
    model: str,
    engine: EngineFacts,
    *,
    served_model_name: str | None,
    migration_limit: int = 0,
    role: str | None = None,
    bootstrap_address: str | None = None,
) -> ModelDeploymentCard:
    """The card of ``model`` (a local folder, or a hub name whose card files are fetched) with the
    started engine's facts; ``role`` is ``prefill``/``decode`` for a disaggregated worker. The files
    are read off the event loop."""
    facts = RuntimeFacts(
        total_kv_blocks=engine.total_kv_blocks,
        max_num_seqs=engine.max_num_seqs,
        max_num_batched_tokens=engine.max_num_batched_tokens,
        disaggregation_role=role,
        bootstrap_address=bootstrap_address,
    )
    return await asyncio.to_thread(
        ModelDeploymentCard.from_local_path,
        model,
        served_model_name=served_model_name,
        context_length=engine.context_length,
        kv_cache_block_size=engine.kv_cache_block_size,
        migration_limit=migration_limit,
        runtime=facts,
    )


async def run_engine_worker(
    runtime: DistributedRuntime,
    endpoint: EndpointId,
    engine: Engine,
    make_card: Callable[[], Awaitable[ModelDeploymentCard]],
    *,
    relay: KvEventRelay | None = None,
    worker_name: str = "Worker",
    engine_name: str = "engine",
    start_errors: tuple[type[Exception], ...] = (Exception,),
) -> int:
    """An engine worker's life after its runtime is up: start ``engine``, build its card
    (``make_card``, once the engine runs), serve it under ``endpoint`` and wait for SIGTERM/SIGINT.

    Returns the exit code: 0 after a graceful shutdown, 1 when the engine did not start (one of
    ``start_errors``) or the worker could not register; both are logged as one line and the runtime
    is shut down.
    """
    try:
        await engine.start()
    except start_errors as exc:
        log.error("%s engine failed to start: %s", engine_name, exc)
        log.debug("engine start failure", exc_info=True)
        await runtime.shutdown()
        return 1
    try:
        card = await make_card()
        await serve_engine(runtime, endpoint, card, engine, relay=relay, worker_name=worker_name)
    except Exception as exc:
        log.error("%s worker failed to register: %s", engine_name, exc)
        log.debug("registration failure", exc_info=True)
        await runtime.shutdown()
        await engine.stop()
        return 1
    await run_until_shutdown(runtime, engine)
    return 0


async def run_until_shutdown(runtime: DistributedRuntime, engine: Engine) -> None:
    """Wait for SIGTERM/SIGINT, then deregister, drain, stop the engine and revoke the lease."""
    runtime.install_signal_handlers()
    await runtime.wait_for_shutdown()
    try:
        await runtime.shutdown()
    finally:
        with contextlib.suppress(Exception):
            await engine.stop()


def exit_with(main: Coroutine[Any, Any, int]) -> NoReturn:
    """Run a worker process's main coroutine on uvloop and exit with its code.

    Bad settings, unreachable etcd/NATS or a port in use end with one error line and exit 2.
    """
    try:
        import uvloop

        code = uvloop.run(main)
    except (ValueError, OSError) as exc:
        log.error("%s", exc)
        code = 2
    sys.exit(code)
