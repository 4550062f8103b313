"""Serving processes against real etcd / NATS: discovery across processes, kill -9, SIGTERM
drain, etcd restarts, and the event plane between processes."""

from __future__ import annotations

import asyncio
import shutil
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dynamo.runtime import DistributedRuntime, EndpointClient, RuntimeConfig
from tests.support.procs import ManagedProcess
from tests.support.servers import EtcdServer

pytestmark = [pytest.mark.timeout(120)]

TTL = 2.0


def start_worker(log_dir: Path, name: str, *extra: str) -> ManagedProcess:
    proc = ManagedProcess.python(
        name, ["-m", "tests.runtime.worker_proc", "--namespace", "proc", *extra], log_dir
    )
    proc.wait_for_log("READY", timeout=30)
    return proc


async def make_runtime(backend: str, **kw: object) -> DistributedRuntime:
    return await DistributedRuntime.create(
        RuntimeConfig.from_env(namespace="proc", discovery_backend=backend, **kw)
    )


async def wait_for(predicate, timeout: float, what: str) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)
    return time.monotonic() - start


@pytest.fixture(params=["etcd", "file"])
async def backend(request, etcd) -> AsyncIterator[tuple[str, list[str], dict[str, object]]]:
    if request.param == "etcd":
        yield (
            "etcd",
            ["--discovery-backend", "etcd", "--etcd", etcd.endpoint, "--ttl", str(TTL)],
            {"etcd_endpoints": (etcd.endpoint,)},
        )
    else:
        yield "file", ["--discovery-backend", "file", "--ttl", str(TTL)], {"discovery_ttl": TTL}


async def test_kill_9_removes_the_instance_within_the_ttl(backend, log_dir):
    name, args, kw = backend
    worker = start_worker(log_dir, f"kill9-{name}", *args)
    rt = await make_runtime(name, **kw)
    try:
        client: EndpointClient = await rt.endpoint_client("proc.worker.generate")
        await client.wait_for_instances(timeout=10)
        stream = await client.round_robin({"n": 3})
        assert [x["i"] async for x in stream] == [0, 1, 2]
        worker.kill9()
        took = await wait_for(lambda: not client.instances, TTL * 3 + 2, "the killed instance to disappear")
        assert took <= TTL * 3 + 2
    finally:
        worker.stop()
        await rt.shutdown()


async def test_sigterm_drains_inflight_requests_then_deregisters_and_exits_0(backend, log_dir):
    name, args, kw = backend
    worker = start_worker(log_dir, f"drain-{name}", *args)
    rt = await make_runtime(name, **kw)
    try:
        client = await rt.endpoint_client("proc.worker.generate")
        await client.wait_for_instances(timeout=10)
        stream = await client.round_robin({"n": 20, "delay": 0.1})
        first = await stream.__anext__()
        worker.signal(signal.SIGTERM)
        rest = [x["i"] async for x in stream]
        assert [first["i"], *rest] == list(range(20))
        assert not client.instances or await wait_for(lambda: not client.instances, 3, "deregistration") < 3
        code = await asyncio.to_thread(worker.proc.wait, 15)
        assert code == 0
        assert "COMPLETED" in worker.log_text()
        assert "EXITED cleanly" in worker.log_text()
    finally:
        worker.stop()
        await rt.shutdown()


async def test_workers_return_after_etcd_restarts_with_its_data_lost(log_dir):
    etcd = EtcdServer(log_dir)
    etcd.start()
    worker = start_worker(
        log_dir, "etcd-restart", "--discovery-backend", "etcd", "--etcd", etcd.endpoint, "--ttl", str(TTL)
    )
    rt = await make_runtime("etcd", etcd_endpoints=(etcd.endpoint,), discovery_ttl=TTL)
    try:
        client = await rt.endpoint_client("proc.worker.generate")
        await client.wait_for_instances(timeout=10)
        etcd.stop()
        shutil.rmtree(etcd.data_dir)  # a new, empty etcd on the same address: every lease is gone
        Path(etcd.data_dir).mkdir()
        etcd.start()
        # The worker notices its lease is gone, re-creates it and re-registers; the frontend's watch
        # re-lists and sees it again.
        await wait_for(lambda: "re-registered" in worker.log_text(), 30, "the worker to re-register")
        await client.wait_for_instances(timeout=15)
        stream = await client.round_robin({"n": 2})
        assert [x["i"] async for x in stream] == [0, 1]
    finally:
        worker.stop()
        await rt.shutdown()
        etcd.cleanup()


@pytest.mark.parametrize("plane", ["zmq", "nats"])
async def test_events_cross_processes(plane, log_dir, nats, tmp_path):
    extra = ["--event-plane", plane, "--discovery-backend", "file", "--publish", "proc.test.events"]
    env_kw: dict[str, object] = {"event_plane": plane}
    if plane == "nats":
        env_kw["nats_server"] = nats.url
    proc = ManagedProcess.python(
        f"publisher-{plane}",
        ["-m", "tests.runtime.worker_proc", "--namespace", "proc", *extra],
        log_dir,
        env={"NATS_SERVER": nats.url},
    )
    rt = await make_runtime("file", **env_kw)
    try:
        proc.wait_for_log("READY", timeout=30)
        events = await rt.event_plane()
        sub = events.subscribe("proc.test.>")
        got: list[bytes] = []

        async def collect() -> None:
            async for subject, payload in sub:
                assert subject == "proc.test.events"
                got.append(payload)
                if len(got) >= 5:
                    return

        await asyncio.wait_for(collect(), 20)
        counters = [int(p.split(b":")[1]) for p in got]
        assert counters == sorted(counters)
        await sub.aclose()  # type: ignore[attr-defined]
    finally:
        proc.stop()
        await rt.shutdown()
