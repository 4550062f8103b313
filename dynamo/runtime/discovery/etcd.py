"""Discovery in etcd (production): one lease per process, kept alive in the background.

Every key is put under the lease, so a process that dies disappears when its lease expires. If
the keep-alive finds the lease gone (etcd restarted with a new member, a partition longer than the
TTL) it grants a new lease and re-registers every key this process owns. Watches re-list and
diff after a dropped stream, then resume from the listed revision; keys a re-list no longer shows
are held for up to one TTL first (etcd that came back empty: their owners re-register within a
keep-alive interval, so watchers keep serving on what they knew instead of dropping it all).
``start`` waits up to ``connect_wait`` seconds for an etcd that is not up yet (a process started
during an outage joins once it returns).

Credentials and TLS come from ``ETCD_AUTH_*`` (``dynamo.runtime.tls``); with a user, a call
refused for a token etcd no longer knows (it restarted) logs in again and is retried once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar
from urllib.parse import urlparse

import aetcd
import aetcd.exceptions
import aetcd.rpc
import grpc

from dynamo.runtime.discovery.base import Discovery, WatchEvent, diff_views
from dynamo.runtime.tls import EtcdCredentials, etcd_credentials

log = logging.getLogger(__name__)

T = TypeVar("T")

RETRY_DELAY = 0.5
CONNECT_RETRY = 2.0  # seconds between start-up attempts while etcd is not up
# gRPC backs off reconnecting up to 2 minutes by default: after an etcd outage that delayed lease
# renewal and watch re-listing by many seconds. Retry at least every second instead.
_CHANNEL_OPTIONS = {"grpc.initial_reconnect_backoff_ms": 200, "grpc.max_reconnect_backoff_ms": 1000}


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """``http://host:port`` (or ``host:port``) -> (host, port)."""
    url = urlparse(endpoint if "://" in endpoint else f"http://{endpoint}")
    if not url.hostname:
        raise ValueError(f"invalid etcd endpoint {endpoint!r}")
    return url.hostname, url.port or 2379


class _EtcdClient(aetcd.Client):
    """``aetcd.Client`` over TLS when the credentials ask for it (aetcd itself only dials
    plaintext): the same connection steps on a secure gRPC channel."""

    def __init__(self, host: str, port: int, timeout: int, creds: EtcdCredentials) -> None:
        super().__init__(
            host=host,
            port=port,
            username=creds.username,
            password=creds.password,
            timeout=timeout,
            options=_CHANNEL_OPTIONS,
        )
        self._creds = creds

    async def connect(self) -> None:
        if not self._creds.tls:
            await super().connect()
            return
        insecure_channel = aetcd.rpc.insecure_channel
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self._creds.ca,
            private_key=self._creds.client_key,
            certificate_chain=self._creds.client_cert,
        )

        def secure_channel(target: str, options: object = None) -> grpc.aio.Channel:
            aetcd.rpc.insecure_channel = insecure_channel
            return grpc.aio.secure_channel(target, credentials, options=options)  # type: ignore[arg-type]

        # aetcd.Client.connect opens its one channel before its first await: swapped for that call.
        aetcd.rpc.insecure_channel = secure_channel
        try:
            await super().connect()
        finally:
            aetcd.rpc.insecure_channel = insecure_channel

    async def log_in_again(self) -> None:
        """A fresh authentication token for every later call (and the next watch stream)."""
        reply = await self.auth_stub.Authenticate(
            aetcd.rpc.AuthenticateRequest(name=self._username, password=self._password), timeout=self._timeout
        )
        self.metadata = (("token", reply.token),)
        if self._watcher is not None:
            self._watcher._metadata = self.metadata


