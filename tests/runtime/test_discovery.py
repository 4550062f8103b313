"""Discovery backends against real servers: registration, watch, lease expiry and recovery."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from dynamo.runtime.discovery import WatchEvent
from dynamo.runtime.discovery.etcd import EtcdDiscovery
from dynamo.runtime.discovery.file import FileDiscovery

pytestmark = pytest.mark.timeout(60)


async def next_event(it: AsyncIterator[WatchEvent], timeout: float = 10) -> WatchEvent:
    return await asyncio.wait_for(it.__anext__(), timeout)


async def test_put_is_seen_by_another_client_and_close_removes_it(backend_pair, request):
    a, b = backend_pair
    prefix = f"test/{request.node.name}/"
    await a.put(prefix + "x", b"1")
    assert await b.get_prefix(prefix) == {prefix + "x": b"1"}
    await a.close()
    assert await b.get_prefix(prefix) == {}


async def test_watch_sees_snapshot_then_add_and_remove(backend_pair, request):
    a, b = backend_pair
    prefix = f"test/{request.node.name}/"
    await a.put(prefix + "first", b"1")
    watch = b.watch_prefix(prefix)
    try:
        assert await next_event(watch) == WatchEvent("put", prefix + "first", b"1")
        await a.put(prefix + "second", b"2")
        assert await next_event(watch) == WatchEvent("put", prefix + "second", b"2")
        await a.delete(prefix + "first")
        assert await next_event(watch) == WatchEvent("delete", prefix + "first")
        await a.put("elsewhere/key", b"3")  # outside the prefix: not delivered
        await a.put(prefix + "third", b"3")
        assert await next_event(watch) == WatchEvent("put", prefix + "third", b"3")
    finally:
        await watch.aclose()  # type: ignore[attr-defined]


async def test_etcd_lease_lost_is_recreated_and_keys_reregistered(etcd):
    owner = EtcdDiscovery([etcd.endpoint], ttl=1.5)
    observer = EtcdDiscovery([etcd.endpoint], ttl=5)
    await owner.start()
    await observer.start()
    recreated = asyncio.Event()
    owner.on_lease_recreated(recreated.set)
    try:
        await owner.put("test/lease-loss/worker", b"w")
        old_lease = owner.lease_id
        await observer.client.revoke_lease(old_lease)  # as if the lease had expired in a partition
        assert await observer.get_prefix("test/lease-loss/") == {}
        await asyncio.wait_for(recreated.wait(), 10)
        assert owner.lease_id != old_lease
        assert await observer.get_prefix("test/lease-loss/") == {"test/lease-loss/worker": b"w"}
    finally:
        await owner.close()
        await observer.close()


async def test_file_discovery_heartbeat_keeps_keys_alive_past_the_ttl(tmp_path):
    owner = FileDiscovery(tmp_path, ttl=0.6)
    observer = FileDiscovery(tmp_path, ttl=0.6)
    await owner.start()
    await observer.start()
    try:
        await owner.put("test/alive/k", b"v")
        await asyncio.sleep(1.5)
        assert await observer.get_prefix("test/alive/") == {"test/alive/k": b"v"}
        # Stop heartbeating without cleaning up, as a killed process would.
        assert owner._heartbeat is not None
        owner._heartbeat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await owner._heartbeat
        owner._heartbeat = None
        await asyncio.sleep(1.0)
        assert await observer.get_prefix("test/alive/") == {}
    finally:
        await owner.close()
        await observer.close()


async def test_file_discovery_rejects_path_traversal(tmp_path):
    d = FileDiscovery(tmp_path, ttl=1)
    await d.start()
    try:
        with pytest.raises(ValueError):
            await d.put("v1/../../etc/x", b"")
    finally:
        await d.close()


async def test_etcd_unreachable_gives_a_clear_error():
    from tests.support.procs import free_port

    d = EtcdDiscovery([f"http://127.0.0.1:{free_port()}"], ttl=2)
    with pytest.raises(ConnectionError, match="cannot reach etcd"):
        await d.start()
