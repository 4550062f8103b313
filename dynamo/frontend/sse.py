"""A lean ASGI response for server-sent events that notices client disconnects (journey: stream
stage -> **the wire**).

The events are written as they come; the chunk ending in the last event goes out with the end of
the body. When the client goes away (``DisconnectWatch``: the request's own, or one made here), the
task producing events is cancelled, which closes the engine stream and so cancels the work on the
worker; ``on_done(disconnected)`` runs either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Callable

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from dynamo.frontend.disconnect import DisconnectWatch

log = logging.getLogger(__name__)

_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


class SSEResponse(Response):
    """Streams ``events`` (bytes) to the client; ``on_done(disconnected)`` runs at the end.

    A chunk ending in ``last_event`` (e.g. ``data: [DONE]``) is the last one: it goes out in the
    same write as the end of the body, one system call fewer per response.
    """

    def __init__(
        self,
        events: AsyncGenerator[bytes, None],
        on_done: Callable[[bool], None],
        headers: dict[str, str] | None = None,
        last_event: bytes | None = None,
        watch: DisconnectWatch | None = None,
    ) -> None:
        # Not Response.__init__: there is no body to render; set what Starlette/FastAPI read.
        self.events = events
        self.on_done = on_done
        self.last_event = last_event
        self.watch = watch  # the request's (already watching), else one is made when the response starts
        self.status_code = 200
        self.background = None
        self.raw_headers = list(_HEADERS) + [
            (k.lower().encode(), v.encode()) for k, v in (headers or {}).items()
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        watch = self.watch if self.watch is not None else DisconnectWatch(receive)
        disconnected = False
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            last = self.last_event
            tail = b""
            async for chunk in self.events:
                if last is not None and chunk.endswith(last):
                    tail = chunk
                    break
                if chunk:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": tail, "more_body": False})
        except asyncio.CancelledError:
            if not watch.left():
                raise
            disconnected = True
            log.debug("client disconnected; request cancelled")
        except OSError:
            disconnected = True
        finally:
            watch.stop()
            with contextlib.suppress(BaseException):
                await self.events.aclose()
            self.on_done(disconnected)
