"""The graph's key-value store on every discovery backend (real etcd, real files): values are shared
between processes' clients, outlive their writer, and expire with their TTL."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from dynamo.runtime.discovery.base import Discovery
from dynamo.runtime.discovery.registry import store_key
from dynamo.runtime.store import EtcdStore, FileStore, KeyValueStore, bucket_width, create_store

pytestmark = pytest.mark.timeout(60)


def stores(pair: tuple[Discovery, Discovery]) -> tuple[KeyValueStore, KeyValueStore]:
    return create_store(pair[0]), create_store(pair[1])


async def test_a_value_put_by_one_client_is_read_and_deleted_by_another(backend_pair, request):
    a, b = stores(backend_pair)
    key = store_key("ns", "responses", f"resp_{request.node.callspec.id}")
    await a.put(key, b"hello", ttl=60)
    assert await b.get(key) == b"hello"
    await a.put(key, b"again", ttl=60)  # replaced
    assert await b.get(key) == b"again"
    assert await b.delete(key) is True
    assert await a.get(key) is None
    assert await a.delete(key) is False
    assert await a.get(store_key("ns", "responses", "resp_never_written")) is None


async def test_a_value_outlives_its_writer(backend_pair, request):
    """Unlike discovery keys, stored values are not bound to the writer's lease."""
    writer, reader = backend_pair
    key = store_key("ns", "responses", f"resp_outlives_{request.node.callspec.id}")
    await create_store(writer).put(key, b"kept", ttl=60)
    await writer.close()
    assert await create_store(reader).get(key) == b"kept"


async def test_an_expired_value_is_gone_on_read(backend_pair, request):
    a, b = stores(backend_pair)
    key = store_key("ns", "responses", f"resp_expiring_{request.node.callspec.id}")
    await a.put(key, b"brief", ttl=0.5)
    assert await b.get(key) == b"brief"
    await asyncio.sleep(0.7)
    assert await b.get(key) is None
    assert await b.delete(key) is False


async def test_ttl_must_be_positive(backend_pair):
    a, _ = stores(backend_pair)
    for bad in (0, -1, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="ttl"):
            await a.put("v1/store/ns/responses/x", b"", ttl=bad)


def test_store_keys_are_checked_path_segments():
    assert store_key("ns", "responses", "resp_ab-12") == "v1/store/ns/responses/resp_ab-12"
    for bad in ("../x", "a/b", "", "resp.1"):
        with pytest.raises(ValueError):
            store_key("ns", "responses", bad)


async def test_etcd_removes_the_value_with_its_bucket_lease(etcd):
    """etcd itself drops the key once the bucket's lease runs out, and values expiring in the same
    bucket share one lease."""
    from dynamo.runtime.discovery.etcd import EtcdDiscovery

    disc = EtcdDiscovery([etcd.endpoint], ttl=5)
    await disc.start()
    try:
        store = create_store(disc)
        assert isinstance(store, EtcdStore)
        await store.put("v1/store/ns/responses/resp_lease_a", b"a", ttl=1)
        await store.put("v1/store/ns/responses/resp_lease_b", b"b", ttl=1)
        raw_a = await disc.client.get(b"v1/store/ns/responses/resp_lease_a")
        raw_b = await disc.client.get(b"v1/store/ns/responses/resp_lease_b")
        assert raw_a is not None and raw_b is not None
        assert raw_a.lease == raw_b.lease != disc.lease_id  # one bucket lease, not the process's
        deadline = time.monotonic() + 1 + bucket_width(1) + 5  # ttl + bucket + etcd's own slack
        while await disc.client.get(b"v1/store/ns/responses/resp_lease_a") is not None:
            assert time.monotonic() < deadline, "etcd kept the value after its lease ran out"
            await asyncio.sleep(0.25)
        # A put after its bucket's lease has expired gets a new lease.
        await store.put("v1/store/ns/responses/resp_lease_a", b"a2", ttl=30)
        assert await store.get("v1/store/ns/responses/resp_lease_a") == b"a2"
    finally:
        await disc.close()


async def test_file_store_sweep_removes_expired_files(tmp_path: Path):
    store = FileStore(tmp_path / "store", sweep_interval=0)
    await store.put("v1/store/ns/responses/old", b"x", ttl=0.2)
    await store.put("v1/store/ns/responses/new", b"y", ttl=60)
    await asyncio.sleep(0.3)
    assert store.sweep() == 1
    assert not (tmp_path / "store/v1/store/ns/responses/old").exists()
    assert await store.get("v1/store/ns/responses/new") == b"y"
    with pytest.raises(ValueError):
        await store.get("v1/store/../../etc/passwd")
    await store.close()
