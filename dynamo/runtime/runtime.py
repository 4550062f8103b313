"""The distributed runtime: one per process, joining it to a Dynamo deployment.

It owns the process's discovery lease, its request-plane server (for endpoints it serves) and
client (for endpoints it calls), its event plane, its status server and its background tasks.
``shutdown`` deregisters first (so callers stop routing here), drains in-flight requests, then
stops everything it owns and revokes the lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from typing import Any

import msgspec
from prometheus_client import CollectorRegistry

from dynamo.runtime import tls
from dynamo.runtime.config import RuntimeConfig
from dynamo.runtime.discovery import Discovery, create_discovery
from dynamo.runtime.discovery import watch as discovery_watch
from dynamo.runtime.discovery.registry import InstanceRecord, card_key, instance_key
from dynamo.runtime.discovery.watch import CardEvent, InstanceEvent
from dynamo.runtime.event_plane import EventPlane
from dynamo.runtime.names import EndpointId, new_instance_id
from dynamo.runtime.request_plane import (
    InstanceUnreachable,
    RequestPlaneClient,
    RequestPlaneServer,
    ResponseStream,
)
from dynamo.runtime.request_plane.server import Handler
from dynamo.runtime.status import StatusServer
from dynamo.runtime.store import KeyValueStore, create_store

log = logging.getLogger(__name__)


def handler_name(endpoint: EndpointId) -> str:
    """The name a request-plane server knows an endpoint by."""
    return f"{endpoint.namespace}.{endpoint.component}.{endpoint.name}"


class DistributedRuntime:
    """A process's membership in a deployment. Create with ``await DistributedRuntime.create()``."""

    def __init__(self, config: RuntimeConfig, discovery: Discovery, instance_id: int | None = None) -> None:
        self.config = config
        self.discovery = discovery
        self.instance_id = instance_id or new_instance_id()
        self.metrics = CollectorRegistry()
        self._server: RequestPlaneServer | None = None
        self._client: RequestPlaneClient | None = None
        self._events: EventPlane | None = None
        self._status: StatusServer | None = None
        self._store: KeyValueStore | None = None
        self._served: dict[EndpointId, list[str]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._shutdown = asyncio.Event()
        self._closed = False

    @classmethod
    async def create(
        cls, config: RuntimeConfig | None = None, discovery: Discovery | None = None
    ) -> DistributedRuntime:
        """Connect to discovery (and start the status server when ``DYN_SYSTEM_PORT`` is set)."""
        config = config or RuntimeConfig.from_env()
        discovery = discovery or create_discovery(config)
        await discovery.start()
        rt = cls(config, discovery)
        if config.system_port is not None:
            rt._status = StatusServer(config.system_port, rt.metrics)
            await rt._status.start()
        log.debug(
            "runtime up: instance %x, namespace %s, discovery %s",
            rt.instance_id,
            config.namespace,
            config.discovery_backend,
        )
        return rt

    @property
    def namespace(self) -> str:
        return self.config.namespace

    @property
    def status(self) -> StatusServer | None:
        return self._status

    # --- background tasks -------------------------------------------------------------------
    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run ``coro`` as a task the runtime owns and cancels on shutdown; failures are logged."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("background task %s failed", name, exc_info=t.exception())

        task.add_done_callback(done)
        return task

    # --- serving ----------------------------------------------------------------------------
    async def request_server(self) -> RequestPlaneServer:
        """This process's request-plane server (started on first use)."""
        if self._server is None:
            server = RequestPlaneServer(
                self.config.request_plane_bind_host(),
                self.config.tcp_port,
                ssl_context=tls.request_plane_server_context(),
                handshake_timeout=tls.handshake_timeout(),
            )
            await server.start()
            self._server = server
        return self._server

    async def serve_endpoint(
        self,
        endpoint: EndpointId | str,
        handler: Handler,
        *,
        model_card: bytes | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> InstanceRecord:
        """Serve ``handler`` on ``endpoint`` and register this instance (and its model card)."""
        ep = endpoint if isinstance(endpoint, EndpointId) else EndpointId.parse(endpoint, self.namespace)
        server = await self.request_server()
        server.register(handler_name(ep), handler)
        record = InstanceRecord(
            namespace=ep.namespace,
            component=ep.component,
            endpoint=ep.name,
            instance_id=self.instance_id,
            address=f"{self.config.advertised_host()}:{server.port}",
            metadata=metadata or {},
        )
        keys = []
        if model_card is not None:
            await self.discovery.put(card_key(ep, self.instance_id), model_card)
            keys.append(card_key(ep, self.instance_id))
        await self.discovery.put(instance_key(ep, self.instance_id), msgspec.json.encode(record))
        keys.append(instance_key(ep, self.instance_id))
        self._served[ep] = keys
        log.info("serving %s as instance %x at %s", ep, self.instance_id, record.address)
        return record

    async def deregister_all(self) -> None:
        """Remove every instance and card key of this process (callers stop routing here)."""
        for keys in self._served.values():
            for key in keys:
                try:
                    await self.discovery.delete(key)
                except Exception as exc:
                    log.warning("could not deregister %s: %s", key, exc)

    def set_ready(self, ready: bool = True) -> None:
        """Flip ``/health`` on the status server (if any)."""
        if self._status is not None:
            self._status.ready = ready

    # --- calling ----------------------------------------------------------------------------
    @property
    def request_client(self) -> RequestPlaneClient:
        """The shared connection pool for calling other instances."""
        if self._client is None:
            self._client = RequestPlaneClient(tls=tls.request_plane_client_tls())
        return self._client

    async def endpoint_client(self, endpoint: EndpointId | str) -> EndpointClient:
        """A client that tracks the live instances of ``endpoint``."""
        ep = endpoint if isinstance(endpoint, EndpointId) else EndpointId.parse(endpoint, self.namespace)
        client = EndpointClient(self, ep)
        await client.start()
        return client

    # --- discovery --------------------------------------------------------------------------
    def watch_instances(
        self, *, namespaces: Iterable[str] | None = None, endpoint: EndpointId | None = None
    ) -> AsyncIterator[InstanceEvent]:
        """Instances of ``endpoint``, else of ``namespaces``, else of every namespace: the current
        ones as ``added``, then changes (see ``dynamo.runtime.discovery.watch``)."""
        return discovery_watch.watch_instances(self.discovery, namespaces=namespaces, endpoint=endpoint)

    def watch_model_cards(
        self, *, namespaces: Iterable[str] | None = None, endpoint: EndpointId | None = None
    ) -> AsyncIterator[CardEvent]:
        """Model cards (raw JSON) of ``endpoint``, else of ``namespaces``, else of every namespace."""
        return discovery_watch.watch_model_cards(self.discovery, namespaces=namespaces, endpoint=endpoint)

    async def list_instances(
        self, *, namespaces: Iterable[str] | None = None, endpoint: EndpointId | None = None
    ) -> list[InstanceRecord]:
        """The live instances of a scope now."""
        return await discovery_watch.list_instances(self.discovery, namespaces=namespaces, endpoint=endpoint)

    # --- store ------------------------------------------------------------------------------
    @property
    def store(self) -> KeyValueStore:
        """The deployment's key-value store with TTLs (``dynamo.runtime.store``), on the discovery
        backend."""
        if self._store is None:
            self._store = create_store(self.discovery)
        return self._store

    # --- events -----------------------------------------------------------------------------
    async def event_plane(self) -> EventPlane:
        """The process's event plane (connected on first use)."""
        if self._events is None:
            if self.config.event_plane == "nats":
                from dynamo.runtime.event_plane.nats import NatsEventPlane

                events: EventPlane = NatsEventPlane(self.config.nats_server)
            else:
                from dynamo.runtime.event_plane.zmq import ZmqEventPlane

                bind = self.config.tcp_host or "0.0.0.0"
                events = ZmqEventPlane(
                    self.discovery, self.namespace, self.instance_id, bind, self.config.advertised_host()
                )
            await events.start()
            self._events = events
        return self._events

    # --- lifecycle --------------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT start a graceful shutdown (see ``wait_for_shutdown``)."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_shutdown, sig)

    def request_shutdown(self, sig: int | None = None) -> None:
        if sig is not None and not self._shutdown.is_set():
            log.info("received %s: draining and shutting down", signal.Signals(sig).name)
        self._shutdown.set()

    async def wait_for_shutdown(self) -> None:
        await self._shutdown.wait()

    async def shutdown(self) -> None:
        """Deregister, drain in-flight requests (up to ``drain_timeout``), stop, revoke the lease."""
        if self._closed:
            return
        self._closed = True
        if self._status is not None:
            self._status.draining = True
        await self.deregister_all()
        if self._server is not None:
            finished = await self._server.drain(self.config.drain_timeout)
            if not finished:
                log.warning(
                    "drain timeout (%.0fs) reached; cancelling remaining requests", self.config.drain_timeout
                )
            await self._server.stop()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5)
        if self._events is not None:
            with contextlib.suppress(Exception):
                await self._events.close()
        if self._client is not None:
            await self._client.close()
        if self._store is not None:
            await self._store.close()
        await self.discovery.close()
        if self._status is not None:
            await self._status.stop()
        log.info("instance %x shut down", self.instance_id)


class EndpointClient:
    """Live view of an endpoint's instances, and streams to them."""

    def __init__(self, runtime: DistributedRuntime, endpoint: EndpointId) -> None:
        self.runtime = runtime
        self.endpoint = endpoint
        self.instances: dict[int, InstanceRecord] = {}
        self._changed = asyncio.Event()
        self._listeners: list[Callable[[str, InstanceRecord], None]] = []
        self._rr = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        for record in await self.runtime.list_instances(endpoint=self.endpoint):
            self._on_put(record)
        self._task = self.runtime.spawn(self._follow(), f"watch:{self.endpoint}")

    async def _follow(self) -> None:
        async for event in self.runtime.watch_instances(endpoint=self.endpoint):
            if event.record is not None:
                self._on_put(event.record)
            else:
                record = self.instances.pop(event.instance_id, None)
                if record is not None:
                    self.runtime.request_client.forget(record.address)
                    for cb in self._listeners:
                        cb("delete", record)
            self._changed.set()

    def _on_put(self, record: InstanceRecord) -> None:
        self.instances[record.instance_id] = record
        for cb in self._listeners:
            cb("put", record)

    def on_change(self, callback: Callable[[str, InstanceRecord], None]) -> None:
        """Call ``callback("put"|"delete", record)`` on every instance change."""
        self._listeners.append(callback)

    def instance_ids(self) -> list[int]:
        return list(self.instances)

    async def wait_for_instances(self, timeout: float | None = None) -> list[int]:
        """Wait until at least one instance is live; returns their ids."""
        async with asyncio.timeout(timeout):
            while not self.instances:
                self._changed.clear()
                await self._changed.wait()
        return self.instance_ids()

    async def direct(
        self, body: Any, instance_id: int, headers: dict[str, Any] | None = None
    ) -> ResponseStream:
        """Send to one instance; ``InstanceUnreachable`` if it is unknown or cannot be reached."""
        record = self.instances.get(instance_id)
        if record is None:
            raise InstanceUnreachable(f"instance {instance_id:x} of {self.endpoint} is not live")
        return await self.runtime.request_client.stream(
            record.address, handler_name(self.endpoint), body, headers
        )

    async def round_robin(self, body: Any, headers: dict[str, Any] | None = None) -> ResponseStream:
        """Send to the next instance in turn, skipping unreachable ones."""
        return await self._failover(body, headers, pick_random=False)

    async def random(self, body: Any, headers: dict[str, Any] | None = None) -> ResponseStream:
        """Send to a random instance, skipping unreachable ones."""
        return await self._failover(body, headers, pick_random=True)

    async def _failover(self, body: Any, headers: dict[str, Any] | None, pick_random: bool) -> ResponseStream:
        ids = sorted(self.instances)
        if not ids:
            raise InstanceUnreachable(f"no live instances of {self.endpoint}")
        if pick_random:
            random.shuffle(ids)
        else:
            self._rr += 1
            start = self._rr % len(ids)
            ids = ids[start:] + ids[:start]
        last: Exception | None = None
        for iid in ids:
            try:
                return await self.direct(body, iid, headers)
            except InstanceUnreachable as exc:
                last = exc
        raise InstanceUnreachable(f"no reachable instance of {self.endpoint}: {last}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
