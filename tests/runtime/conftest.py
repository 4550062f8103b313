"""Fixtures the runtime tests share."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dynamo.runtime.discovery.base import Discovery
from dynamo.runtime.discovery.etcd import EtcdDiscovery
from dynamo.runtime.discovery.file import FileDiscovery
from dynamo.runtime.discovery.mem import MemDiscovery, MemStore


@pytest.fixture(params=["mem", "file", "etcd"])
async def backend_pair(request, tmp_path: Path) -> AsyncIterator[tuple[Discovery, Discovery]]:
    """Two discovery clients of the same backend (a registrant and an observer)."""
    if request.param == "mem":
        store = MemStore()
        a: Discovery = MemDiscovery(2.0, store)
        b: Discovery = MemDiscovery(2.0, store)
    elif request.param == "file":
        a = FileDiscovery(tmp_path, ttl=2.0)
        b = FileDiscovery(tmp_path, ttl=2.0)
    else:
        etcd = request.getfixturevalue("etcd")
        a = EtcdDiscovery([etcd.endpoint], ttl=2.0)
        b = EtcdDiscovery([etcd.endpoint], ttl=2.0)
    await a.start()
    await b.start()
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()
