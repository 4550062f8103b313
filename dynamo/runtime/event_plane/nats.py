"""Event plane over NATS core subjects (production; ``NATS_SERVER``).

Credentials and TLS come from ``NATS_AUTH_*`` / ``NATS_TLS_*`` (``dynamo.runtime.tls``). At
start-up a server that is down is waited for; one that refuses the credentials or the certificate
fails start-up with ``ConnectionError`` (retrying would not help)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator
from typing import Any

import nats
import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from dynamo.runtime.event_plane.base import EventPlane
from dynamo.runtime.tls import nats_options

log = logging.getLogger(__name__)

SUBSCRIBER_QUEUE = 65536  # events buffered per subscriber before the oldest are dropped


def _refusal(exc: Exception) -> bool:
    """The server refused this client's credentials or certificate (not: it is down)."""
    if isinstance(exc, (nats.errors.AuthorizationError, ssl.SSLError)):
        return True
    text = str(exc).lower()
    return isinstance(exc, nats.errors.Error) and (
        "authorization violation" in text or "authentication" in text
    )


class NatsEventPlane(EventPlane):
    """Events as NATS messages; reconnects forever in the background."""

    def __init__(self, server: str) -> None:
        super().__init__()
        self.server = server
        self._nc: NatsClient | None = None

    @property
    def nc(self) -> NatsClient:
        if self._nc is None:
            raise RuntimeError("NatsEventPlane.start() was not called")
        return self._nc

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        refused: asyncio.Future[Exception] = loop.create_future()  # the first refusal seen

        async def on_error(exc: Exception) -> None:
            # Refused credentials or certificates will not get better by retrying: fail start-up.
            if _refusal(exc) and not refused.done():
                refused.set_result(exc)
            log.warning("NATS: %s", exc or type(exc).__name__)

        async def on_reconnected() -> None:
            log.info("NATS: reconnected to %s", self.server)
            self._reconnected()

        options = nats_options(self.server)
        nc = NatsClient()
        connecting = asyncio.ensure_future(
            nc.connect(
                self.server,
                **options,  # type: ignore[arg-type]  # credentials and TLS, typed per key
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,  # type: ignore[arg-type]  # seconds; a float works
                connect_timeout=5,
                allow_reconnect=True,
                error_cb=on_error,
                reconnected_cb=on_reconnected,
            )
        )
        try:
            first: list[asyncio.Future[Any]] = [connecting, refused]
            await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            connecting.cancel()
            raise
        if not connecting.done():
            connecting.cancel()
            with contextlib.suppress(BaseException):
                await connecting
            with contextlib.suppress(Exception):
                await nc.close()
            raise ConnectionError(
                f"NATS at {self.server} refused this client: {refused.result()} (check NATS_AUTH_* and NATS_TLS_*)"
            )
        refused.cancel()
        try:
            connecting.result()
        except Exception as exc:
            raise ConnectionError(f"cannot reach NATS at {self.server} (NATS_SERVER): {exc}") from exc
        self._nc = nc

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
