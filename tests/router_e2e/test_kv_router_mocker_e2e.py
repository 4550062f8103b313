"""End to end: the frontend in ``--router-mode kv`` with real mocker worker processes, on real etcd +
NATS and on the single-machine default (file discovery + ZMQ events); two frontends with replica
sync; the standalone router service (``python3 -m dynamo.router``)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
import pytest

from dynamo.llm.protocols import PreprocessedRequest, StopConditions
from dynamo.runtime import DistributedRuntime, RuntimeConfig
from tests.router_e2e.support import chat, instance_of, start_mockers, system_prompt
from tests.support.graph import Frontend, discovery_env, metric_value
from tests.support.procs import ManagedProcess, wait_until

pytestmark = [pytest.mark.timeout(180)]
MODEL = "smol-kv"
BLOCK = 16
MOCKER_ARGS = ("--model-name", MODEL, "--block-size", str(BLOCK), "--speedup-ratio", "20")


@pytest.fixture
def make_env(etcd, nats, tmp_path: Path):
    """Environment for one graph: ``etcd-nats`` (production planes) or ``file-zmq`` (single machine,
    in a discovery folder of its own so no other test's frontend sees these workers)."""

    def make(backend: str, tag: str) -> dict[str, str]:
        if backend == "etcd-nats":
            env = discovery_env("etcd", etcd.endpoint, nats.url)
        else:
            env = discovery_env("file")
            env["DYN_FILE_DISCOVERY_DIR"] = str(tmp_path / f"discovery-{tag}")
        env["DYN_NAMESPACE"] = f"kv-{tag}"
        return env

    return make


def kv_frontend(log_dir: Path, env: dict[str, str], name: str, *args: str, workers: int) -> Frontend:
    fe = Frontend(log_dir, env, "--router-mode", "kv", *args, name=name)
    fe.wait_for_instances(workers)
    # A frontend takes each worker's cached blocks from it when it first sees the worker.
    wait_until(
        lambda: (
            metric_value(fe.metrics(), "dynamo_frontend_router_kv_resyncs_total", kind="snapshot") >= workers
        ),
        15,
        "the frontend's snapshot of every worker's cache",
    )
    return fe


@pytest.mark.parametrize("backend", ["etcd-nats", "file-zmq"])
def test_shared_prefix_follows_its_cache_and_a_restarted_frontend_catches_up(
    backend: str, make_env, log_dir: Path, smollm2_tokenizer_dir: Path
):
    env = make_env(backend, f"affinity-{backend}")
    workers = start_mockers(log_dir, env, smollm2_tokenizer_dir, f"affinity-{backend}", 3, *MOCKER_ARGS)
    fe = kv_frontend(log_dir, env, f"frontend-affinity-{backend}", workers=3)
    seeds = range(4)
    with httpx.Client(timeout=30) as http:
        first = {s: chat(http, fe.url, MODEL, system_prompt(s), "What is the first rule?") for s in seeds}
        prompt_blocks = first[0].body["usage"]["prompt_tokens"] // BLOCK
        assert prompt_blocks >= 40
        time.sleep(1.0)  # the stored-block events of those prefills reach the router
        for s in seeds:
            again = chat(http, fe.url, MODEL, system_prompt(s), "And what is the second rule?")
            assert again.instance == first[s].instance, (s, first[s], again)
            assert again.overlap_blocks >= prompt_blocks - 2, again
        text = fe.metrics()
        assert metric_value(text, "dynamo_frontend_router_decisions_total", model=MODEL) == 8
        assert metric_value(text, "dynamo_frontend_kv_hit_rate", model=MODEL) > 0.4
        assert metric_value(text, "dynamo_frontend_router_overlap_blocks_count", model=MODEL) == 8

        # A new frontend has never routed anything: it knows the caches from the workers alone.
        fe.stop()
        fe = kv_frontend(log_dir, env, f"frontend-affinity-{backend}-restarted", workers=3)
        for s in seeds:
            third = chat(http, fe.url, MODEL, system_prompt(s), "Which rule comes third?")
            assert third.instance == first[s].instance, (s, first[s], third)
            assert third.overlap_blocks >= prompt_blocks - 2, third
    fe.stop()
    for w in workers:
        w.stop()


def test_killing_the_worker_with_the_prefix_moves_its_traffic(
    make_env, log_dir: Path, smollm2_tokenizer_dir: Path
):
    env = make_env("etcd-nats", "kill")
    workers = start_mockers(log_dir, env, smollm2_tokenizer_dir, "kill", 3, *MOCKER_ARGS)
    by_instance = {instance_of(w): w for w in workers}
    fe = kv_frontend(log_dir, env, "frontend-kill", workers=3)
    prompt = system_prompt(7)
    with httpx.Client(timeout=30) as http:
        owner = chat(http, fe.url, MODEL, prompt, "Tell me the rules.").instance
        time.sleep(1.0)
        assert chat(http, fe.url, MODEL, prompt, "Again, please.").instance == owner
        by_instance[owner].kill9()
        moved = chat(http, fe.url, MODEL, prompt, "Are you still there?")
        assert moved.instance != owner
        fe.wait_for_instances(2, timeout=15)
        time.sleep(1.0)
        after = chat(http, fe.url, MODEL, prompt, "One more time.")
        assert after.instance == moved.instance
        assert after.overlap_blocks > 0
    fe.stop()
    for w in workers:
        w.stop()


async def test_replica_sync_keeps_a_second_frontend_off_a_busy_worker(
    make_env, log_dir: Path, smollm2_tokenizer_dir: Path
):
    env = make_env("etcd-nats", "replicas")
    slow = ("--model-name", MODEL, "--block-size", str(BLOCK), "--speedup-ratio", "1")
    workers = start_mockers(log_dir, env, smollm2_tokenizer_dir, "replicas", 2, *slow)
    busy, idle = (instance_of(w) for w in workers)
    fe_a = kv_frontend(log_dir, env, "frontend-replica-a", "--router-replica-sync", workers=2)
    fe_b = kv_frontend(log_dir, env, "frontend-replica-b", "--router-replica-sync", workers=2)
    async with httpx.AsyncClient(timeout=60) as http:

        async def hold(seed: int) -> None:
            body = {
                "model": MODEL,
                "messages": [{"role": "user", "content": system_prompt(100 + seed, words=60)}],
                "max_tokens": 3000,
                "ignore_eos": True,  # the mocker would otherwise stop after ~128 tokens
                "stream": True,
                "nvext": {"backend_instance_id": busy},
            }
            async with http.stream("POST", f"{fe_a.url}/v1/chat/completions", json=body) as resp:
                assert resp.status_code == 200
                async for _ in resp.aiter_lines():
                    started.release()
                    await asyncio.sleep(3600)

        started = asyncio.Semaphore(0)
        holders = [asyncio.create_task(hold(i)) for i in range(4)]
        try:
            for _ in holders:
                await asyncio.wait_for(started.acquire(), 30)
            await asyncio.sleep(0.5)  # frontend A's load updates reach frontend B
            chosen = []
            for i in range(6):
                r = await http.post(
                    f"{fe_b.url}/v1/chat/completions",
                    headers={"x-dynamo-routing-debug": "1"},
                    json={
                        "model": MODEL,
                        "messages": [{"role": "user", "content": f"hi {i}"}],
                        "max_tokens": 2,
                    },
                )
                assert r.status_code == 200, r.text
                chosen.append(r.headers["x-dynamo-instance"].split(";")[0])
            # Without replica sync frontend B sees two idle workers: 1 in 64 to pick `idle` six times.
            assert chosen == [idle] * 6, (busy, idle, chosen)
        finally:
            for task in holders:
                task.cancel()
            await asyncio.gather(*holders, return_exceptions=True)
    for proc in (fe_a, fe_b, *workers):
        proc.stop()


async def test_standalone_router_routes_and_answers_which_worker(
    make_env, etcd, nats, log_dir: Path, smollm2_tokenizer_dir: Path
):
    env = make_env("etcd-nats", "standalone")
    ns = env["DYN_NAMESPACE"]
    workers = start_mockers(log_dir, env, smollm2_tokenizer_dir, "standalone", 2, *MOCKER_ARGS)
    router = ManagedProcess.python(
        "router-standalone",
        ["-m", "dynamo.router", "--endpoint", f"dyn://{ns}.backend.generate"],
        log_dir,
        env,
    )
    router.wait_for_log("KV router ready", timeout=30)
    runtime = await DistributedRuntime.create(
        RuntimeConfig(
            namespace=ns,
            discovery_backend="etcd",
            etcd_endpoints=(etcd.endpoint,),
            event_plane="nats",
            nats_server=nats.url,
            tcp_host="127.0.0.1",
        )
    )
    try:
        generate = await runtime.endpoint_client(f"dyn://{ns}.router.generate")
        best = await runtime.endpoint_client(f"dyn://{ns}.router.best_worker_id")
        scores = await runtime.endpoint_client(f"dyn://{ns}.router.overlap_scores")
        for client in (generate, best, scores):
            await client.wait_for_instances(timeout=15)
        tokens = [(7 * i) % 5000 + 10 for i in range(40 * BLOCK)]

        async def first_item(client, body):
            stream = await client.round_robin(body)
            items = [item async for item in stream]
            return items

        request = PreprocessedRequest("standalone-1", MODEL, tokens, stop=StopConditions(max_tokens=5))
        outputs = await first_item(generate, request)
        assert sum(len(o.get("token_ids", [])) for o in outputs) == 5
        assert outputs[-1]["finish_reason"] == "length"
        await asyncio.sleep(1.0)  # the worker's stored blocks reach the router

        [overlap] = await first_item(scores, {"token_ids": tokens})
        assert overlap["request_blocks"] == 40
        assert list(overlap["scores"].values()) == [40], overlap
        [server] = overlap["scores"]
        [answer] = await first_item(best, {"token_ids": [*tokens, 1, 2, 3]})
        assert answer["worker_id"] == server and answer["overlap_blocks"] == 40, answer
        assert answer["active_requests"] == 0 and answer["request_blocks"] == 41
        [fresh] = await first_item(best, {"token_ids": [t + 1 for t in tokens]})
        assert fresh["overlap_blocks"] == 0
        assert {instance_of(w) for w in workers} >= {f"{server:x}"}
    finally:
        await runtime.shutdown()
        router.stop()
        for w in workers:
            w.stop()


async def test_predicted_load_is_released_when_requests_finish_or_clients_leave(
    make_env, log_dir: Path, smollm2_tokenizer_dir: Path
):
    env = make_env("file-zmq", "release")
    slow = ("--model-name", MODEL, "--block-size", str(BLOCK), "--speedup-ratio", "1")
    workers = start_mockers(log_dir, env, smollm2_tokenizer_dir, "release", 2, *slow)
    fe = kv_frontend(log_dir, env, "frontend-release", workers=2)

    def predicted(name: str) -> float:
        return metric_value(fe.metrics(), f"dynamo_frontend_router_{name}", model=MODEL)

    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": system_prompt(3, 200)}],
        "stream": True,
        "ignore_eos": True,  # the long ones run until the client leaves
    }
    async with httpx.AsyncClient(timeout=60) as http:
        streams = [
            http.stream("POST", f"{fe.url}/v1/chat/completions", json={**body, "max_tokens": n})
            for n in (3, 3000, 3000)
        ]
        short, *long = [await s.__aenter__() for s in streams]
        assert [r.status_code for r in (short, *long)] == [200, 200, 200]
        async for _ in short.aiter_lines():
            pass  # runs to completion
        lines = [r.aiter_lines() for r in long]  # kept: a dropped iterator closes its response
        for it in lines:
            await anext(it)
        # The short request is freed as its stream closes, a moment after its last chunk.
        await asyncio.to_thread(
            wait_until, lambda: predicted("active_requests") == 2, 10, "two active requests"
        )
        assert predicted("active_blocks") > 0
        assert predicted("prefill_tokens") == 0  # every request has its first token
        for r in long:
            await r.aclose()  # the client goes away mid-stream
    await asyncio.to_thread(
        wait_until,
        lambda: predicted("active_requests") == 0 and predicted("active_blocks") == 0,
        10,
        "load release",
    )
    fe.stop()
    for w in workers:
        w.stop()