class EtcdDiscovery(Discovery):
    """Discovery backed by an etcd v3 server (first reachable of ``endpoints``)."""

    def __init__(
        self, endpoints: tuple[str, ...] | list[str], ttl: float = 10.0, connect_wait: float = 0.0
    ) -> None:
        super().__init__(ttl)
        self.connect_wait = connect_wait  # seconds start() keeps retrying an etcd that is not up
        self.endpoints = [parse_endpoint(e) for e in endpoints]
        self.credentials = etcd_credentials(force_tls=any(e.startswith("https://") for e in endpoints))
        self._client: aetcd.Client | None = None
        self._lease = 0
        self._keepalive: asyncio.Task[None] | None = None
        self._closing = False
        self._lease_lock = asyncio.Lock()

    @property
    def lease_id(self) -> int:
        return self._lease

    @property
    def client(self) -> aetcd.Client:
        if self._client is None:
            raise RuntimeError("EtcdDiscovery.start() was not called")
        return self._client

    async def start(self) -> None:
        last: Exception | None = None
        where = ", ".join(f"{h}:{p}" for h, p in self.endpoints)
        deadline = asyncio.get_running_loop().time() + self.connect_wait
        while self._client is None:
            for host, port in self.endpoints:
                client = _EtcdClient(host, port, max(2, math.ceil(self.ttl / 2)), self.credentials)
                try:
                    await asyncio.wait_for(client.connect(), timeout=5)
                    await asyncio.wait_for(client.status(), timeout=5)
                except Exception as exc:  # grpc and aetcd raise assorted types here
                    last = exc
                    with contextlib.suppress(Exception):
                        await client.close()
                    continue
                self._client = client
                break
            if self._client is None:
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    raise ConnectionError(f"cannot reach etcd at {where} (ETCD_ENDPOINTS): {last}")
                log.warning(
                    "cannot reach etcd at %s (%s); retrying for up to %.0fs more (DYN_ETCD_CONNECT_WAIT)",
                    where,
                    last,
                    left,
                )
                await asyncio.sleep(min(CONNECT_RETRY, left))
        await self._grant()
        self._keepalive = asyncio.create_task(self._keep_alive(), name="etcd-lease-keepalive")

    async def _authed(self, call: Callable[[], Awaitable[T]]) -> T:
        """``call()``; when etcd refuses this process's token, log in again and retry once."""
        try:
            return await call()
        except aetcd.exceptions.UnauthenticatedError as exc:
            if self.credentials.username is None or not isinstance(self._client, _EtcdClient):
                raise
            log.warning("etcd refused this process's token (%s); logging in again", exc)
            await self._client.log_in_again()
        return await call()

    async def _grant(self) -> None:
        lease = await self._authed(lambda: self.client.lease(max(1, math.ceil(self.ttl))))
        self._lease = lease.id
        log.debug("etcd lease %x granted (ttl %ss)", self._lease, lease.ttl)

    async def _keep_alive(self) -> None:
        interval = max(0.2, self.ttl / 3)
        while not self._closing:  # close() may see its cancel swallowed (below): this ends the loop
            await asyncio.sleep(interval)
            try:
                reply = await asyncio.wait_for(
                    self._authed(lambda: self.client.refresh_lease(self._lease)), timeout=interval * 2
                )
                if reply is not None and reply.TTL > 0:
                    continue
                log.warning("etcd lease %x expired; re-creating it", self._lease)
            except Exception as exc:  # grpc and aetcd surface transport failures as several types
                log.warning("etcd keep-alive failed (%s); retrying", exc or type(exc).__name__)
                continue
            await self._recreate_lease()

    async def _recreate_lease(self) -> None:
        while not self._closing:
            try:
                async with self._lease_lock:
                    await self._grant()
                await self._reregister()
                return
            except Exception as exc:
                log.warning("re-creating the etcd lease failed (%s); retrying", exc)
                await asyncio.sleep(RETRY_DELAY)

    async def close(self) -> None:
        self._closing = True
        task, self._keepalive = self._keepalive, None
        # A cancel can be lost: gRPC turns it into an RPC error (which the keep-alive retries), and
        # Python 3.11's wait_for drops one that races the reply. Cancel until the task has ended.
        while task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=1)
        if self._client is not None:
            try:
                await asyncio.wait_for(self._client.revoke_lease(self._lease), timeout=3)
            except Exception as exc:
                log.warning("could not revoke etcd lease %x: %s", self._lease, exc)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._client.close(), timeout=3)
            self._client = None

    async def _put(self, key: str, value: bytes) -> None:
        async with self._lease_lock:
            await self._authed(lambda: self.client.put(key.encode(), value, lease=self._lease))

    async def _delete(self, key: str) -> None:
        await self._authed(lambda: self.client.delete(key.encode()))

    async def _get_with_revision(self, prefix: str) -> tuple[dict[str, bytes], int]:
        result = await self._authed(lambda: self.client.get_prefix(prefix.encode()))
        view = {kv.key.decode(): kv.value for kv in result}
        revision = result.header.revision if getattr(result, "header", None) else 0
        return view, revision

    async def _await_reregistration(
        self, prefix: str, missing: list[str], current: dict[str, bytes], revision: int
    ) -> tuple[dict[str, bytes], int]:
        """Re-list ``prefix`` until every ``missing`` key is back or one TTL has passed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.ttl
        log.info(
            "%d keys under %s vanished from etcd; waiting up to %.0fs for re-registration",
            len(missing),
            prefix,
            self.ttl,
        )
        while loop.time() < deadline and any(k not in current for k in missing):
            await asyncio.sleep(RETRY_DELAY)
            try:
                current, revision = await self._get_with_revision(prefix)
            except Exception as exc:
                log.debug("etcd list %s failed (%s); retrying", prefix, exc)
        return current, revision

    async def get_prefix(self, prefix: str) -> dict[str, bytes]:
        view, _ = await self._get_with_revision(prefix)
        return view

    async def watch_prefix(self, prefix: str) -> AsyncIterator[WatchEvent]:
        view: dict[str, bytes] = {}
        while True:
            try:
                current, revision = await self._get_with_revision(prefix)
            except Exception as exc:
                log.debug("etcd list %s failed (%s); retrying", prefix, exc)
                await asyncio.sleep(RETRY_DELAY)
                continue
            missing = [k for k in view if k not in current]
            if missing:
                # After an outage etcd may have come back empty: give the owners of the missing keys
                # one TTL to re-register before reporting them gone.
                current, revision = await self._await_reregistration(prefix, missing, current, revision)
            for event in diff_views(view, current):
                yield event
            view = current
            watch = None
            try:
                watch = await self.client.watch_prefix(prefix.encode(), start_revision=revision + 1)
                async for ev in watch:
                    key = ev.kv.key.decode()
                    if ev.kind == "PUT":
                        view[key] = ev.kv.value
                        yield WatchEvent("put", key, ev.kv.value)
                    elif view.pop(key, None) is not None:
                        yield WatchEvent("delete", key)
                log.debug("etcd watch on %s ended; re-listing", prefix)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.info("etcd watch on %s broke (%s); re-listing", prefix, exc or type(exc).__name__)
                await asyncio.sleep(RETRY_DELAY)
            finally:
                if watch is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(watch.cancel(), timeout=1)
