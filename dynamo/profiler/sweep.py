"""The sweep: each candidate engine configuration run for real (a frontend and one aggregated
worker, started by the local runner as their graph's pods would be) and measured over HTTP.

Contract: ``measure_candidate`` starts the candidate's graph under ``run_dir``, waits until the
frontend lists the model (``ready_timeout``), warms the engine with one request, measures the
``SweepPlan``'s prefill points (lone TTFT by ISL) and decode points (ITL by context and
concurrency, concurrency up to the candidate's batch size), then, given a ``ReplaySpec``,
replays the stated workload (``Client.replay``: Poisson arrivals, the request's ISL/OSL) for
``replay_seconds`` at the share of the rate one of n engines would get, n from the spec's first
guess up by one while the SLA attainment stays below the goal (at most ``MAX_REPLAYS`` times,
never past the GPU budget), stops the graph, and returns the ``Measurement``. A graph that exits
or never becomes ready raises ``SweepError`` with the tail of the runner's report (which names
the failing process and its log).

Journey: profiling only: **sweep** -> select -> generate.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from dynamo.deploy.plan import plan_graph
from dynamo.deploy.request import DeploymentRequest
from dynamo.deploy.runner import GraphRunner
from dynamo.deploy.spec import parse_graph
from dynamo.planner.profile import PerformanceProfile, parse_profile
from dynamo.profiler.engines import Candidate, Engine
from dynamo.profiler.generate import measure_graph
from dynamo.profiler.measure import Client, MeasureError

log = logging.getLogger(__name__)

MAX_REPLAYS = 3  # replays of the workload per candidate (n, n+1, n+2 engines' share of the rate)


class SweepError(RuntimeError):
    """A candidate could not be measured; the message says which and why."""


@dataclass(frozen=True)
class SweepPlan:
    """Which points to measure."""

    isls: tuple[int, ...]
    contexts: tuple[int, ...]
    gen: int  # tokens each decode stream generates
    repeats: int  # lone requests per prefill point (the median is kept)
    thorough: bool = False
    replay_seconds: float = 0.0  # the stated workload replayed for this long (0: not replayed)

    def concurrencies(self, candidate: Candidate) -> list[int]:
        """Powers of two up to the batch size, and the batch size (``rapid``: 1, half, full)."""
        top = max(1, candidate.batch)
        if not self.thorough:
            return sorted({1, max(1, top // 2), top})
        out, c = {top}, 1
        while c < top:
            out.add(c)
            c *= 2
        return sorted(out)


def sweep_plan(request: DeploymentRequest) -> SweepPlan:
    """The points for a request's ISL/OSL and ``searchStrategy``."""
    isl, osl = request.isl, request.osl
    thorough = request.search_strategy == "thorough"
    factors = (0.25, 0.5, 1.0, 1.5, 2.0) if thorough else (0.5, 1.0, 1.5)
    isls = tuple(sorted({max(16, int(isl * f)) for f in factors}))
    gen = max(8, min(osl, 64 if thorough else 32))
    middle = isl + osl // 2
    contexts = tuple(sorted({max(gen, int(middle * f)) for f in ((0.5, 1.0, 2.0) if thorough else (1.0,))}))
    return SweepPlan(isls, contexts, gen, 3 if thorough else 2, thorough)