async def test_a_migrated_request_moves_its_predicted_load_with_it(
    make_env, log_dir: Path, smollm2_tokenizer_dir: Path
):
    """kill -9 the worker serving a long stream: the stream completes on the other worker, the dead
    one's share is released at once, the new one's prefill is released at its first token (while
    the stream still runs), and everything is released at the end."""
    env = make_env("etcd-nats", "migrate")
    args = (
        "--model-name",
        MODEL,
        "--block-size",
        str(BLOCK),
        "--speedup-ratio",
        "1",
        "--migration-limit",
        "1",
    )
    workers = start_mockers(log_dir, env, smollm2_tokenizer_dir, "migrate", 2, *args)
    by_instance = {instance_of(w): w for w in workers}
    fe = kv_frontend(log_dir, env, "frontend-migrate", workers=2)

    def load(text: str, name: str, **labels: str) -> float:
        return metric_value(text, f"dynamo_frontend_router_{name}", model=MODEL, **labels)

    max_tokens = 1500  # ~6 ms a token on an idle mocker: the stream outlives the checks below
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": system_prompt(5, 200)}],
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    async with httpx.AsyncClient(timeout=60) as http:
        async with http.stream(
            "POST", f"{fe.url}/v1/chat/completions", headers={"x-dynamo-routing-debug": "1"}, json=body
        ) as resp:
            assert resp.status_code == 200
            serving = resp.headers["x-dynamo-instance"].split(";")[0]
            [other] = set(by_instance) - {serving}
            events: list[dict] = []

            async def read() -> None:
                async for line in resp.aiter_lines():
                    if line.startswith("data: ") and line != "data: [DONE]":
                        events.append(json.loads(line[6:]))

            reader = asyncio.create_task(read())
            try:
                await asyncio.to_thread(wait_until, lambda: len(events) >= 20, 30, "20 streamed events")
                text = fe.metrics()
                assert load(text, "active_requests", instance=serving) == 1
                assert load(text, "prefill_tokens", instance=serving) == 0
                by_instance[serving].kill9()

                def moved() -> bool:
                    text = fe.metrics()
                    return (
                        load(text, "active_requests", instance=other) == 1  # still streaming there
                        and load(text, "prefill_tokens", instance=other) == 0  # its first token came
                        and load(text, "active_requests", instance=serving) == 0
                        and load(text, "active_blocks", instance=serving) == 0
                    )

                await asyncio.to_thread(wait_until, moved, 20, "the load to follow the migrated request")
                await asyncio.wait_for(reader, 60)
            finally:
                reader.cancel()
    assert events[-1]["usage"]["completion_tokens"] == max_tokens
    assert events[-2]["choices"][0]["finish_reason"] == "length"
    assert metric_value(fe.metrics(), "dynamo_frontend_model_migration_total") == 1

    def released() -> bool:
        text = fe.metrics()
        return all(load(text, name) == 0 for name in ("active_requests", "active_blocks", "prefill_tokens"))

    await asyncio.to_thread(wait_until, released, 10, "every predicted load released")
    fe.stop()
    for w in workers:
        w.stop()
