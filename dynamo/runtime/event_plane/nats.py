"""Event plane over NATS core subjects (production; ``NATS_SERVER``).

Credentials and TLS come from ``NATS_AUTH_*`` / ``NATS_TLS_*`` (``dynamo.runtime.tls``)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import nats
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from dynamo.runtime.event_plane.base import EventPlane
from dynamo.runtime.tls import nats_options

log = logging.getLogger(__name__)

SUBSCRIBER_QUEUE = 65536  # events buffered per subscriber before the oldest are dropped


class NatsEventPlane(EventPlane):
    """Events as NATS messages; reconnects forever in the background."""

    def __init__(self, server: str) -> None:
        self.server = server
        self._nc: NatsClient | None = None

    @property
    def nc(self) -> NatsClient:
        if self._nc is None:
            raise RuntimeError("NatsEventPlane.start() was not called")
        return self._nc

    async def start(self) -> None:
        async def on_error(exc: Exception) -> None:
            log.warning("NATS: %s", exc)

        options = nats_options(self.server)
        try:
            self._nc = await nats.connect(
                self.server,
                **options,  # type: ignore[arg-type]  # credentials and TLS, typed per key
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,
                connect_timeout=5,
                allow_reconnect=True,
                error_cb=on_error,
            )
        except Exception as exc:
            raise ConnectionError(f"cannot reach NATS at {self.server} (NATS_SERVER): {exc}") from exc

    async def close(self) -> None:
        if self._nc is not None:
            try:
                await asyncio.wait_for(self._nc.drain(), timeout=3)
            except Exception:
                await self._nc.close()
            self._nc = None

    async def publish(self, subject: str, payload: bytes) -> None:
        await self.nc.publish(subject, payload)

    async def subscribe(self, subject: str) -> AsyncIterator[tuple[str, bytes]]:
        queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(SUBSCRIBER_QUEUE)

        async def on_msg(msg: Msg) -> None:
            if queue.full():
                queue.get_nowait()
                log.warning("event subscriber on %s is slow; dropped an event", subject)
            queue.put_nowait((msg.subject, msg.data))

        sub = await self.nc.subscribe(subject, cb=on_msg)
        try:
            while True:
                yield await queue.get()
        finally:
            try:
                await sub.unsubscribe()
            except Exception as exc:
                log.debug("unsubscribe %s: %s", subject, exc)
