"""Event plane over ZeroMQ, for a single machine or a cluster without NATS.

Each process publishes on one PUB socket (bound on the request-plane host, OS-assigned port) and
registers its address in discovery under ``v1/event_publishers/{ns}/{instance:x}``. Subscribers
watch that prefix and connect a SUB socket to every live publisher, so events cross processes
with no broker. Frames: ``[subject, payload]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator

import zmq
import zmq.asyncio

from dynamo.runtime.discovery.base import Discovery
from dynamo.runtime.event_plane.base import EventPlane, subject_matches

log = logging.getLogger(__name__)

PUBLISHERS_PREFIX = "v1/event_publishers/"


class ZmqEventPlane(EventPlane):
    """Brokerless pub/sub; publishers found through discovery."""

    def __init__(
        self, discovery: Discovery, namespace: str, instance_id: int, bind_host: str, advertise_host: str
    ):
        super().__init__()
        self.discovery = discovery
        self.namespace = namespace
        self.instance_id = instance_id
        self.bind_host = bind_host
        self.advertise_host = advertise_host
        self._ctx = zmq.asyncio.Context()
        self._pub: zmq.asyncio.Socket | None = None
        self._lock = asyncio.Lock()
        self.address: str | None = None

    async def start(self) -> None:
        pass  # the PUB socket is made on first publish: pure subscribers bind nothing

    async def _publisher(self) -> zmq.asyncio.Socket:
        if self._pub is not None:
            return self._pub
        async with self._lock:
            if self._pub is None:
                sock = self._ctx.socket(zmq.PUB)
                sock.setsockopt(zmq.SNDHWM, 100_000)
                sock.setsockopt(zmq.LINGER, 0)
                port = sock.bind_to_random_port(f"tcp://{self.bind_host}")
                self.address = f"tcp://{self.advertise_host}:{port}"
                key = f"{PUBLISHERS_PREFIX}{self.namespace}/{self.instance_id:x}"
                await self.discovery.put(key, json.dumps({"address": self.address}).encode())
                self._pub = sock
                # Give subscribers a moment to connect before the first events (ZMQ slow joiner).
                await asyncio.sleep(0.2)
        assert self._pub is not None
        return self._pub

    async def publish(self, subject: str, payload: bytes) -> None:
        sock = await self._publisher()
        try:
            sock.send_multipart([subject.encode(), payload], flags=zmq.NOBLOCK)
        except zmq.Again:
            log.warning("event publisher queue full; dropped an event on %s", subject)

    async def subscribe(self, subject: str) -> AsyncIterator[tuple[str, bytes]]:
        sock = self._ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.RCVHWM, 100_000)
        sock.setsockopt(zmq.LINGER, 0)
        prefix = subject[:-1] if subject.endswith(".>") else subject
        sock.setsockopt(zmq.SUBSCRIBE, prefix.encode())
        connected: dict[str, str] = {}

        async def follow_publishers() -> None:
            async for event in self.discovery.watch_prefix(PUBLISHERS_PREFIX):
                if event.kind == "put" and event.value is not None:
                    try:
                        address = json.loads(event.value)["address"]
                    except (ValueError, KeyError):
                        log.warning("bad event publisher record at %s", event.key)
                        continue
                    if connected.get(event.key) != address:
                        sock.connect(address)
                        connected[event.key] = address
                elif event.kind == "delete" and event.key in connected:
                    with contextlib.suppress(zmq.ZMQError):
                        sock.disconnect(connected.pop(event.key))

        follower = asyncio.create_task(follow_publishers(), name=f"zmq-follow:{subject}")
        try:
            while True:
                topic, payload = await sock.recv_multipart()
                name = topic.decode(errors="replace")
                if subject_matches(subject, name):
                    yield name, payload
        finally:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follower
            sock.close(0)

    async def close(self) -> None:
        if self._pub is not None:
            self._pub.close(0)
            self._pub = None
        self._ctx.destroy(0)
