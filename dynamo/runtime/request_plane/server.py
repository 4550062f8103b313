"""Worker side of the TCP request plane: serve registered endpoint handlers.

Journey: a caller's ``REQUEST`` frame -> the endpoint's handler runs in its own task -> each yielded
item is batched into ``DATA`` frames -> ``END`` (or ``ERROR``). Items wait at most one loop turn:
one callback per connection per turn encodes every stream that produced and writes them all. A
``CANCEL`` frame or a dropped connection cancels the handler's task, so the engine sees
``asyncio.CancelledError`` and aborts. Flow control: a stream may run ``STREAM_WINDOW`` items ahead
of its reader; then the handler waits for ``CREDIT``. A malformed frame closes only that connection.
A ``PING`` is answered with a ``PONG`` at once, from the event loop (the caller's liveness check,
see client.py), carrying this version's ``FEATURES`` (framing.py). The other way round, a connection
with streams in flight that stays silent past ``liveness_timeout`` (``PING`` sent, no frame back:
the caller hung or its link was cut) is aborted, which cancels its handlers, so the engine does not
hold work for a caller that is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from dynamo.runtime.request_plane.framing import (
    FEATURES,
    STREAM_WINDOW,
    FrameKind,
    FrameParser,
    ProtocolError,
    encode_frame,
    encode_hook,
)

log = logging.getLogger(__name__)

_encoder = msgspec.msgpack.Encoder(enc_hook=encode_hook)
_decoder = msgspec.msgpack.Decoder()
_FEATURES = _encoder.encode(FEATURES)

MAX_BATCH_ITEMS = 256  # flush a stream's pending items at this count even without a pause
GOAWAY_GRACE = 1.0  # seconds a stopping worker waits for callers to close after GOAWAY
# Seconds a caller with streams in flight may stay silent before its connection is dropped
# (DYN_REQUEST_PLANE_LIVENESS_TIMEOUT also sets it on a worker; generous: a busy frontend's loop lags).
SERVER_LIVENESS_TIMEOUT = 30.0


def _liveness_from_env() -> float:
    raw = os.environ.get("DYN_REQUEST_PLANE_LIVENESS_TIMEOUT")
    try:
        return float(raw) if raw else SERVER_LIVENESS_TIMEOUT
    except ValueError:
        log.warning("ignoring DYN_REQUEST_PLANE_LIVENESS_TIMEOUT=%r (not a number)", raw)
        return SERVER_LIVENESS_TIMEOUT


@dataclass(slots=True)
class RequestContext:
    """What a handler knows about the request it serves."""

    request_id: str
    endpoint: str
    headers: dict[str, Any] = field(default_factory=dict)


Handler = Callable[[Any, RequestContext], AsyncGenerator[Any, None]]


class DrainingError(Exception):
    """Raised to callers whose request arrived while the worker drains (safe to retry elsewhere)."""


class _Stream:
    __slots__ = ("credit", "credit_event", "pending", "sid", "task")

    def __init__(self, sid: int) -> None:
        self.sid = sid
        self.credit = STREAM_WINDOW
        self.credit_event = asyncio.Event()
        self.pending: list[Any] = []
        self.task: asyncio.Task[None] | None = None


class _ServerConnection(asyncio.Protocol):
    def __init__(self, server: RequestPlaneServer) -> None:
        self.server = server
        self.parser = FrameParser()
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, _Stream] = {}
        self._out: list[bytes] = []
        self._dirty: list[_Stream] = []  # streams with pending items, encoded at the next flush
        self._flush_scheduled = False
        self._can_write = asyncio.Event()
        self._can_write.set()
        self._loop = asyncio.get_running_loop()
        self.peer = "?"
        self._watchdog: asyncio.TimerHandle | None = None
        self._last_rx = 0.0  # loop time of the last bytes received
        self._goaway_sent = False
        self.lost: asyncio.Future[None] = self._loop.create_future()  # done when the connection closes

    # --- asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transport is not a subclass
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        transport.set_write_buffer_limits(high=1 << 20, low=1 << 18)  # type: ignore[attr-defined]
        self.server._connections.add(self)
        if self.server.draining:
            self.goaway()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server._connections.discard(self)
        if not self.lost.done():
            self.lost.set_result(None)
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        for stream in list(self.streams.values()):
            if stream.task is not None:
                stream.task.cancel()
        self._can_write.set()

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    def goaway(self) -> None:
        """Tell the caller this worker is shutting down: no new stream here, close when done."""
        if not self._goaway_sent:
            self._goaway_sent = True
            self._write(encode_frame(FrameKind.GOAWAY, 0))

    # --- liveness of the caller -------------------------------------------------------------
    def _check_caller(self) -> None:
        self._watchdog = None
        timeout = self.server.liveness_timeout
        if not self.streams or self.transport is None or self.transport.is_closing():
            return  # idle: re-armed by the next request
        silent = self._loop.time() - self._last_rx
        if silent >= timeout:
            log.warning(
                "caller %s silent for %.1fs with %d streams in flight; dropping its connection",
                self.peer,
                silent,
                len(self.streams),
            )
            self.transport.abort()  # connection_lost cancels the handlers
            return
        if silent >= timeout / 4:
            self._write(encode_frame(FrameKind.PING, 0))
        self._watchdog = self._loop.call_later(timeout / 4, self._check_caller)

    def data_received(self, data: bytes) -> None:
        self._last_rx = self._loop.time()
        try:
            for kind, sid, payload in self.parser.feed(data):
                if kind == FrameKind.REQUEST:
                    self._on_request(sid, payload)
                elif kind == FrameKind.CREDIT:
                    stream = self.streams.get(sid)
                    if stream is not None:
                        stream.credit += int(_decoder.decode(payload))
                        stream.credit_event.set()
                elif kind == FrameKind.CANCEL:
                    stream = self.streams.get(sid)
                    if stream is not None and stream.task is not None:
                        stream.task.cancel()
                elif kind == FrameKind.PING:  # liveness (answered by this loop), and what we read
                    self._write(encode_frame(FrameKind.PONG, 0, _FEATURES))
                elif kind == FrameKind.PONG:
                    pass
                else:
                    raise ProtocolError(f"unexpected frame kind {kind} from a caller")
        except (ProtocolError, msgspec.DecodeError, ValueError, TypeError) as exc:
            log.error("closing request-plane connection from %s: %s", self.peer, exc)
            if self.transport is not None:
                self.transport.abort()

    # --- streams ----------------------------------------------------------------------------
    def _on_request(self, sid: int, payload: bytes) -> None:
        message = _decoder.decode(payload)
        if not isinstance(message, list) or len(message) != 3:
            raise ProtocolError("malformed REQUEST frame")
        endpoint, headers, body = message
        if sid in self.streams:
            raise ProtocolError(f"stream id {sid} reused while open")
        handler = self.server.handlers.get(endpoint)
        if handler is None:
            self._send_error(sid, f"no endpoint {endpoint!r} on this instance", "not_found")
            return
        if self.server.draining:
            self._send_error(sid, "instance is draining", "draining")
            return
        stream = _Stream(sid)
        self.streams[sid] = stream
        ctx = RequestContext(
            request_id=str(headers.get("request_id", sid)) if isinstance(headers, dict) else str(sid),
            endpoint=endpoint,
            headers=headers if isinstance(headers, dict) else {},
        )
        if self._watchdog is None and self.server.liveness_timeout > 0:
            self._watchdog = self._loop.call_later(self.server.liveness_timeout / 4, self._check_caller)
        stream.task = self._loop.create_task(self._run(stream, handler, body, ctx))
        self.server._inflight.add(stream.task)
        stream.task.add_done_callback(self.server._inflight.discard)

    async def _run(self, stream: _Stream, handler: Handler, body: Any, ctx: RequestContext) -> None:
        gen = handler(body, ctx)
        try:
            async for item in gen:
                stream.pending.append(item)
                stream.credit -= 1
                if len(stream.pending) == 1:
                    # One flush per loop turn for the whole connection: every stream that produced
                    # meanwhile goes out in that turn's single write.
                    self._dirty.append(stream)
                    if not self._flush_scheduled:
                        self._flush_scheduled = True
                        self._loop.call_soon(self._flush_out)
                elif len(stream.pending) >= MAX_BATCH_ITEMS:
                    self._flush_stream(stream)
                if stream.credit <= 0:
                    self._flush_stream(stream)
                    while stream.credit <= 0:
                        stream.credit_event.clear()
                        await stream.credit_event.wait()
                if not self._can_write.is_set():
                    await self._can_write.wait()
            self._flush_stream(stream)
            self._write(encode_frame(FrameKind.END, stream.sid))
        except asyncio.CancelledError:
            log.debug("request %s cancelled by the caller", ctx.request_id)
        except Exception as exc:
            log.exception("handler for %s failed (request %s)", ctx.endpoint, ctx.request_id)
            self._flush_stream(stream)
            self._send_error(stream.sid, f"{type(exc).__name__}: {exc}", "handler_error")
        finally:
            with contextlib.suppress(BaseException):
                await gen.aclose()
            self.streams.pop(stream.sid, None)

    def _flush_stream(self, stream: _Stream) -> None:
        if stream.pending:
            items, stream.pending = stream.pending, []
            self._write(encode_frame(FrameKind.DATA, stream.sid, _encoder.encode(items)))

    def _send_error(self, sid: int, message: str, code: str) -> None:
        self._write(encode_frame(FrameKind.ERROR, sid, _encoder.encode({"message": message, "code": code})))

    def _write(self, frame: bytes) -> None:
        self._out.append(frame)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush_out)

    def _flush_out(self) -> None:
        if self._dirty:
            dirty, self._dirty = self._dirty, []
            out = self._out
            for stream in dirty:
                if stream.pending:
                    items, stream.pending = stream.pending, []
                    out.append(encode_frame(FrameKind.DATA, stream.sid, _encoder.encode(items)))
        self._flush_scheduled = False
        out = self._out
        if out and self.transport is not None and not self.transport.is_closing():
            if len(out) == 1:
                self.transport.write(out[0])
            else:
                self.transport.writelines(out)
        out.clear()


class RequestPlaneServer:
    """Listens on TCP and dispatches requests to endpoint handlers by name."""

    def __init__(
        self,
        host: str = "0.0.0.0",
        port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
        handshake_timeout: float | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.ssl_context = ssl_context  # TLS (dynamo.runtime.tls); None: plaintext
        self.handshake_timeout = handshake_timeout
        self.handlers: dict[str, Handler] = {}
        self.liveness_timeout = _liveness_from_env()  # seconds; 0: never drop a silent caller
        self.draining = False
        self._server: asyncio.Server | None = None
        self._connections: set[_ServerConnection] = set()
        self._inflight: set[asyncio.Task[None]] = set()

    def register(self, endpoint: str, handler: Handler) -> None:
        """Serve ``handler`` for requests addressed to ``endpoint`` (e.g. ``ns.component.name``)."""
        self.handlers[endpoint] = handler

    def unregister(self, endpoint: str) -> None:
        self.handlers.pop(endpoint, None)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _ServerConnection(self),
            self.host,
            self.port,
            reuse_address=True,
            ssl=self.ssl_context,
            ssl_handshake_timeout=self.handshake_timeout if self.ssl_context else None,
        )
        sock = self._server.sockets[0]
        self.port = sock.getsockname()[1]
        log.debug(
            "request plane listening on %s:%d (%s)",
            self.host,
            self.port,
            "TLS" if self.ssl_context else "plaintext",
        )

    @property
    def inflight(self) -> int:
        """Requests being served now."""
        return len(self._inflight)

    async def drain(self, timeout: float) -> bool:
        """Refuse new requests and wait up to ``timeout`` s for in-flight ones; True if all finished.

        Every caller is sent ``GOAWAY`` first, so it opens no new stream here; a request already on
        the wire is still read and refused as ``draining`` (retried elsewhere by the caller).
        """
        self.draining = True
        for conn in list(self._connections):
            conn.goaway()
        if self._inflight:
            log.info("draining %d in-flight requests (up to %.0fs)", len(self._inflight), timeout)
            _, pending = await asyncio.wait(set(self._inflight), timeout=timeout)
            return not pending
        return True

    async def stop(self) -> None:
        """Cancel whatever still runs and close every connection.

        Callers that got ``GOAWAY`` close their connections once their streams have ended; the
        worker waits up to ``GOAWAY_GRACE`` seconds for that before closing them itself, so a
        request a caller sent just before it read the ``GOAWAY`` is answered, not cut off.
        """
        self.draining = True
        for conn in list(self._connections):
            conn.goaway()
        if self._server is not None:
            self._server.close()
        for task in list(self._inflight):
            task.cancel()
        if self._inflight:
            await asyncio.wait(set(self._inflight), timeout=5)
        for conn in list(self._connections):
            conn._flush_out()
        if self._connections:
            await asyncio.wait([c.lost for c in self._connections], timeout=GOAWAY_GRACE)
        for conn in list(self._connections):
            if conn.transport is not None:
                conn.transport.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), timeout=2)
            self._server = None
