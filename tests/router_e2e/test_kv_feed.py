"""``KvFeed`` in one process with real parts: runtimes on in-memory discovery, the ZeroMQ event
plane and the TCP request plane over loopback, a real ``MockEngine`` behind ``serve_engine``.

Covers what the process-level tests cannot force: a router that lost events catches up through
the worker's ``/kv_replay`` (on the next event's gap, or when its NATS connection comes back: a
real nats-server restarted), and a replica that goes silent has its load predictions dropped.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import pytest
import pytest_asyncio
from prometheus_client import generate_latest

from dynamo.llm.model_card import ModelDeploymentCard
from dynamo.llm.protocols import PreprocessedRequest, StopConditions
from dynamo.mocker.config import MockerConfig
from dynamo.mocker.engine import MockEngine
from dynamo.router import KvRouter, KvRouterConfig
from dynamo.router import feed as feed_module
from dynamo.router.feed import KvFeed
from dynamo.router.indexer import ResyncRequest
from dynamo.router.sync_events import router_sync_subject
from dynamo.runtime import DistributedRuntime, EndpointId, RuntimeConfig
from dynamo.worker.kv_publisher import KvEventPublisher
from dynamo.worker.serve import serve_engine
from tests.support.graph import metric_value
from tests.support.servers import NatsServer

pytestmark = [pytest.mark.timeout(60)]
BLOCK = 16
NS = "feed-test"
ENDPOINT = EndpointId(NS, "backend", "generate")


def config() -> RuntimeConfig:
    return RuntimeConfig(namespace=NS, discovery_backend="mem", event_plane="zmq", tcp_host="127.0.0.1")


async def eventually(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def prompt(base: int) -> list[int]:
    return [base + i for i in range(10 * BLOCK)]


@pytest_asyncio.fixture
async def runtimes() -> AsyncIterator[list[DistributedRuntime]]:
    made: list[DistributedRuntime] = []
    yield made
    for rt in reversed(made):
        await rt.shutdown()


class FedRouter:
    """A mocker engine served by one runtime, a KV router fed by another; while ``lost`` is set the
    worker's events reach the router's process but not the router (as if the network lost them)."""

    def __init__(self, worker: DistributedRuntime, engine: MockEngine, frontend: DistributedRuntime) -> None:
        self.wid = worker.instance_id
        self.engine = engine
        self.frontend = frontend
        self.lost = False
        self.router = KvRouter(KvRouterConfig(block_size=BLOCK), on_resync_needed=self._resync_needed)
        self.feed: KvFeed | None = None

    def _resync_needed(self, request: ResyncRequest) -> None:
        assert self.feed is not None
        self.feed.on_resync_needed(request)

    async def start(self) -> None:
        [record] = await self.frontend.list_instances()
        self.feed = KvFeed(
            self.frontend,
            lambda iid: [self.router] if iid == self.wid and not self.lost else [],
            lambda: [self.router],
            lambda iid: record if iid == self.wid else None,
        )
        self.feed.start()
        self.feed.worker_added(self.wid)

    async def generate(self, base: int) -> None:
        request = PreprocessedRequest(f"r{base}", "m", prompt(base), stop=StopConditions(max_tokens=2))
        async for _ in self.engine.generate(request):
            pass

    def overlap(self, base: int) -> int:
        return self.router.find_overlap(prompt(base)).scores.get(self.wid, 0)

    def resyncs(self, kind: str) -> float | None:
        return metric_value(
            generate_latest(self.frontend.metrics).decode(), "dynamo_router_kv_resyncs_total", kind=kind
        )


@pytest_asyncio.fixture
async def serving_worker(
    runtimes: list[DistributedRuntime], smollm2_tokenizer_dir: Path
) -> AsyncIterator[Callable[[RuntimeConfig], Awaitable[tuple[DistributedRuntime, MockEngine]]]]:
    engines: list[MockEngine] = []

    async def start(cfg: RuntimeConfig) -> tuple[DistributedRuntime, MockEngine]:
        worker = await DistributedRuntime.create(cfg)
        runtimes.append(worker)
        relay = KvEventPublisher(worker, ENDPOINT)
        engine = MockEngine(
            MockerConfig(speedup_ratio=1000.0, num_gpu_blocks=1000, block_size=BLOCK),
            worker.instance_id,
            vocab_size=500,
            kv_event_sink=relay.sink,
        )
        await engine.start()
        engines.append(engine)
        card = ModelDeploymentCard.from_local_path(smollm2_tokenizer_dir, "m", kv_cache_block_size=BLOCK)
        await serve_engine(worker, ENDPOINT, card, engine.generate, engine.load_metrics, kv_publisher=relay)
        return worker, engine

    yield start
    for engine in engines:
        await engine.stop()


async def test_a_router_that_lost_events_catches_up_by_replay(
    runtimes: list[DistributedRuntime], serving_worker
):
    worker, engine = await serving_worker(config())
    await FedRouter(worker, engine, worker).generate(1000)  # cached before the router exists

    frontend = await DistributedRuntime.create(config())
    runtimes.append(frontend)
    fed = FedRouter(worker, engine, frontend)
    await fed.start()
    await eventually(lambda: fed.overlap(1000) == 10, "the snapshot taken when the worker joined")
    await asyncio.sleep(0.5)  # the event plane subscription is connected

    fed.lost = True  # the next events never reach the router
    await fed.generate(2000)
    await asyncio.sleep(0.3)
    assert fed.overlap(2000) == 0
    fed.lost = False
    await fed.generate(3000)  # its event id jumps past the lost ones: a gap
    await eventually(
        lambda: fed.overlap(3000) == 10 and fed.overlap(2000) == 10, "the replay of the lost events"
    )
    assert fed.resyncs("replay") == 1
    assert fed.resyncs("snapshot") == 1
    assert not fed.router.index.pending_resyncs()


async def test_events_lost_at_the_tail_are_asked_for_after_the_next_load_report(
    runtimes: list[DistributedRuntime], serving_worker
):
    """The worker's KV events are lost in transit and it publishes none after them: no gap ever
    shows, but its next load report names its last event, and the router asks for the rest."""
    worker, engine = await serving_worker(config())
    frontend = await DistributedRuntime.create(config())
    runtimes.append(frontend)
    fed = FedRouter(worker, engine, frontend)
    await fed.start()
    await asyncio.sleep(0.5)  # the event plane subscription is connected
    await fed.generate(1000)
    await eventually(lambda: fed.overlap(1000) == 10, "the first events")

    plane = await worker.event_plane()
    publish = plane.publish
    dropped: list[str] = []

    async def lossy(subject: str, payload: bytes) -> None:
        if subject.endswith(".kv_events"):
            dropped.append(subject)  # lost in transit
            return
        await publish(subject, payload)

    plane.publish = lossy  # type: ignore[method-assign]
    await fed.generate(2000)
    await eventually(lambda: bool(dropped), "the lost batch")
    plane.publish = publish  # type: ignore[method-assign]
    assert fed.overlap(2000) == 0
    # The next load report (every second) names the lost events' last id.
    await eventually(lambda: fed.overlap(2000) == 10, "the replay asked for after a load report", timeout=5)
    assert fed.resyncs("replay") == 1


async def test_when_nats_comes_back_the_router_asks_each_worker_for_what_it_missed(
    runtimes: list[DistributedRuntime], serving_worker, log_dir: Path
):
    """Events lost while the router's connection was down, from a worker that publishes nothing after:
    no later event shows the gap, so only the router's own reconnect can start the catch-up."""
    nats = NatsServer(log_dir)
    nats.start()
    try:
        cfg = replace(config(), event_plane="nats", nats_server=nats.url)
        worker, engine = await serving_worker(cfg)
        frontend = await DistributedRuntime.create(cfg)
        runtimes.append(frontend)
        fed = FedRouter(worker, engine, frontend)
        await fed.start()
        await fed.generate(1000)
        await eventually(lambda: fed.overlap(1000) == 10, "the first events over NATS")

        fed.lost = True
        await fed.generate(2000)
        await asyncio.sleep(0.3)
        fed.lost = False
        assert fed.overlap(2000) == 0
        assert nats.proc is not None
        nats.proc.stop()
        nats.start()  # the same port: both clients reconnect
        await eventually(lambda: fed.overlap(2000) == 10, "the catch-up after NATS came back", timeout=20)
        assert fed.resyncs("replay") == 1
    finally:
        nats.cleanup()


