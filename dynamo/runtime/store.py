"""The graph's key-value store: small values with a time to live, shared by every process of a
deployment (``DistributedRuntime.store``).

Journey: a frontend answers a request and keeps what a follow-up needs (``put(key, value, ttl)``)
-> **here** -> any frontend process or replica that receives the follow-up reads it (``get``).
Unlike discovery keys, stored values are not bound to the writer's liveness: they outlive the
process that wrote them and go when their TTL runs out.

Backends follow the runtime's discovery backend:

- etcd: each value is put under a lease shared by every value that expires in the same time
  bucket (``bucket_width(ttl)``: a tenth of the TTL, between 1 s and 60 s), so etcd removes it at
  most one bucket after its TTL without a lease per value;
- file: one file per key under ``<discovery dir>/store/``; expired files are removed by a sweep
  (at most once a minute, when values are put) and by any read that finds them;
- mem: a dict per in-process ``MemStore`` (unit tests).

Every value carries its expiry time, and ``get`` returns ``None`` for an expired value whatever the
backend has removed yet, so the TTL holds to the second (given synchronised clocks). Key layouts
belong to ``dynamo.runtime.discovery.registry``.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import math
import os
import secrets
import struct
import time
import weakref
from pathlib import Path
from typing import TYPE_CHECKING

from dynamo.runtime.discovery.base import Discovery

if TYPE_CHECKING:
    import aetcd

    from dynamo.runtime.discovery.etcd import EtcdDiscovery
    from dynamo.runtime.discovery.mem import MemStore

log = logging.getLogger(__name__)

_EXPIRY = struct.Struct(">d")  # the envelope: expiry (unix seconds, float64) then the value
SWEEP_INTERVAL = 60.0  # seconds between two sweeps of the file backend


def bucket_width(ttl: float) -> float:
    """Seconds of expiry times that share one etcd lease: ttl / 10, clamped to [1, 60]."""
    return min(60.0, max(1.0, ttl / 10))


def _seal(value: bytes, ttl: float, now: float) -> bytes:
    return _EXPIRY.pack(now + ttl) + value


def _open(raw: bytes, now: float) -> bytes | None:
    """The value of an envelope, or None when it expired (or is not an envelope)."""
    if len(raw) < _EXPIRY.size:
        return None
    (expires,) = _EXPIRY.unpack_from(raw)
    return raw[_EXPIRY.size :] if expires > now else None


def _check_ttl(ttl: float) -> None:
    if not ttl > 0 or math.isinf(ttl):
        raise ValueError(f"a stored value needs a finite positive ttl (got {ttl})")


class KeyValueStore(abc.ABC):
    """Values shared across the deployment's processes, each with a TTL (seconds)."""

    @abc.abstractmethod
    async def put(self, key: str, value: bytes, ttl: float) -> None:
        """Store ``value`` under ``key`` (replacing any) until ``ttl`` seconds from now."""

    @abc.abstractmethod
    async def get(self, key: str) -> bytes | None:
        """The value under ``key``; None when there is none or it expired."""

    @abc.abstractmethod
    async def delete(self, key: str) -> bool:
        """Remove ``key``; whether a live value was there."""

    async def close(self) -> None:  # noqa: B027 - most backends have nothing to stop
        """Stop any background work (the backend's connection belongs to discovery)."""


class EtcdStore(KeyValueStore):
    """Values in etcd, under one lease per expiry bucket (not the writer's own lease)."""

    def __init__(self, discovery: EtcdDiscovery) -> None:
        self._discovery = discovery  # its connected client is shared
        self._leases: dict[int, int] = {}  # bucket end (ms since the epoch) -> lease id
        self._lock = asyncio.Lock()

    @property
    def _client(self) -> aetcd.Client:
        return self._discovery.client

    async def _lease(self, expires: float, width: float, now: float) -> int:
        end = math.ceil(expires / width) * width
        bucket = round(end * 1000)
        async with self._lock:
            for old in [b for b in self._leases if b <= now * 1000]:
                del self._leases[old]
            lease = self._leases.get(bucket)
            if lease is None:
                granted = await self._client.lease(max(1, math.ceil(end - now)))
                lease = self._leases[bucket] = int(granted.id)
        return lease

    async def put(self, key: str, value: bytes, ttl: float) -> None:
        _check_ttl(ttl)
        now = time.time()
        expires = now + ttl
        width = bucket_width(ttl)
        data = _seal(value, ttl, now)
        lease = await self._lease(expires, width, now)
        try:
            await self._client.put(key.encode(), data, lease=lease)
        except Exception as exc:  # the lease may be gone (etcd restarted): grant a new one once
            log.info("store put of %s under lease %x failed (%s); granting a new lease", key, lease, exc)
            async with self._lock:
                self._leases = {b: lid for b, lid in self._leases.items() if lid != lease}
            lease = await self._lease(expires, width, now)
            await self._client.put(key.encode(), data, lease=lease)

    async def get(self, key: str) -> bytes | None:
        result = await self._client.get(key.encode())
        if result is None:
            return None
        return _open(result.value, time.time())

    async def delete(self, key: str) -> bool:
        result = await self._client.delete(key.encode(), prev_kv=True)
        prev = result.prev_kv if result is not None else None
        return prev is not None and _open(prev.value, time.time()) is not None


