"""Traffic signals: frontends' /metrics scraped over real HTTP and summed across processes (a
restarted one counted whole), a Prometheus server's answers (a stand-in server: no Prometheus here);
the planner loop's decisions through the virtual connector into a real file store."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest

from dynamo.frontend.metrics import FrontendMetrics
from dynamo.planner.config import PlannerConfig
from dynamo.planner.connector import ScalingDecision, VirtualConnector, create_connector, read_decision
from dynamo.planner.metrics import PlannerMetrics
from dynamo.planner.observation import WorkerLoad
from dynamo.planner.planner import Planner
from dynamo.planner.policy import ThresholdPolicy
from dynamo.planner.traffic import PrometheusSource, ScrapeSource, parse_totals
from dynamo.runtime.store import FileStore

pytestmark = pytest.mark.timeout(60)


class FakeFrontend:
    """A real HTTP server exposing a real ``FrontendMetrics`` registry, as one frontend process."""

    def __init__(self) -> None:
        self.new_registry()
        self.runner: web.AppRunner | None = None
        self.port = 0

    def new_registry(self) -> None:
        self.registry = CollectorRegistry()
        self.metrics = FrontendMetrics(self.registry, lambda: [])

    def serve(self, model: str, *, isl: int, osl: int, ttft: float, itl: float, count: int = 1) -> None:
        mm = self.metrics.model(model)
        for _ in range(count):
            mm.isl.observe(isl)
            mm.osl.observe(osl)
            mm.ttft.observe(ttft)
            mm.itl.observe(itl)
            mm.duration.observe(ttft + itl * osl)
            mm.requests("chat_completions", "stream", "200").inc()

    async def start(self) -> str:
        app = web.Application()

        async def metrics(_req: web.Request) -> web.Response:
            return web.Response(body=generate_latest(self.registry), content_type="text/plain")

        app.router.add_get("/metrics", metrics)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"http://127.0.0.1:{self.port}/metrics"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def frontends() -> AsyncIterator[list[FakeFrontend]]:
    fronts = [FakeFrontend(), FakeFrontend()]
    try:
        yield fronts
    finally:
        for f in fronts:
            await f.stop()


async def test_scraping_sums_every_frontend_process(frontends: list[FakeFrontend]) -> None:
    a, b = frontends
    urls = [await a.start(), await b.start()]
    source = ScrapeSource(urls, model="m")
    a.serve("m", isl=100, osl=10, ttft=0.5, itl=0.01, count=3)  # before the baseline: not counted
    assert await source.sample() is None
    a.serve("m", isl=100, osl=10, ttft=0.2, itl=0.01, count=2)
    b.serve("m", isl=400, osl=30, ttft=0.8, itl=0.03, count=2)
    b.serve("other", isl=9999, osl=9999, ttft=9, itl=9)  # another model: filtered out
    t = await source.sample()
    assert t is not None
    assert t.requests == 4
    assert t.isl == pytest.approx((2 * 100 + 2 * 400) / 4)
    assert t.osl == pytest.approx((2 * 10 + 2 * 30) / 4)
    assert t.ttft_s == pytest.approx((2 * 0.2 + 2 * 0.8) / 4)  # the clients' TTFT, queueing included
    assert t.itl_s == pytest.approx(0.02)
    # b restarts (its counters start over): its new totals count whole, a's increase as usual.
    b.new_registry()
    b.serve("m", isl=200, osl=20, ttft=0.4, itl=0.02, count=1)
    a.serve("m", isl=100, osl=10, ttft=0.2, itl=0.01, count=1)
    t = await source.sample()
    assert t is not None and t.requests == 2 and t.isl == pytest.approx(150)
    # A frontend that stops answering is left out; the other still counts.
    await b.stop()
    a.serve("m", isl=100, osl=10, ttft=0.2, itl=0.01, count=5)
    t = await source.sample()
    assert t is not None and t.requests == 5
    await source.close()


def test_parse_totals_reads_the_frontend_families() -> None:
    f = FakeFrontend()
    f.serve("m", isl=10, osl=5, ttft=0.1, itl=0.01, count=2)
    totals = parse_totals(generate_latest(f.registry).decode())
    assert (totals.requests, totals.isl_sum, totals.isl_count, totals.osl_sum) == (2, 20, 2, 10)


async def test_prometheus_source_against_a_stand_in_server() -> None:
    """A stand-in for Prometheus's HTTP API (none runs here): it checks what the planner asks."""
    asked: list[dict[str, Any]] = []
    answers = {
        "dynamo_frontend_requests_total": 30,
        "dynamo_frontend_input_sequence_tokens_sum": 3000,
        "dynamo_frontend_input_sequence_tokens_count": 30,
        "dynamo_frontend_time_to_first_token_seconds_sum": 6.0,
        "dynamo_frontend_time_to_first_token_seconds_count": 30,
    }

    async def query(req: web.Request) -> web.Response:
        q = req.query["query"]
        asked.append(
            {"query": q, "auth": req.headers.get("Authorization"), "tenant": req.query.get("tenant")}
        )
        metric = q.split("increase(")[1].split("{")[0].split("[")[0]
        value = answers.get(metric, 0)
        return web.json_response(
            {
                "status": "success",
                "data": {"resultType": "vector", "result": [{"metric": {}, "value": [0, str(value)]}]},
            }
        )

    app = web.Application()
    app.router.add_get("/api/v1/query", query)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        source = PrometheusSource(f"http://127.0.0.1:{port}", "m", token="t0k", extra_params={"tenant": "a"})
        assert await source.sample() is None
        await asyncio.sleep(1.1)
        t = await source.sample()
        assert t is not None and t.requests == 30 and t.isl == 100 and t.ttft_s == pytest.approx(0.2)
        assert t.osl is None  # no output tokens counted
        assert all(a["auth"] == "Bearer t0k" and a["tenant"] == "a" for a in asked)
        assert 'dynamo_frontend_requests_total{model="m"}[1s]' in asked[0]["query"]
        await source.close()
    finally:
        await runner.cleanup()


