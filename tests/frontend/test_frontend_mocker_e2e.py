"""End to end: real frontend + mocker worker processes, on etcd and on the single-machine default
(file discovery, no etcd), driven by the official ``openai`` client and raw HTTP."""

from __future__ import annotations

import asyncio
import collections
import http.client
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.graph import Frontend, discovery_env, metric_value, start_mocker
from tests.support.procs import ManagedProcess, free_port, wait_until

pytestmark = [pytest.mark.timeout(180)]
MODEL = "smol-mock"
CHAT = [{"role": "user", "content": "What is the capital of France?"}]


@dataclass
class Graph:
    frontend: Frontend
    workers: list[ManagedProcess]
    worker_ports: list[int]

    @property
    def base_url(self) -> str:
        return f"{self.frontend.url}/v1"

    def stop(self) -> None:
        for w in self.workers:
            w.stop()
        self.frontend.stop()


def start_graph(
    log_dir: Path,
    model_dir: Path,
    env: dict[str, str],
    tag: str,
    *,
    workers: int = 2,
    frontend_args: tuple[str, ...] = (),
    mocker_args: tuple[str, ...] = (),
) -> Graph:
    ports = [free_port() for _ in range(workers)]
    procs = [
        start_mocker(
            log_dir,
            env,
            model_dir,
            f"mocker-{tag}-{i}",
            "--model-name",
            MODEL,
            "--speedup-ratio",
            "20",
            *mocker_args,
            system_port=ports[i],
        )
        for i in range(workers)
    ]
    frontend = Frontend(log_dir, env, *frontend_args, name=f"frontend-{tag}")
    frontend.wait_for_instances(workers)
    return Graph(frontend, procs, ports)


@pytest.fixture(scope="module", params=["etcd", "file"])
def graph(request, log_dir: Path, smollm2_tokenizer_dir: Path) -> Iterator[Graph]:
    """A shared frontend + 2 mockers per discovery backend (tests here must not change it)."""
    etcd_endpoint = request.getfixturevalue("etcd").endpoint if request.param == "etcd" else None
    env = discovery_env(request.param, etcd_endpoint)
    env["DYN_NAMESPACE"] = f"shared-{request.param}"
    g = start_graph(log_dir, smollm2_tokenizer_dir, env, f"shared-{request.param}")
    yield g
    g.stop()


@pytest.fixture
def own_graph(log_dir: Path, smollm2_tokenizer_dir: Path, etcd) -> Iterator:
    """Factory for a private graph on etcd (for tests that kill or overload workers)."""
    made: list[Graph] = []

    def make(tag: str, **kw) -> Graph:
        env = discovery_env("etcd", etcd.endpoint)
        env["DYN_NAMESPACE"] = f"own-{tag}"
        g = start_graph(log_dir, smollm2_tokenizer_dir, env, tag, **kw)
        made.append(g)
        return g

    yield make
    for g in made:
        g.stop()


def test_chat_completion_non_streaming_sync_client(graph: Graph):
    client = openai.OpenAI(base_url=graph.base_url, api_key="none", max_retries=0)
    resp = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=12)
    assert resp.object == "chat.completion"
    assert resp.choices[0].finish_reason == "length"
    assert resp.choices[0].message.role == "assistant"
    assert resp.choices[0].message.content
    assert resp.usage.completion_tokens == 12
    assert resp.usage.prompt_tokens > 5
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + 12


async def test_chat_completion_streaming_async_client_with_usage(graph: Graph):
    client = openai.AsyncOpenAI(base_url=graph.base_url, api_key="none", max_retries=0)
    stream = await client.chat.completions.create(
        model=MODEL, messages=CHAT, max_tokens=20, stream=True, stream_options={"include_usage": True}
    )
    text, finish, usage, roles = "", None, None, []
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
            assert chunk.choices == []
            continue
        delta = chunk.choices[0].delta
        roles.append(delta.role)
        text += delta.content or ""
        finish = chunk.choices[0].finish_reason or finish
    assert text and finish == "length"
    assert roles[0] == "assistant"
    assert usage is not None and usage.completion_tokens == 20
    await client.close()


def test_completions_streaming_and_not(graph: Graph):
    client = openai.OpenAI(base_url=graph.base_url, api_key="none", max_retries=0)
    resp = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=7)
    assert resp.object == "text_completion"
    assert resp.choices[0].text and resp.usage.completion_tokens == 7
    pieces = [
        c.choices[0].text
        for c in client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=9, stream=True)
        if c.choices
    ]
    assert "".join(pieces)