class FileStore(KeyValueStore):
    """Values as files under ``root`` (the file discovery's directory + ``store``)."""

    def __init__(self, root: Path, sweep_interval: float = SWEEP_INTERVAL) -> None:
        self.root = Path(root)
        self.sweep_interval = sweep_interval
        self._last_sweep = 0.0
        self._sweeping: asyncio.Task[int] | None = None

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        if not key or any(p in ("", ".", "..") or p.startswith(".") for p in parts):
            raise ValueError(f"invalid store key {key!r}")
        return self.root.joinpath(*parts)

    async def put(self, key: str, value: bytes, ttl: float) -> None:
        _check_ttl(ttl)
        path = self._path(key)
        now = time.time()
        await asyncio.to_thread(_write_atomic, path, _seal(value, ttl, now))
        if now - self._last_sweep >= self.sweep_interval and self._sweeping is None:
            self._last_sweep = now
            self._sweeping = asyncio.create_task(asyncio.to_thread(self.sweep), name="file-store-sweep")
            self._sweeping.add_done_callback(self._swept)

    def _swept(self, task: asyncio.Task[int]) -> None:
        self._sweeping = None
        if not task.cancelled() and task.exception() is not None:
            log.warning("sweeping the file store failed: %s", task.exception())

    async def get(self, key: str) -> bytes | None:
        return await asyncio.to_thread(self._read, self._path(key))

    def _read(self, path: Path) -> bytes | None:
        try:
            raw = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None
        value = _open(raw, time.time())
        if value is None:
            with contextlib.suppress(OSError):
                path.unlink()
        return value

    async def delete(self, key: str) -> bool:
        path = self._path(key)
        value = await asyncio.to_thread(self._read, path)
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(path.unlink)
        return value is not None

    def sweep(self) -> int:
        """Remove every expired value now (blocking: call in a thread); how many were removed."""
        removed = 0
        now = time.time()
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                if name.startswith("."):
                    continue
                path = Path(dirpath) / name
                try:
                    with path.open("rb") as f:
                        head = f.read(_EXPIRY.size)
                except OSError:
                    continue
                if len(head) == _EXPIRY.size and _EXPIRY.unpack(head)[0] > now:
                    continue
                with contextlib.suppress(OSError):
                    path.unlink()
                    removed += 1
        return removed

    async def close(self) -> None:
        if self._sweeping is not None:
            self._sweeping.cancel()
            with contextlib.suppress(BaseException):
                await self._sweeping


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class MemKeyValueStore(KeyValueStore):
    """Values in a dict shared by every runtime on the same ``MemStore`` (in-process tests)."""

    _spaces: weakref.WeakKeyDictionary[MemStore, dict[str, bytes]] = weakref.WeakKeyDictionary()

    def __init__(self, space: MemStore) -> None:
        self._values = self._spaces.setdefault(space, {})

    async def put(self, key: str, value: bytes, ttl: float) -> None:
        _check_ttl(ttl)
        now = time.time()
        for old in [k for k, v in self._values.items() if _open(v, now) is None]:
            del self._values[old]
        self._values[key] = _seal(value, ttl, now)

    async def get(self, key: str) -> bytes | None:
        raw = self._values.get(key)
        return None if raw is None else _open(raw, time.time())

    async def delete(self, key: str) -> bool:
        raw = self._values.pop(key, None)
        return raw is not None and _open(raw, time.time()) is not None


def create_store(discovery: Discovery) -> KeyValueStore:
    """The store that goes with a (started) discovery backend."""
    from dynamo.runtime.discovery.etcd import EtcdDiscovery
    from dynamo.runtime.discovery.file import FileDiscovery
    from dynamo.runtime.discovery.mem import MemDiscovery

    if isinstance(discovery, EtcdDiscovery):
        return EtcdStore(discovery)
    if isinstance(discovery, FileDiscovery):
        return FileStore(discovery.root / "store")
    if isinstance(discovery, MemDiscovery):
        return MemKeyValueStore(discovery.store)
    raise TypeError(f"no key-value store for discovery backend {type(discovery).__name__}")
