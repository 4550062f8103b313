"""Discovery: where processes register their instances and model cards, and watch for others.

Every key a process writes is bound to that process's liveness (an etcd lease, or a heartbeat file),
so a process that dies disappears within the TTL. Keys are remembered, so when a lease is lost
(etcd restarted, a partition longer than the TTL) the process re-creates it and re-registers
everything. Watches deliver the current keys first, then changes; after a dropped connection they
re-list and emit the difference, so a watcher never keeps a key that is gone.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Literal

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """A key appeared or changed (``put``) or went away (``delete``)."""

    kind: Literal["put", "delete"]
    key: str
    value: bytes | None = None


def diff_views(old: dict[str, bytes], new: dict[str, bytes]) -> list[WatchEvent]:
    """Events that turn the view ``old`` into ``new``."""
    events = [WatchEvent("delete", k) for k in old if k not in new]
    events += [WatchEvent("put", k, v) for k, v in new.items() if old.get(k) != v]
    return events


class Discovery(abc.ABC):
    """A key-value registry with liveness-bound keys and prefix watches."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._owned: dict[str, bytes] = {}
        self._lease_listeners: list[Callable[[], None]] = []

    @abc.abstractmethod
    async def start(self) -> None:
        """Connect and create this process's lease."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Revoke the lease (removing every key this process wrote) and disconnect."""

    @abc.abstractmethod
    async def _put(self, key: str, value: bytes) -> None: ...

    @abc.abstractmethod
    async def _delete(self, key: str) -> None: ...

    @abc.abstractmethod
    async def get_prefix(self, prefix: str) -> dict[str, bytes]:
        """Every live key under ``prefix``."""

    @abc.abstractmethod
    def watch_prefix(self, prefix: str) -> AsyncIterator[WatchEvent]:
        """Current keys under ``prefix`` as ``put`` events, then changes, until cancelled."""

    @property
    @abc.abstractmethod
    def lease_id(self) -> int:
        """The current lease (changes when a lost lease is re-created)."""

    async def put(self, key: str, value: bytes) -> None:
        """Write ``key`` bound to this process's lease; re-written after a lease loss."""
        await self._put(key, value)
        self._owned[key] = value

    async def delete(self, key: str) -> None:
        """Remove a key this process wrote."""
        self._owned.pop(key, None)
        await self._delete(key)

    def on_lease_recreated(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` after a lost lease was re-created and keys re-registered."""
        self._lease_listeners.append(callback)

    async def _reregister(self) -> None:
        for key, value in list(self._owned.items()):
            await self._put(key, value)
        log.warning("discovery lease re-created (%x); re-registered %d keys", self.lease_id, len(self._owned))
        for cb in self._lease_listeners:
            try:
                cb()
            except Exception:
                log.exception("lease listener failed")
