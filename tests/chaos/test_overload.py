"""Overload and client disconnects (issue 13 §2): a frontend at ten times its worker's capacity, and
clients that hang up (a stand-in for a GPU engine: the mocker).

Graph: etcd, NATS, the frontend and one mocker worker, each on its own simulated host; the test
process is the client. The mocker takes ``MAX_NUM_SEQS`` sequences at once; the frontend admits
``MAX_INFLIGHT`` requests (``--max-inflight-requests``), so the engine can never hold more than
that, running and waiting together (how many of them run depends on its token budget: one
~5,000-token prompt at a time, four short ones).

- Overload: open-loop arrivals at ten times the measured capacity (``MAX_NUM_SEQS`` / one request's
  latency) for ``OVERLOAD_S``. Every request is either served whole or refused with 429/503 and a
  ``Retry-After`` (refused, not lost); the queues stay bounded (the frontend's in-flight gauge, the
  worker's, and the engine's own running/waiting counts from its load reports on NATS); the
  frontend's resident memory is sampled from /proc and must stay within ``RSS_BOUND_MB`` of its
  level before the burst; afterwards a capacity-sized batch is served at the unloaded latency.
- Disconnects: requests waiting for their first token in the engine's queue, running streams and
  running non-streaming requests, whose clients all hang up: the engine's own load report shows
  nothing running or waiting within ``FREED_WITHIN_S``; the worker counts them cancelled, the
  frontend as 499.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import nats
import pytest

from dynamo.frontend.stages.parse import LARGE_BODY
from dynamo.llm.kv_events import decode_load_metrics, load_metrics_subject
from tests.chaos.hosts import SYSTEM_PORT, FrontendOnHost, HostProcess, Lab
from tests.chaos.load import SseEvents
from tests.chaos.tally import Outcome, Tally, record
from tests.support.graph import metric_value
from tests.support.procs import wait_until

pytestmark = [pytest.mark.timeout(150)]

MODEL = "chaos-overload"
NAMESPACE = "overload"
MAX_NUM_SEQS = 4
MAX_INFLIGHT = 8
MAX_TOKENS = 24
SPEEDUP = "0.5"  # one 24-token request takes ~0.35 s alone
OVERLOAD_FACTOR = 10
OVERLOAD_S = 6.0
RSS_BOUND_MB = 64.0
FREED_WITHIN_S = 3.0
PROMPT = "Tell me about the weather on the coast in early spring."
# ~5000 tokens: its tokenization takes a while, in a thread.
LONG_PROMPT = " ".join(f"On day {i} the harbour master counted {i * 7 % 31} boats." for i in range(400))


@dataclass
class EngineLoad:
    """The mocker's own running/waiting counts, from its load reports on the event plane."""

    active: int = -1
    waiting: int = -1
    max_active: int = 0
    max_waiting: int = 0
    max_held: int = 0  # running + waiting in one report
    reports: int = 0

    def on_report(self, payload: bytes) -> None:
        m = decode_load_metrics(payload)
        self.active, self.waiting = m.active_requests, m.waiting_requests
        self.max_active = max(self.max_active, m.active_requests)
        self.max_waiting = max(self.max_waiting, m.waiting_requests)
        self.max_held = max(self.max_held, m.active_requests + m.waiting_requests)
        self.reports += 1

    def reset_peaks(self) -> None:
        self.max_active = self.max_waiting = self.max_held = 0


@dataclass
class Graph:
    lab: Lab
    frontend: FrontendOnHost
    worker: HostProcess
    worker_metrics_url: str
    nats_url: str
    load: EngineLoad = field(default_factory=EngineLoad)

    def frontend_metrics(self) -> str:
        return httpx.get(f"{self.frontend.url}/metrics", timeout=5, trust_env=False).text

    def worker_metrics(self) -> str:
        return httpx.get(self.worker_metrics_url, timeout=5, trust_env=False).text

    def frontend_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.frontend.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS for the frontend")


@pytest.fixture(scope="module")
def graph(log_dir: Path, smollm2_tokenizer_dir: Path) -> Iterator[Graph]:
    with Lab(log_dir, {"DYN_NAMESPACE": NAMESPACE, "DYN_DISCOVERY_TTL": "3"}) as lab:
        lab.etcd(lab.host("etcd"))
        nats_server = lab.nats(lab.host("nats"))
        worker_host = lab.host("w1")
        worker = lab.mocker(
            worker_host,
            smollm2_tokenizer_dir,
            "--model-name",
            MODEL,
            "--speedup-ratio",
            SPEEDUP,
            "--max-num-seqs",
            str(MAX_NUM_SEQS),
        )
        fe = lab.frontend(lab.host("fe"), "--max-inflight-requests", str(MAX_INFLIGHT))
        fe.wait_for_instances(1)
        yield Graph(lab, fe, worker, f"http://{worker_host.ip}:{SYSTEM_PORT}/metrics", nats_server.url)