def test_models_and_health_list_the_model(graph: Graph):
    client = openai.OpenAI(base_url=graph.base_url, api_key="none", max_retries=0)
    assert [m.id for m in client.models.list()] == [MODEL]
    health = graph.frontend.health()
    assert health["status"] == "healthy" and health["models"] == [MODEL]
    assert len(health["instances"]) == 2


def test_an_idle_keep_alive_connection_outlives_client_pools(graph: Graph):
    # Clients keep idle pooled connections up to 5 s (httpx) or 15 s (aiohttp); a server that
    # closes first races their next request (ServerDisconnected). Ours waits --http-header-timeout.
    host, port = graph.frontend.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", "/live")
        assert conn.getresponse().read() == b'{"status":"live"}'
        first = conn.sock
        time.sleep(6.5)  # past uvicorn's default keep-alive timeout (5 s)
        conn.request("GET", "/live")  # on the same socket: RemoteDisconnected if the server closed it
        assert conn.sock is first and conn.getresponse().status == 200
    finally:
        conn.close()


def test_round_robin_spreads_requests_evenly(graph: Graph):
    seen: collections.Counter[str] = collections.Counter()
    with httpx.Client(timeout=30) as http:
        for _ in range(20):
            r = http.post(
                f"{graph.base_url}/chat/completions",
                headers={"x-dynamo-routing-debug": "1"},
                json={"model": MODEL, "messages": CHAT, "max_tokens": 2},
            )
            assert r.status_code == 200
            seen[r.headers["x-dynamo-instance"].split(";")[0]] += 1
    assert sorted(seen.values()) == [10, 10], seen


BAD_REQUESTS = [
    ({"model": "no-such-model", "messages": CHAT}, 404, "model"),
    ({"model": MODEL, "messages": []}, 400, "messages"),
    ({"model": MODEL}, 400, "messages"),
    ({"model": MODEL, "messages": "hello"}, 400, "messages"),
    ({"model": MODEL, "messages": CHAT, "temperature": 9}, 400, "temperature"),
    ({"model": MODEL, "messages": CHAT, "top_p": 0}, 400, "top_p"),
    ({"model": MODEL, "messages": CHAT, "max_tokens": 0}, 400, "max_tokens"),
    ({"model": MODEL, "messages": CHAT, "n": 0}, 400, "n"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "x " * 9000}]}, 400, "messages"),
]


async def test_bad_requests_get_openai_errors_and_leave_streams_intact(graph: Graph):
    async with httpx.AsyncClient(timeout=60) as http:
        long_stream = http.stream(
            "POST",
            f"{graph.base_url}/chat/completions",
            json={"model": MODEL, "messages": CHAT, "max_tokens": 150, "stream": True},
        )
        async with long_stream as resp:
            assert resp.status_code == 200
            lines = resp.aiter_lines()
            first = await anext(lines)
            assert first.startswith("data: ")
            for body, status, param in BAD_REQUESTS:
                r = await http.post(f"{graph.base_url}/chat/completions", json=body)
                assert r.status_code == status, (body, r.text)
                err = r.json()["error"]
                assert set(err) == {"message", "type", "param", "code"}
                assert err["param"] == param, (body, err)
            r = await http.post(f"{graph.base_url}/chat/completions", content=b"{not json")
            assert r.status_code == 400 and r.json()["error"]["message"]
            r = await http.get(f"{graph.base_url}/chat/completions")
            assert r.status_code == 405 and "error" in r.json()
            r = await http.post(f"{graph.base_url}/chat/completions", content=b"x" * (33 * 1024 * 1024))
            assert r.status_code == 413 and "error" in r.json()
            rest = [line async for line in lines if line.startswith("data: ")]
            assert rest[-1] == "data: [DONE]"
            finals = [json.loads(x[6:]) for x in rest[:-1]]
            assert finals[-1]["choices"][0]["finish_reason"] == "length"


async def test_client_disconnect_cancels_the_worker_request(own_graph):
    g = own_graph("disconnect", workers=1, mocker_args=("--speedup-ratio", "1"))
    worker_metrics = f"http://127.0.0.1:{g.worker_ports[0]}/metrics"
    async with httpx.AsyncClient(timeout=60) as http:
        async with http.stream(
            "POST",
            f"{g.base_url}/chat/completions",
            json={"model": MODEL, "messages": CHAT, "max_tokens": 2000, "stream": True},
        ) as resp:
            lines = resp.aiter_lines()
            await anext(lines)
            # leaving the block closes the connection mid-stream

        async def cancelled() -> float:
            return metric_value(
                (await http.get(worker_metrics)).text, "dynamo_worker_requests_total", outcome="cancelled"
            )

        deadline = time.monotonic() + 10
        while await cancelled() < 1:
            assert time.monotonic() < deadline, "the worker never saw the cancellation"
            await asyncio.sleep(0.1)
        text = (await http.get(worker_metrics)).text
        assert metric_value(text, "dynamo_worker_inflight_requests") == 0


