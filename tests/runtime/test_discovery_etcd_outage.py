"""etcd outages as discovery sees them: a process started while etcd is down waits for it
(``connect_wait``), and a watcher does not report an instance removed when etcd comes back empty
and the instance re-registers within a TTL (so a frontend keeps serving on what it knew)."""

from __future__ import annotations

import asyncio
import shutil
import threading
from pathlib import Path

import pytest

from dynamo.runtime import EndpointId, InstanceEvent
from dynamo.runtime.discovery.etcd import EtcdDiscovery
from dynamo.runtime.discovery.watch import watch_instances
from tests.runtime.test_discovery_watch import Collected, register
from tests.support.servers import EtcdServer

pytestmark = pytest.mark.timeout(90)


async def test_start_waits_for_an_etcd_that_comes_up_later(log_dir):
    etcd = EtcdServer(log_dir)
    late = threading.Timer(3.0, etcd.start)
    late.start()
    d = EtcdDiscovery([etcd.endpoint], ttl=2.0, connect_wait=30)
    try:
        await d.start()  # retries until the etcd started 3 s later answers
        await d.put("v1/probe/x", b"1")
        assert await d.get_prefix("v1/probe/") == {"v1/probe/x": b"1"}
    finally:
        late.join()
        await d.close()
        etcd.cleanup()


async def test_start_without_a_wait_fails_at_once(log_dir):
    etcd = EtcdServer(log_dir)  # never started
    d = EtcdDiscovery([etcd.endpoint], ttl=2.0, connect_wait=0)
    with pytest.raises(ConnectionError, match="cannot reach etcd"):
        await asyncio.wait_for(d.start(), 15)
    etcd.cleanup()


async def test_an_instance_that_re_registers_after_etcd_lost_its_data_is_never_reported_removed(log_dir):
    etcd = EtcdServer(log_dir)
    etcd.start()
    ep = EndpointId("outage", "backend", "generate")
    worker = EtcdDiscovery([etcd.endpoint], ttl=3.0)
    observer = EtcdDiscovery([etcd.endpoint], ttl=3.0)
    for d in (worker, observer):
        await d.start()
    watch = Collected(watch_instances(observer, namespaces=["outage"]))
    try:
        kept = await register(worker, ep, 1)
        await watch.until(lambda: watch.view() == {(ep, 1): kept}, "the instance")
        recreated = asyncio.Event()
        worker.on_lease_recreated(recreated.set)
        etcd.stop()
        await asyncio.sleep(2)
        shutil.rmtree(etcd.data_dir)  # back empty, on the same address
        Path(etcd.data_dir).mkdir()
        etcd.start()
        await asyncio.wait_for(recreated.wait(), 30)
        await asyncio.sleep(4)  # past the observer's hold: a removal would have been reported by now
        assert InstanceEvent("removed", ep, 1) not in watch.events, watch.events
        assert watch.view() == {(ep, 1): kept}
    finally:
        await watch.close()
        for d in (worker, observer):
            await d.close()
        etcd.cleanup()


async def test_close_returns_though_a_cancel_is_lost_and_the_client_hangs(etcd):
    """A cancel can be lost (gRPC turns it into an RPC error, which the keep-alive retries; Python
    3.11's ``wait_for`` drops one that races a reply), and closing a gRPC channel can hang:
    ``close()`` must still return, not hold a shutdown (it once held a test's teardown for 90 s)."""
    d = EtcdDiscovery([etcd.endpoint], ttl=2.0)
    await d.start()
    real_keepalive = d._keepalive
    assert real_keepalive is not None
    real_keepalive.cancel()
    await asyncio.wait({real_keepalive})
    lost = 0

    async def keep_alive_that_loses_one_cancel() -> None:
        nonlocal lost
        while True:
            try:
                await asyncio.sleep(0.05)
            except asyncio.CancelledError:
                if lost:
                    raise
                lost += 1  # retried as if it were an RPC error

    d._keepalive = asyncio.create_task(keep_alive_that_loses_one_cancel())
    client = d._client
    assert client is not None
    real_close = client.close

    async def close_that_hangs() -> None:
        await asyncio.Event().wait()

    client.close = close_that_hangs  # type: ignore[method-assign]
    try:
        await asyncio.wait_for(d.close(), timeout=15)
    finally:
        await real_close()
    assert lost == 1