@pytest.fixture
async def engine_load(graph: Graph) -> AsyncIterator[EngineLoad]:
    """The engine's load reports, followed while the test runs."""
    nc = await nats.connect(graph.nats_url)
    load = EngineLoad()

    async def on_msg(msg) -> None:  # type: ignore[no-untyped-def]
        load.on_report(msg.data)

    await nc.subscribe(load_metrics_subject(NAMESPACE, "backend"), cb=on_msg)
    try:
        await asyncio.wait_for(_until(lambda: load.reports > 0), 10)
        yield load
    finally:
        await nc.close()


def client(timeout: float = 60.0) -> httpx.AsyncClient:
    """A client that never queues requests on its own side (the overload must reach the frontend)."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout, connect=5.0),
        limits=httpx.Limits(max_connections=2000, max_keepalive_connections=200),
        trust_env=False,
    )


async def _until(predicate, interval: float = 0.05) -> None:  # type: ignore[no-untyped-def]
    while not predicate():
        await asyncio.sleep(interval)


@dataclass
class Answer:
    outcome: Outcome
    retry_after: str | None = None


async def send(http: httpx.AsyncClient, url: str, *, stream: bool, max_tokens: int = MAX_TOKENS) -> Answer:
    """One completion (streamed or not), counted token by token; the Retry-After of a refusal."""
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": max_tokens, "stream": stream, "logprobs": 0}
    out = Outcome(status=0, expected_tokens=max_tokens)
    answer = Answer(out)
    start = time.monotonic()
    try:
        async with asyncio.timeout(60):
            async with http.stream("POST", f"{url}/v1/completions", json=body) as resp:
                out.status = resp.status_code
                answer.retry_after = resp.headers.get("retry-after")
                if resp.status_code != 200:
                    out.error = (
                        f"HTTP {resp.status_code}: {(await resp.aread()).decode(errors='replace')[:200]}"
                    )
                elif stream:
                    events = SseEvents(resp)
                    async for chunk in events:
                        if "error" in chunk:
                            out.error = f"stream error: {chunk['error']}"
                        for choice in chunk.get("choices", []):
                            out.tokens += len((choice.get("logprobs") or {}).get("tokens") or [])
                    if not events.done and out.error is None:
                        out.error = "stream ended without [DONE]"
                else:
                    choice = json.loads(await resp.aread())["choices"][0]
                    out.tokens = len(choice["logprobs"]["tokens"])
                    out.finish_reason = choice["finish_reason"]
    except TimeoutError:
        out.error = "no answer within 60 s"
    except httpx.HTTPError as exc:
        out.error = f"{type(exc).__name__}: {exc}"
    out.latency_s = time.monotonic() - start
    return answer


def _sample_queues(graph: Graph, peaks: dict[str, float]) -> None:
    front = metric_value(graph.frontend_metrics(), "dynamo_frontend_inflight_requests", model=MODEL)
    worker = metric_value(graph.worker_metrics(), "dynamo_worker_inflight_requests")
    peaks["frontend_inflight"] = max(peaks.get("frontend_inflight", 0), front)
    peaks["worker_inflight"] = max(peaks.get("worker_inflight", 0), worker)
    peaks["rss_mb"] = max(peaks.get("rss_mb", 0), graph.frontend_rss_mb())


async def test_overload_at_ten_times_capacity_refuses_with_retry_after_and_recovers(
    graph: Graph, engine_load: EngineLoad
):
    url = graph.frontend.url
    tally = Tally()
    async with client(timeout=60) as http:
        # Capacity: MAX_NUM_SEQS requests at once, each as fast as alone.
        for _ in range(3):  # warm up (tokenizer, connections)
            assert (await send(http, url, stream=True)).outcome.ok
        alone = [(await send(http, url, stream=True)).outcome for _ in range(3)]
        assert all(o.ok for o in alone), alone
        latency = sorted(o.latency_s for o in alone)[1]
        capacity_rps = MAX_NUM_SEQS / latency
        rate = OVERLOAD_FACTOR * capacity_rps
        rss_before = graph.frontend_rss_mb()
        engine_load.reset_peaks()

        peaks: dict[str, float] = {}
        sampling = True

        async def sampler() -> None:
            while sampling:
                await asyncio.to_thread(_sample_queues, graph, peaks)
                await asyncio.sleep(0.2)

        answers: list[Answer] = []

        async def one(i: int) -> None:
            answers.append(await send(http, url, stream=i % 2 == 0))

        tally.fault(
            f"open-loop arrivals at {OVERLOAD_FACTOR}x capacity ({rate:.0f} req/s) for {OVERLOAD_S:g} s"
        )
        sampler_task = asyncio.create_task(sampler())
        tasks: list[asyncio.Task[None]] = []
        t0 = time.monotonic()
        i = 0
        while (now := time.monotonic()) - t0 < OVERLOAD_S:
            due = int((now - t0) * rate) + 1
            while i < due:
                tasks.append(asyncio.create_task(one(i)))
                i += 1
            await asyncio.sleep(0.01)
        stopped = time.monotonic()
        await asyncio.gather(*tasks)
        sampling = False
        await sampler_task
        rss_peak = max(peaks["rss_mb"], graph.frontend_rss_mb())

        # Recovery: the first success after the burst, then a capacity-sized batch at the unloaded pace.
        while not (first := await send(http, url, stream=True)).outcome.ok:
            assert time.monotonic() - stopped < 30, first
        recovery_s = time.monotonic() - stopped
        batch = await asyncio.gather(*(send(http, url, stream=True) for _ in range(MAX_NUM_SEQS)))

    for a in answers:
        tally.add(a.outcome)
    tally.recovery_s = round(recovery_s, 2)
    tally.notes.update(
        capacity_rps=round(capacity_rps, 1),
        offered_rps=round(rate, 1),
        peak_frontend_inflight=peaks["frontend_inflight"],
        peak_worker_inflight=peaks["worker_inflight"],
        peak_engine_running=engine_load.max_active,
        peak_engine_waiting=engine_load.max_waiting,
        peak_engine_held=engine_load.max_held,
        frontend_rss_mb_before=round(rss_before, 1),
        frontend_rss_mb_peak=round(rss_peak, 1),
        recovery_is="end of the overload -> the first request served whole",
    )
    record("overload_10x", tally)

    refused = [a for a in answers if a.outcome.refused]
    odd = [a.outcome for a in answers if not a.outcome.ok and not a.outcome.refused]
    assert not odd, odd[:5]
    assert tally.losses == 0, tally.summary()
    # Overloaded for real: most were refused, yet the worker was kept busy.
    assert len(refused) > tally.sent / 2, tally.summary()
    assert tally.completed >= MAX_NUM_SEQS * OVERLOAD_S / latency / 3, (tally.summary(), latency)
    assert all(a.retry_after is not None and int(a.retry_after) >= 1 for a in refused), refused[:3]
    # Bounded queues: the frontend's admission, the worker's handlers, the engine's own view.
    assert peaks["frontend_inflight"] <= MAX_INFLIGHT, peaks
    assert peaks["worker_inflight"] <= MAX_INFLIGHT, peaks
    assert engine_load.max_active <= MAX_NUM_SEQS, engine_load
    assert engine_load.max_held <= MAX_INFLIGHT, engine_load
    assert rss_peak - rss_before < RSS_BOUND_MB, (rss_before, rss_peak)
    # Full recovery: nothing left in flight, and capacity served at the unloaded pace.
    assert all(a.outcome.ok for a in batch), [a.outcome for a in batch]
    assert max(a.outcome.latency_s for a in batch) < 4 * latency + 1, ([a.outcome for a in batch], latency)
    wait_until(
        lambda: metric_value(graph.frontend_metrics(), "dynamo_frontend_inflight_requests", model=MODEL) == 0,
        5,
        "the frontend to have nothing in flight",
    )


async def test_client_disconnects_free_the_engines_work(graph: Graph, engine_load: EngineLoad):
    """Queued, streaming and non-streaming requests whose clients leave stop using the engine."""
    tally = Tally()
    long_tokens = 4000  # minutes of work at this speed: only a cancellation ends it early
    before_worker = graph.worker_metrics()
    before_front = graph.frontend_metrics()
    async with contextlib.AsyncExitStack() as stack:
        http = await stack.enter_async_context(client(timeout=60))
        # MAX_INFLIGHT requests: MAX_NUM_SEQS run, the rest wait in the engine's queue (no token yet).
        tasks = [
            asyncio.create_task(send(http, graph.frontend.url, stream=i % 2 == 0, max_tokens=long_tokens))
            for i in range(MAX_INFLIGHT)
        ]
        await asyncio.wait_for(
            _until(
                lambda: (
                    engine_load.active == MAX_NUM_SEQS and engine_load.waiting == MAX_INFLIGHT - MAX_NUM_SEQS
                )
            ),
            15,
        )
        tally.fault(
            f"{MAX_INFLIGHT} clients hang up ({MAX_NUM_SEQS} running, {MAX_INFLIGHT - MAX_NUM_SEQS} queued)"
        )
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    left = time.monotonic()  # every connection is closed now
    await asyncio.wait_for(
        _until(lambda: engine_load.active == 0 and engine_load.waiting == 0), FREED_WITHIN_S + 1.5
    )
    freed_s = time.monotonic() - left

    def delta(after: str, before: str, name: str, **labels: str) -> float:
        return metric_value(after, name, **labels) - metric_value(before, name, **labels)

    def counted() -> bool:
        w, f = graph.worker_metrics(), graph.frontend_metrics()
        return (
            delta(w, before_worker, "dynamo_worker_requests_total", outcome="cancelled") == MAX_INFLIGHT
            and delta(f, before_front, "dynamo_frontend_requests_total", model=MODEL, status="499")
            == MAX_INFLIGHT
        )

    wait_until(counted, 5, "the worker to count the cancellations and the frontend the 499s")
    worker_after = graph.worker_metrics()
    # Nothing of theirs completed after they left.
    assert delta(worker_after, before_worker, "dynamo_worker_requests_total", outcome="completed") == 0
    assert metric_value(worker_after, "dynamo_worker_inflight_requests") == 0

    # The freed engine serves at once.
    async with client(timeout=60) as http:
        answer = await send(http, graph.frontend.url, stream=False)
    tally.add(answer.outcome)
    tally.recovery_s = round(freed_s, 2)
    tally.notes.update(
        hung_up=MAX_INFLIGHT,
        engine_freed_s=round(freed_s, 2),
        recovery_is="clients gone -> the engine's load report shows nothing running or waiting (reports come every 1 s)",
    )
    record("client_disconnects", tally)
    assert answer.outcome.ok, answer.outcome
    assert freed_s < FREED_WITHIN_S, freed_s


async def test_a_burst_of_large_requests_is_held_to_the_admission_limit(
    graph: Graph, engine_load: EngineLoad
):
    """Bodies large enough to be parsed and preprocessed in a thread: the admission limit holds
    while they are (the wait for the thread must not let a burst past it)."""
    burst = 5 * MAX_INFLIGHT
    padding = " " * (LARGE_BODY + 16 * 1024)  # JSON whitespace: parsed in a thread, same prompt
    engine_load.reset_peaks()
    tally = Tally()
    tally.fault(f"{burst} requests with {len(padding) // 1024} KiB bodies at once")

    async def one(http: httpx.AsyncClient) -> Answer:
        body = {"model": MODEL, "prompt": LONG_PROMPT, "max_tokens": MAX_TOKENS, "logprobs": 0}
        raw = json.dumps(body)[:-1] + padding + "}"
        out = Outcome(status=0, expected_tokens=MAX_TOKENS)
        resp = await http.post(
            f"{graph.frontend.url}/v1/completions", content=raw, headers={"content-type": "application/json"}
        )
        out.status = resp.status_code
        if resp.status_code == 200:
            out.tokens = len(resp.json()["choices"][0]["logprobs"]["tokens"])
        else:
            out.error = resp.text[:200]
        return Answer(out, resp.headers.get("retry-after"))

    peaks: dict[str, float] = {}
    async with client(timeout=60) as http:
        sampling = True

        async def sampler() -> None:
            while sampling:
                await asyncio.to_thread(_sample_queues, graph, peaks)
                await asyncio.sleep(0.05)

        sampler_task = asyncio.create_task(sampler())
        answers = await asyncio.gather(*(one(http) for _ in range(burst)))
        sampling = False
        await sampler_task
    for a in answers:
        tally.add(a.outcome)
    tally.notes.update(
        peak_frontend_inflight=peaks["frontend_inflight"],
        peak_worker_inflight=peaks["worker_inflight"],
        peak_engine_waiting=engine_load.max_waiting,
        peak_engine_held=engine_load.max_held,
        recovery_is="nothing to recover from: the point is the bound",
    )
    record("overload_large_bodies", tally)
    assert tally.losses == 0, tally.summary()
    assert tally.refused > 0 and all(a.retry_after for a in answers if a.outcome.refused), tally.summary()
    assert peaks["worker_inflight"] <= MAX_INFLIGHT, peaks
    assert peaks["frontend_inflight"] <= MAX_INFLIGHT, peaks
    assert engine_load.max_held <= MAX_INFLIGHT, engine_load