def test_killed_worker_is_skipped_at_once_and_removed_within_the_ttl(own_graph):
    g = own_graph("kill")
    client = openai.OpenAI(base_url=g.base_url, api_key="none", max_retries=0)
    g.workers[0].kill9()
    # No request fails while the dead instance is still registered: unreachable ones are skipped.
    for _ in range(10):
        resp = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=3)
        assert resp.choices[0].finish_reason == "length"
    g.frontend.wait_for_instances(1, timeout=15)


def test_all_workers_gone_gives_503_then_404(own_graph):
    g = own_graph("allgone")
    for w in g.workers:
        w.kill9()
    with httpx.Client(timeout=30) as http:
        r = http.post(
            f"{g.base_url}/chat/completions", json={"model": MODEL, "messages": CHAT, "max_tokens": 3}
        )
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "service_unavailable"
        assert "retry-after" in r.headers
        wait_until(
            lambda: (
                http.post(
                    f"{g.base_url}/chat/completions", json={"model": MODEL, "messages": CHAT}
                ).status_code
                == 404
            ),
            15,
            "the model to go away",
        )
        assert g.frontend.health()["status"] == "unhealthy"


async def test_overload_is_refused_with_429_and_retry_after(own_graph):
    g = own_graph(
        "overload",
        workers=1,
        frontend_args=("--max-inflight-requests", "2"),
        mocker_args=("--speedup-ratio", "1"),
    )
    async with httpx.AsyncClient(timeout=60) as http:
        body = {"model": MODEL, "messages": CHAT, "max_tokens": 300, "stream": True}
        async with (
            http.stream("POST", f"{g.base_url}/chat/completions", json=body) as a,
            http.stream("POST", f"{g.base_url}/chat/completions", json=body) as b,
        ):
            assert a.status_code == b.status_code == 200
            r = await http.post(f"{g.base_url}/chat/completions", json=body)
            assert r.status_code == 429
            assert r.headers["retry-after"] == "1"
            assert r.json()["error"]["type"] == "rate_limit_error"


def test_migration_resumes_a_broken_stream_on_another_worker(own_graph):
    g = own_graph("migrate", frontend_args=("--migration-limit", "2"), mocker_args=("--speedup-ratio", "2"))
    pids = {w.pid: w for w in g.workers}
    with httpx.Client(timeout=60) as http:
        with http.stream(
            "POST",
            f"{g.base_url}/chat/completions",
            headers={"x-dynamo-routing-debug": "1"},
            json={
                "model": MODEL,
                "messages": CHAT,
                "max_tokens": 60,
                "stream": True,
                "stream_options": {"include_usage": True},
            },
        ) as resp:
            serving = resp.headers["x-dynamo-instance"].split(";")[0]
            events = []
            killed = False
            for line in resp.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                events.append(json.loads(line[6:]))
                if len(events) == 3 and not killed:
                    victim = next(w for w in pids.values() if serving in w.log_text())
                    victim.kill9()
                    killed = True
    assert killed
    usage = events[-1]["usage"]
    assert usage["completion_tokens"] == 60
    assert events[-2]["choices"][0]["finish_reason"] == "length"
    assert metric_value(g.frontend.metrics(), "dynamo_frontend_model_migration_total") >= 1


async def test_in_flight_and_queued_gauges_follow_a_stream(graph: Graph):
    def gauges(text: str) -> tuple[float, float]:
        return (
            metric_value(text, "dynamo_frontend_inflight_requests", model=MODEL),
            metric_value(text, "dynamo_frontend_queued_requests", model=MODEL),
        )

    async with httpx.AsyncClient(timeout=60) as http:
        left_before = metric_value(
            (await http.get(f"{graph.frontend.url}/metrics")).text,
            "dynamo_frontend_requests_total",
            status="499",
        )
        body = {"model": MODEL, "messages": CHAT, "max_tokens": 2000, "ignore_eos": True, "stream": True}
        async with http.stream("POST", f"{graph.base_url}/chat/completions", json=body) as resp:
            lines = resp.aiter_lines()
            await anext(lines)  # it has its first token; unread, the rest waits (flow control)
            assert gauges((await http.get(f"{graph.frontend.url}/metrics")).text) == (1, 0)
        # the client left mid-stream

        deadline = time.monotonic() + 10
        while True:
            text = (await http.get(f"{graph.frontend.url}/metrics")).text
            left = metric_value(text, "dynamo_frontend_requests_total", status="499") - left_before
            if gauges(text) == (0, 0) and left == 1:
                break
            assert time.monotonic() < deadline, (gauges(text), left)
            await asyncio.sleep(0.1)
