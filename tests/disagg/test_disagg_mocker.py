"""Disaggregated serving with simulated engines: real frontend and mocker worker processes on etcd.

Covers the prefill router's flows (prefill_first, decode_first), conditional disaggregation, KV
routing on both pools with the prefill pool's prefix cache, the fallbacks (dead prefill worker,
slow prefill, slow KV transfer) and the 1P/4D and 4P/8D graph shapes the planner uses.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.support.graph import Frontend, discovery_env, metric_value, start_mocker
from tests.support.procs import ManagedProcess, free_port

pytestmark = [pytest.mark.timeout(180)]
MODEL = "smol-disagg"
# ~600 prompt tokens: several KV blocks, well above --max-local-prefill-length (256).
LONG_PROMPT = " ".join(f"item{i} is {i * 7 % 13}." for i in range(120))
SHORT_PROMPT = "Once upon a time"


@dataclass
class Worker:
    proc: ManagedProcess
    port: int | None  # DYN_SYSTEM_PORT (one engine per process) or None

    def metrics(self) -> str:
        assert self.port is not None
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
            return r.read().decode()


@dataclass
class DisaggGraph:
    frontend: Frontend
    prefill: list[Worker] = field(default_factory=list)
    decode: list[Worker] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"{self.frontend.url}/v1"

    def metric(self, name: str, **labels: str) -> float:
        return metric_value(self.frontend.metrics(), name, model=MODEL, **labels)

    def stop(self) -> None:
        for w in [*self.prefill, *self.decode]:
            w.proc.stop()
        self.frontend.stop()


@pytest.fixture
def make_graph(log_dir: Path, smollm2_tokenizer_dir: Path, etcd) -> Iterator:
    """Start a private graph: ``prefill``/``decode`` are lists of per-process mocker args."""
    made: list[DisaggGraph] = []

    def make(
        tag: str,
        *,
        prefill: list[tuple[str, ...]],
        decode: list[tuple[str, ...]],
        frontend_args: tuple[str, ...] = (),
        frontend_env: dict[str, str] | None = None,
        decode_env: dict[str, str] | None = None,
        ttl: float = 2.0,
    ) -> DisaggGraph:
        env = discovery_env("etcd", etcd.endpoint, ttl=ttl)
        env["DYN_NAMESPACE"] = f"disagg-{tag}"

        def worker(name: str, args: tuple[str, ...], extra_env: dict[str, str] | None) -> Worker:
            single = "--num-workers" not in args
            port = free_port() if single else None
            proc = start_mocker(
                log_dir,
                {**env, **(extra_env or {})},
                smollm2_tokenizer_dir,
                name,
                "--model-name",
                MODEL,
                "--speedup-ratio",
                "20",
                *args,
                system_port=port,
            )
            return Worker(proc, port)

        pre = [worker(f"prefill-{tag}-{i}", ("--is-prefill-worker", *a), None) for i, a in enumerate(prefill)]
        dec = [
            worker(f"decode-{tag}-{i}", ("--is-decode-worker", *a), decode_env) for i, a in enumerate(decode)
        ]
        frontend = Frontend(log_dir, {**env, **(frontend_env or {})}, *frontend_args, name=f"frontend-{tag}")
        g = DisaggGraph(frontend, pre, dec)
        made.append(g)
        total = sum(_engines(a) for a in prefill) + sum(_engines(a) for a in decode)
        frontend.wait_for_instances(total)
        return g

    yield make
    for g in made:
        g.stop()


def _engines(args: tuple[str, ...]) -> int:
    return int(args[args.index("--num-workers") + 1]) if "--num-workers" in args else 1


async def complete(http: httpx.AsyncClient, g: DisaggGraph, prompt: str, max_tokens: int = 8) -> dict:
    r = await http.post(
        f"{g.url}/completions",
        json={"model": MODEL, "prompt": prompt, "max_tokens": max_tokens},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["usage"]["completion_tokens"] == max_tokens
    return body


async def test_prefill_first_runs_the_prefill_remotely_and_short_prompts_locally(make_graph):
    g = make_graph("pf", prefill=[()], decode=[()])
    async with httpx.AsyncClient(timeout=30) as http:
        body = await complete(http, g, LONG_PROMPT)
        assert body["usage"]["prompt_tokens"] > 256
        await complete(http, g, SHORT_PROMPT)
    assert g.metric("dynamo_frontend_disagg_requests_total", prefill="remote") == 1
    assert g.metric("dynamo_frontend_disagg_requests_total", prefill="local_short") == 1
    assert g.metric("dynamo_frontend_disagg_prefill_seconds_count") == 1
    # The prefill worker served exactly the remote prefill; the decode worker continued it from
    # the transferred KV and ran the short prompt itself.
    assert metric_value(g.prefill[0].metrics(), "dynamo_worker_requests_total", outcome="completed") == 1
    decode = g.decode[0].metrics()
    assert metric_value(decode, "dynamo_worker_disagg_transfers_total") == 1
    assert metric_value(decode, "dynamo_worker_requests_total", outcome="completed") == 2
    assert g.metric("dynamo_frontend_disagg_fallback_total") == 0


async def test_decode_first_decode_worker_calls_the_prefill_worker(make_graph):
    g = make_graph("df", prefill=[()], decode=[()], frontend_env={"DISAGGREGATION_STRATEGY": "decode_first"})
    async with httpx.AsyncClient(timeout=30) as http:
        for _ in range(3):
            await complete(http, g, LONG_PROMPT + " again")
    assert g.metric("dynamo_frontend_disagg_requests_total", prefill="remote") == 3
    # Nothing was prefilled by the frontend itself: the decode worker called the prefill worker.
    assert g.metric("dynamo_frontend_disagg_prefill_seconds_count") == 0
    assert metric_value(g.prefill[0].metrics(), "dynamo_worker_requests_total", outcome="completed") == 3
    assert metric_value(g.decode[0].metrics(), "dynamo_worker_disagg_transfers_total") == 3


async def test_kv_routing_on_both_pools_hits_the_prefill_pools_prefix_cache(make_graph):
    # --max-local-prefill-length 0: always disaggregate, even when a decode worker caches the prefix.
    g = make_graph(
        "kv",
        prefill=[(), ()],
        decode=[(), ()],
        frontend_args=("--router-mode", "kv", "--max-local-prefill-length", "0"),
    )
    async with httpx.AsyncClient(timeout=30) as http:
        for i in range(6):
            await complete(http, g, f"{LONG_PROMPT} question {i}: why?")
            await asyncio.sleep(0.3)  # let the KV events of the last request reach the router
    served = [
        metric_value(w.metrics(), "dynamo_worker_requests_total", outcome="completed") for w in g.prefill
    ]
    # The shared prefix sticks to one prefill worker, whose cache serves it after the first time.
    assert sorted(served) == [0, 6], served
    cached = g.metric("dynamo_frontend_disagg_prefill_cached_tokens_total")
    assert cached >= 5 * 512, cached
    # The decode side follows the transferred KV too: one decode worker continues every request.
    continued = [metric_value(w.metrics(), "dynamo_worker_disagg_transfers_total") for w in g.decode]
    assert sorted(continued) == [0, 6], continued
    assert g.metric("dynamo_frontend_disagg_fallback_total") == 0


async def test_prefix_cached_on_a_decode_worker_is_prefilled_there(make_graph):
    """Conditional disaggregation: only the uncached part of the prompt counts."""
    g = make_graph("cond", prefill=[()], decode=[(), ()], frontend_args=("--router-mode", "kv"))
    async with httpx.AsyncClient(timeout=30) as http:
        for i in range(4):
            await complete(http, g, f"{LONG_PROMPT} question {i}: why?")
            await asyncio.sleep(0.3)
    # The first request's KV went to a decode worker; the later ones differ only in a short suffix.
    assert g.metric("dynamo_frontend_disagg_requests_total", prefill="remote") == 1
    assert g.metric("dynamo_frontend_disagg_requests_total", prefill="local_short") == 3
    served = [
        metric_value(w.metrics(), "dynamo_worker_requests_total", outcome="completed") for w in g.decode
    ]
    assert sorted(served) == [0, 4], served


async def test_dead_prefill_worker_falls_back_to_local_prefill(make_graph):
    # A long discovery TTL keeps the killed worker registered, so the frontend must try it.
    g = make_graph("dead", prefill=[()], decode=[()], ttl=30)
    async with httpx.AsyncClient(timeout=30) as http:
        await complete(http, g, LONG_PROMPT)
        os.killpg(g.prefill[0].proc.pid, signal.SIGKILL)
        g.prefill[0].proc.proc.wait(10)
        t0 = time.monotonic()
        for i in range(3):
            await complete(http, g, f"{LONG_PROMPT} {i}")
        assert time.monotonic() - t0 < 15
    assert g.metric("dynamo_frontend_disagg_fallback_total", reason="prefill_unreachable") >= 1
    assert metric_value(g.decode[0].metrics(), "dynamo_worker_requests_total", outcome="completed") == 4


async def test_slow_prefill_times_out_and_falls_back(make_graph):
    g = make_graph(
        "slowp",
        prefill=[("--speedup-ratio", "0.01")],  # a 600-token prefill takes ~3 s
        decode=[()],
        frontend_env={"DYN_PREFILL_TIMEOUT": "0.5"},
    )
    async with httpx.AsyncClient(timeout=30) as http:
        t0 = time.monotonic()
        await complete(http, g, LONG_PROMPT)
        assert time.monotonic() - t0 < 3
    assert g.metric("dynamo_frontend_disagg_fallback_total", reason="prefill_timeout") == 1


async def test_slow_kv_transfer_times_out_on_the_decode_worker_and_falls_back(make_graph):
    g = make_graph(
        "slowx",
        prefill=[()],
        decode=[("--kv-transfer-bandwidth", "0.000001")],  # ~80 MB of modelled KV at 1 KB/s
        decode_env={"DYN_KV_TRANSFER_TIMEOUT": "0.5"},
    )
    async with httpx.AsyncClient(timeout=30) as http:
        t0 = time.monotonic()
        await complete(http, g, LONG_PROMPT)
        assert time.monotonic() - t0 < 5
    assert (
        metric_value(g.decode[0].metrics(), "dynamo_worker_disagg_fallback_total", reason="transfer_timeout")
        == 1
    )
    assert g.metric("dynamo_frontend_disagg_fallback_total", reason="transfer_timeout") == 1


@pytest.mark.parametrize(("n_prefill", "n_decode"), [(1, 4), (4, 8)])
async def test_planner_graph_shapes_serve_concurrent_requests(make_graph, n_prefill: int, n_decode: int):
    g = make_graph(
        f"shape{n_prefill}p{n_decode}d",
        prefill=[("--num-workers", str(n_prefill))],
        decode=[("--num-workers", str(n_decode))],
        frontend_args=("--router-mode", "kv"),
    )
    async with httpx.AsyncClient(timeout=60) as http:
        await asyncio.gather(*(complete(http, g, f"request {i}: {LONG_PROMPT}") for i in range(2 * n_decode)))
    assert g.metric("dynamo_frontend_disagg_requests_total", prefill="remote") == 2 * n_decode
    assert g.metric("dynamo_frontend_disagg_fallback_total") == 0