async def test_replicas_share_load_and_forget_a_silent_one(
    runtimes: list[DistributedRuntime], monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(feed_module, "HEARTBEAT_INTERVAL", 0.2)
    monkeypatch.setattr(feed_module, "SWEEP_INTERVAL", 0.2)
    monkeypatch.setattr(feed_module, "REPLICA_TIMEOUT", 1.5)
    worker = 0x1234
    subject = router_sync_subject(NS, "backend")
    routers: list[KvRouter] = []
    for _ in range(2):
        rt = await DistributedRuntime.create(config())
        runtimes.append(rt)
        cfg = KvRouterConfig(block_size=BLOCK)
        holder: list[KvRouter] = []
        feed = KvFeed(
            rt,
            lambda iid, h=holder: h if iid == worker else [],
            lambda h=holder: h,
            lambda iid: None,
            replica_sync=True,
        )
        router = KvRouter(cfg, publish=feed.sync_publisher(subject, cfg.router_id))
        holder.append(router)
        feed.start()
        routers.append(router)
    a, b = routers
    await asyncio.sleep(0.5)  # subscriptions connected

    a.select(prompt(1), "done-soon", [worker])
    await eventually(lambda: b.sequences.active_requests(worker) == 1, "replica B to see A's request")
    a.on_finished("done-soon")
    await eventually(lambda: b.sequences.active_requests(worker) == 0, "replica B to see it finish")

    a.select(prompt(1), "orphan", [worker])
    await eventually(lambda: b.sequences.active_requests(worker) == 1, "replica B to see A's second request")
    await runtimes[0].shutdown()  # A dies without freeing: its heartbeats stop
    await eventually(
        lambda: b.sequences.active_requests(worker) == 0, "B to drop the silent replica", timeout=8
    )
