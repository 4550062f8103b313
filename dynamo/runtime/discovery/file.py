"""Discovery in a shared directory, for a single machine with nothing else installed.

Layout under the root (``DYN_FILE_DISCOVERY_DIR``, default ``~/.cache/dynamo/discovery``):
``leases/<lease:x>`` is a heartbeat file whose mtime the owner refreshes every TTL/3; every key is a
file ``keys/<key>`` holding ``<lease:x>\\n<value>``. A key whose lease file is missing or older than
the TTL is dead: readers ignore it and remove it. Watches poll the directory (twice a second).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path

from dynamo.runtime.discovery.base import Discovery, WatchEvent, diff_views

log = logging.getLogger(__name__)


class FileDiscovery(Discovery):
    """Discovery through files with heartbeat expiry (survives ``kill -9`` of a registrant)."""

    def __init__(self, root: Path, ttl: float = 10.0, poll_interval: float | None = None) -> None:
        super().__init__(ttl)
        self.root = Path(root)
        self._keys = self.root / "keys"
        self._leases = self.root / "leases"
        self._lease = 0
        self._heartbeat: asyncio.Task[None] | None = None
        self.poll_interval = poll_interval if poll_interval is not None else min(0.5, ttl / 4)

    @property
    def lease_id(self) -> int:
        return self._lease

    def _lease_file(self, lease: int) -> Path:
        return self._leases / f"{lease:x}"

    async def start(self) -> None:
        self._keys.mkdir(parents=True, exist_ok=True)
        self._leases.mkdir(parents=True, exist_ok=True)
        self._lease = secrets.randbits(62) or 1
        self._lease_file(self._lease).touch()
        self._heartbeat = asyncio.create_task(self._beat(), name="file-discovery-heartbeat")

    async def close(self) -> None:
        if self._heartbeat:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
            self._heartbeat = None
        for key in list(self._owned):
            with contextlib.suppress(OSError):
                self._key_file(key).unlink()
        with contextlib.suppress(OSError):
            self._lease_file(self._lease).unlink()

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            lease_file = self._lease_file(self._lease)
            try:
                os.utime(lease_file)
            except FileNotFoundError:
                log.warning("heartbeat file %s vanished; re-creating the lease", lease_file)
                self._lease = secrets.randbits(62) or 1
                self._lease_file(self._lease).touch()
                await self._reregister()
            except OSError as exc:
                log.warning("discovery heartbeat failed: %s", exc)

    def _key_file(self, key: str) -> Path:
        if ".." in key.split("/"):
            raise ValueError(f"invalid discovery key {key!r}")
        return self._keys / key

    async def _put(self, key: str, value: bytes) -> None:
        path = self._key_file(key)
        await asyncio.to_thread(self._write_atomic, path, f"{self._lease:x}\n".encode() + value)

    @staticmethod
    def _write_atomic(path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    async def _delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._key_file(key).unlink()

    async def get_prefix(self, prefix: str) -> dict[str, bytes]:
        return await asyncio.to_thread(self._scan, prefix)

    def _scan(self, prefix: str) -> dict[str, bytes]:
        now = time.time()
        live: dict[str, bool] = {}
        out: dict[str, bytes] = {}
        base = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self._keys / base if base else self._keys
        for dirpath, _dirs, files in os.walk(start):
            for name in files:
                if name.startswith("."):
                    continue
                path = Path(dirpath) / name
                key = path.relative_to(self._keys).as_posix()
                if not key.startswith(prefix):
                    continue
                try:
                    raw = path.read_bytes()
                except FileNotFoundError:
                    continue
                lease_hex, _, value = raw.partition(b"\n")
                lease = lease_hex.decode(errors="replace")
                if lease not in live:
                    try:
                        live[lease] = now - (self._leases / lease).stat().st_mtime <= self.ttl
                    except FileNotFoundError:
                        live[lease] = False
                if live[lease]:
                    out[key] = value
                else:
                    with contextlib.suppress(OSError):
                        path.unlink()
        return out

    async def watch_prefix(self, prefix: str) -> AsyncIterator[WatchEvent]:
        view: dict[str, bytes] = {}
        while True:
            current = await self.get_prefix(prefix)
            for event in diff_views(view, current):
                yield event
            view = current
            await asyncio.sleep(self.poll_interval)
