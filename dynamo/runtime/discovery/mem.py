"""In-process discovery for unit tests: several runtimes in one process share a ``MemStore``."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator

from dynamo.runtime.discovery.base import Discovery, WatchEvent


class MemStore:
    """The shared key space: key -> (lease id, value)."""

    def __init__(self) -> None:
        self.keys: dict[str, tuple[int, bytes]] = {}
        self.watchers: list[tuple[str, asyncio.Queue[WatchEvent]]] = []
        self._ids = itertools.count(1)

    def next_lease(self) -> int:
        return next(self._ids)

    def notify(self, event: WatchEvent) -> None:
        for prefix, queue in self.watchers:
            if event.key.startswith(prefix):
                queue.put_nowait(event)


DEFAULT_STORE = MemStore()


class MemDiscovery(Discovery):
    """Discovery held in memory; a lease lives until ``close`` (or ``expire`` in tests)."""

    def __init__(self, ttl: float = 10.0, store: MemStore | None = None) -> None:
        super().__init__(ttl)
        self.store = store or DEFAULT_STORE
        self._lease = 0

    @property
    def lease_id(self) -> int:
        return self._lease

    async def start(self) -> None:
        self._lease = self.store.next_lease()

    async def close(self) -> None:
        self.expire()

    def expire(self) -> None:
        """Drop every key of this lease, as if the process had died."""
        for key, (lease, _) in list(self.store.keys.items()):
            if lease == self._lease:
                del self.store.keys[key]
                self.store.notify(WatchEvent("delete", key))

    async def _put(self, key: str, value: bytes) -> None:
        self.store.keys[key] = (self._lease, value)
        self.store.notify(WatchEvent("put", key, value))

    async def _delete(self, key: str) -> None:
        if self.store.keys.pop(key, None) is not None:
            self.store.notify(WatchEvent("delete", key))

    async def get_prefix(self, prefix: str) -> dict[str, bytes]:
        return {k: v for k, (_, v) in self.store.keys.items() if k.startswith(prefix)}

    async def watch_prefix(self, prefix: str) -> AsyncIterator[WatchEvent]:
        queue: asyncio.Queue[WatchEvent] = asyncio.Queue()
        entry = (prefix, queue)
        snapshot = await self.get_prefix(prefix)
        self.store.watchers.append(entry)
        try:
            for key, value in snapshot.items():
                yield WatchEvent("put", key, value)
            while True:
                yield await queue.get()
        finally:
            self.store.watchers.remove(entry)