def replay_seconds(request: DeploymentRequest, eng: Engine) -> float:
    """How long the stated workload is replayed: 60 s (``thorough``: 120 s) on a real engine, a
    tenth of that on the mocker (simulated time runs fast); none without a request rate."""
    if request.request_rate is None:
        return 0.0
    seconds = 120.0 if request.search_strategy == "thorough" else 60.0
    return seconds / 10 if eng.backend == "mocker" else seconds


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass(frozen=True)
class Replay:
    """The stated workload's share for one of ``engines`` engines, replayed on one engine."""

    engines: int
    rate: float  # requests per second this engine got
    seconds: float
    requests: int
    within: int  # finished within TTFT and ITL targets
    failed: int  # failed or not finished within the deadline
    ttft_p50_ms: float
    ttft_p90_ms: float
    itl_p50_ms: float
    itl_p90_ms: float

    @property
    def attainment(self) -> float:
        return self.within / self.requests if self.requests else 0.0

    @classmethod
    def score(
        cls,
        engines: int,
        rate: float,
        seconds: float,
        results: list[tuple[float, float] | None],
        ttft_ms: float,
        itl_ms: float,
    ) -> Replay:
        done = [r for r in results if r is not None]
        ttfts, itls = [t for t, _ in done], [i for _, i in done]
        return cls(
            engines,
            rate,
            seconds,
            len(results),
            sum(1 for t, i in done if t <= ttft_ms and i <= itl_ms),
            len(results) - len(done),
            _pct(ttfts, 0.5),
            _pct(ttfts, 0.9),
            _pct(itls, 0.5),
            _pct(itls, 0.9),
        )

    def describe(self) -> str:
        return (
            f"{self.rate:.3g} req/s ({self.engines} engine(s)' share) for {self.seconds:g} s: "
            f"{self.within}/{self.requests} within the SLA ({self.attainment:.0%}), {self.failed} failed, "
            f"TTFT p50/p90 {self.ttft_p50_ms:.0f}/{self.ttft_p90_ms:.0f} ms, "
            f"ITL p50/p90 {self.itl_p50_ms:.0f}/{self.itl_p90_ms:.0f} ms"
        )

    def to_json(self) -> dict[str, Any]:
        def ms(value: float, digits: int) -> float | None:
            return None if math.isnan(value) else round(value, digits)

        return {
            "engines": self.engines,
            "rate": round(self.rate, 4),
            "seconds": self.seconds,
            "requests": self.requests,
            "within_sla": self.within,
            "failed": self.failed,
            "attainment": round(self.attainment, 4),
            "ttft_p50_ms": ms(self.ttft_p50_ms, 1),
            "ttft_p90_ms": ms(self.ttft_p90_ms, 1),
            "itl_p50_ms": ms(self.itl_p50_ms, 2),
            "itl_p90_ms": ms(self.itl_p90_ms, 2),
        }


@dataclass(frozen=True)
class ReplaySpec:
    """Whether and how a candidate's workload is replayed: the stated rate, the most engines the
    rate may be split over, the first split to try (from the tables), and whether a replay passed."""

    rate: float
    limit: int
    first_engines: Callable[[Measurement], int]
    passes: Callable[[Measurement, Replay], bool]


@dataclass
class Measurement:
    """What one candidate measured."""

    candidate: Candidate
    prefill: list[tuple[int, float]] = field(default_factory=list)  # (isl, ttft_ms)
    decode: list[tuple[int, int, float]] = field(default_factory=list)  # (context, concurrency, itl_ms)
    replays: list[Replay] = field(default_factory=list)
    seconds: float = 0.0

    def profile(self, backend: str, engine_num_gpu: int = 1) -> PerformanceProfile:
        """The planner profile of this candidate (both tables: it is an aggregated engine)."""
        return parse_profile(
            {
                "format": "dynamo-planner-profile/1",
                "backend": backend,
                "prefill": {
                    "engine_num_gpu": engine_num_gpu,
                    "points": [{"isl": i, "ttft_ms": t} for i, t in self.prefill],
                },
                "decode": {
                    "engine_num_gpu": engine_num_gpu,
                    "points": [{"context": x, "concurrency": c, "itl_ms": i} for x, c, i in self.decode],
                },
            }
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "candidate": {"batch": self.candidate.batch, "label": self.candidate.label},
            "prefill": [{"isl": i, "ttft_ms": round(t, 3)} for i, t in self.prefill],
            "decode": [{"context": x, "concurrency": c, "itl_ms": round(i, 3)} for x, c, i in self.decode],
            "replays": [r.to_json() for r in self.replays],
            "seconds": round(self.seconds, 1),
        }