# -- the loop, through the virtual connector into a real file store -----------------------------------


class StandInWorkers:
    """Stand-in for ``WorkerView`` (no runtime): ready counts and load reports set by the test."""

    def __init__(self) -> None:
        self.ready_count = 1
        self.kv_blocks = 0

    def ready(self, roles: tuple[str, ...]) -> dict[str, int]:
        return {"decode": self.ready_count}

    def loads(self) -> list[WorkerLoad]:
        return [WorkerLoad(i, "decode", 1, 0, self.kv_blocks, 64) for i in range(self.ready_count)]

    def model_facts(self) -> tuple[int | None, int]:
        return 2048, 16


async def test_planner_never_waits_for_a_pending_scale_up(tmp_path: Path) -> None:
    config = PlannerConfig(
        environment="virtual",
        namespace="ns",
        mode="agg",
        optimization_target="load",
        decode_scale_up_kv_rate=60,
        decode_scale_down_kv_rate=10,
        load_adjustment_interval_seconds=1,
        scale_up_timeout_seconds=3,
        max_gpu_budget=4,
        log_dir=str(tmp_path / "log"),
    )
    store = FileStore(tmp_path / "store")
    now = [0.0]
    workers = StandInWorkers()
    registry = CollectorRegistry()
    planner = Planner(
        config,
        ThresholdPolicy(config),
        workers,
        None,
        create_connector(config, store),
        PlannerMetrics(registry),
        clock=lambda: now[0],
    )
    targets = []

    async def step() -> int:
        decision = await planner.step()
        stored = await read_decision(store, "ns")
        assert stored is not None and stored.generation == decision.generation
        targets.append(stored.targets["decode"])
        now[0] += 1
        return stored.targets["decode"]

    workers.kv_blocks = 60  # 94%: overloaded
    assert await step() == 2  # up
    assert await step() == 2  # the new replica is young: waited for, not asked twice
    assert await step() == 2
    assert await step() == 3  # 3 s without it: stuck; still overloaded, so one more is asked for
    workers.kv_blocks = 30  # 47%: between thresholds
    assert await step() == 3  # hold: the new ask is young again, both missing replicas are waited for
    workers.ready_count = 2  # the second ask's replica is up; the first one never comes
    assert await step() == 3
    assert await step() == 2  # 3 s since the last ask: the missing one is stuck and dropped
    workers.kv_blocks = 0
    assert await step() == 1  # down, from what is ready
    assert await step() == 1  # never under min_endpoint
    assert (
        registry.get_sample_value("dynamo_planner_decisions_total", {"pool": "decode", "change": "up"}) == 2
    )
    assert registry.get_sample_value("dynamo_planner_target_replicas", {"pool": "decode"}) == 1
    log_lines = (tmp_path / "log" / "decisions.jsonl").read_text().splitlines()
    assert [json.loads(line)["targets"]["decode"] for line in log_lines] == targets
    assert "max_kv_use" in json.loads(log_lines[0])["inputs"]


async def test_advisory_decides_but_does_not_publish(tmp_path: Path) -> None:
    config = PlannerConfig(environment="virtual", namespace="ns", mode="agg", advisory=True)
    store = FileStore(tmp_path / "store")
    planner = Planner(
        config,
        ThresholdPolicy(config),
        StandInWorkers(),
        None,
        create_connector(config, store),
        PlannerMetrics(CollectorRegistry()),
    )
    decision = await planner.step()
    assert decision.targets == {"decode": 1}
    assert await read_decision(store, "ns") is None


async def test_decisions_expire_and_bad_ones_are_ignored(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    connector = VirtualConnector(store, ttl=0.5)
    await connector.apply(ScalingDecision(namespace="ns", generation=1, targets={"decode": 2}))
    assert (await read_decision(store, "ns")).targets == {"decode": 2}  # type: ignore[union-attr]
    await asyncio.sleep(0.7)
    assert await read_decision(store, "ns") is None
    await store.put("v1/store/ns/planner/decision", b"not json", 10)
    assert await read_decision(store, "ns") is None
