"""A started engine made reachable: request-plane handlers, load reports, registration, readiness.

Journey: the frontend's ``PreprocessedRequest`` arrives on the request plane -> **``generate``
handler here** -> the engine (through the decode step when it takes KV transfers) -> ``EngineOutput``
chunks stream back; on an embedding worker, the ``/embed`` handler (``EmbedRequest`` in, one
``EmbedOutput`` per input back). Beside it: ``/files`` (the card's files, for a frontend on another machine),
``/kv_replay`` and ``/kv_snapshot`` (router resyncs), a load report on the event plane every
second, then the instance and its card in discovery, ``/health`` ready, and the readiness line
``<label> <id> initialized: serving model '<name>' on <endpoint>`` that probes grep for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Callable
from typing import Any, TypeVar

import msgspec
from prometheus_client import Counter, Gauge

from dynamo.llm import kv_events
from dynamo.llm.endpoints import (
    EmbedOutput,
    EmbedRequest,
    FilesRequest,
    KvReplayReply,
    KvReplayRequest,
    KvSnapshotReply,
    KvSnapshotRequest,
    embed_endpoint_name,
    files_endpoint_name,
    kv_replay_endpoint_name,
    kv_snapshot_endpoint_name,
)
from dynamo.llm.kv_events import LoadMetrics
from dynamo.llm.model_card import ModelDeploymentCard
from dynamo.llm.protocols import EngineOutput, PreprocessedRequest, request_from_wire
from dynamo.runtime import DistributedRuntime, EndpointId, RequestContext
from dynamo.worker.kv_publisher import KvEventPublisher

_Out = TypeVar("_Out")

log = logging.getLogger(__name__)

LOAD_METRICS_INTERVAL = 1.0

GenerateFn = Callable[[PreprocessedRequest], AsyncGenerator[EngineOutput, None]]
LoadFn = Callable[[], LoadMetrics]
EmbedFn = Callable[[EmbedRequest], AsyncGenerator[EmbedOutput, None]]


async def serve_engine(
    runtime: DistributedRuntime,
    endpoint: EndpointId,
    card: ModelDeploymentCard,
    generate: GenerateFn,
    load_metrics: LoadFn,
    *,
    kv_publisher: KvEventPublisher | None = None,
    label: str = "Worker",
    embed: EmbedFn | None = None,
) -> None:
    """Register a started engine under ``endpoint`` with ``card`` and start its publishers;
    ``embed``: the engine's ``embed``, served on ``/embed`` (embedding workers).

    Returns once the instance is discoverable and ready.
    """
    files = card.read_files()
    inflight = Gauge("dynamo_worker_inflight_requests", "requests being generated", registry=runtime.metrics)
    handled = Counter(
        "dynamo_worker_requests",
        "requests by outcome (completed, cancelled, error)",
        ["outcome"],
        registry=runtime.metrics,
    )

    async def counted(start: Callable[[], AsyncGenerator[_Out, None]]) -> AsyncGenerator[_Out, None]:
        """The outputs of ``start()`` (called on the first read, so a malformed request fails this
        stream, not the server), counted in flight and by outcome, and closed with this stream (a
        caller that leaves stops the engine's work at once)."""
        inflight.inc()
        outcome = "error"
        try:
            async with contextlib.aclosing(start()) as outputs:
                async for out in outputs:
                    yield out
            outcome = "completed"
        except (asyncio.CancelledError, GeneratorExit):
            outcome = "cancelled"
            raise
        finally:
            inflight.dec()
            handled.labels(outcome).inc()

    def generate_handler(request: Any, ctx: RequestContext) -> AsyncGenerator[EngineOutput, None]:
        return counted(lambda: generate(request_from_wire(request)))

    def embed_handler(request: Any, ctx: RequestContext) -> AsyncGenerator[EmbedOutput, None]:
        assert embed is not None
        return counted(lambda: embed(msgspec.convert(request, EmbedRequest)))

    async def serve_files(request: Any, ctx: RequestContext) -> AsyncGenerator[dict[str, bytes], None]:
        names = msgspec.convert(request or {}, FilesRequest).names
        yield {n: files[n] for n in (names or files) if n in files}

    async def kv_replay(request: Any, ctx: RequestContext) -> AsyncGenerator[KvReplayReply, None]:
        asked = msgspec.convert(request or {}, KvReplayRequest)
        yield KvReplayReply(
            kv_publisher.replay(asked.since_event_id, asked.dp_rank) if kv_publisher is not None else None
        )

    async def kv_snapshot(request: Any, ctx: RequestContext) -> AsyncGenerator[KvSnapshotReply, None]:
        rank = msgspec.convert(request or {}, KvSnapshotRequest).dp_rank
        batch = kv_publisher.snapshot(runtime.instance_id, rank) if kv_publisher is not None else None
        yield KvSnapshotReply(kv_events.encode(batch) if batch is not None else None)

    server = await runtime.request_server()
    server.register(files_endpoint_name(endpoint), serve_files)
    if embed is not None:
        server.register(embed_endpoint_name(endpoint), embed_handler)
    server.register(kv_replay_endpoint_name(endpoint), kv_replay)
    server.register(kv_snapshot_endpoint_name(endpoint), kv_snapshot)
    # The first load report opens this process's event publisher before the instance is
    # discoverable, so routers are listening by the time its first KV events go out.
    await _report_load(runtime, endpoint, load_metrics, kv_publisher)
    if kv_publisher is not None:
        kv_publisher.start()
    runtime.spawn(_publish_load(runtime, endpoint, load_metrics, kv_publisher), "load-metrics")
    await runtime.serve_endpoint(endpoint, generate_handler, model_card=card.to_json())
    runtime.set_ready()
    log.info(
        "%s %x initialized: serving model '%s' on %s", label, runtime.instance_id, card.display_name, endpoint
    )


async def _publish_load(
    runtime: DistributedRuntime,
    endpoint: EndpointId,
    load_metrics: LoadFn,
    kv_publisher: KvEventPublisher | None,
) -> None:
    while True:
        await asyncio.sleep(LOAD_METRICS_INTERVAL)
        await _report_load(runtime, endpoint, load_metrics, kv_publisher)


async def _report_load(
    runtime: DistributedRuntime,
    endpoint: EndpointId,
    load_metrics: LoadFn,
    kv_publisher: KvEventPublisher | None,
) -> None:
    try:
        events = await runtime.event_plane()
        metrics = load_metrics()
        metrics.worker_id = runtime.instance_id
        if kv_publisher is not None:
            metrics.kv_last_event_id = kv_publisher.last_sent_event_id(metrics.dp_rank)
        subject = kv_events.load_metrics_subject(endpoint.namespace, endpoint.component)
        await events.publish(subject, kv_events.encode(metrics))
    except Exception as exc:
        log.debug("load metrics not published: %s", exc)