async def _wait_listed(url: str, model: str, runner_task: asyncio.Task[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        while time.monotonic() < deadline:
            if runner_task.done():
                raise SweepError("the graph stopped before it was ready")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(url + "/v1/models") as resp:
                    if resp.status == 200:
                        ids = [m.get("id") for m in (await resp.json()).get("data") or []]
                        if model in ids:
                            return
            await asyncio.sleep(0.5)
    raise SweepError(f"the model {model} was not served within {timeout:g}s")


async def _replay(
    client: Client, request: DeploymentRequest, m: Measurement, seconds: float, spec: ReplaySpec
) -> None:
    n = max(1, min(spec.first_engines(m), spec.limit))
    # A request slower than 3x the SLA's whole-request budget is a miss: stop waiting for it.
    deadline = max(30.0, 3 * (request.ttft_ms + request.osl * request.itl_ms) / 1000)
    for attempt in range(MAX_REPLAYS):
        rate = spec.rate / n
        results = await client.replay(rate, request.isl, request.osl, seconds, deadline, seed=attempt)
        r = Replay.score(n, rate, seconds, results, request.ttft_ms, request.itl_ms)
        m.replays.append(r)
        log.info("%s: replayed the workload at %s", m.candidate.label, r.describe())
        if spec.passes(m, r) or n >= spec.limit:
            return
        n += 1


async def measure_candidate(
    request: DeploymentRequest,
    eng: Engine,
    candidate: Candidate,
    plan: SweepPlan,
    run_dir: Path,
    *,
    ready_timeout: float = 600.0,
    base_env: dict[str, str] | None = None,
    replay: ReplaySpec | None = None,
) -> Measurement:
    """Start ``candidate``'s graph, measure it, stop it."""
    name = f"profile-{eng.backend}-b{candidate.batch}"
    graph = parse_graph(measure_graph(request, eng, candidate, name))
    await asyncio.to_thread(run_dir.mkdir, parents=True, exist_ok=True)
    graph_plan = plan_graph(graph, run_dir, http_port=0, base_env=base_env)
    report = io.StringIO()
    runner = GraphRunner(graph_plan, out=report, grace=10.0)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    url = runner.frontend_urls()[0]
    started = time.monotonic()
    measurement = Measurement(candidate)
    try:
        await _wait_listed(url, request.model, task, ready_timeout)
        log.info("%s: ready after %.1fs; measuring", candidate.label, time.monotonic() - started)
        async with Client(url, request.model, seed=candidate.batch) as client:
            await client.stream(plan.isls[0], 2)  # warm-up
            for isl in plan.isls:
                ttft = await client.lone_ttft(isl, plan.repeats)
                measurement.prefill.append((isl, ttft))
                log.info("%s: ISL %d -> TTFT %.1f ms", candidate.label, isl, ttft)
            for context in plan.contexts:
                for conc in plan.concurrencies(candidate):
                    itl = await client.decode_itl(context, conc, plan.gen)
                    measurement.decode.append((context, conc, itl))
                    log.info(
                        "%s: context %d x %d streams -> ITL %.2f ms", candidate.label, context, conc, itl
                    )
            if replay is not None and plan.replay_seconds > 0:
                await _replay(client, request, measurement, plan.replay_seconds, replay)
    except (SweepError, MeasureError) as exc:
        stop.set()
        await asyncio.gather(task, return_exceptions=True)
        tail = "\n".join(report.getvalue().splitlines()[-25:])
        raise SweepError(f"{eng.backend} {candidate.label}: {exc}; the runner said:\n{tail}") from None
    finally:
        stop.set()
        await asyncio.gather(task, return_exceptions=True)
        (run_dir / "runner.log").write_text(report.getvalue())
    measurement.seconds = time.monotonic() - started
    return measurement
