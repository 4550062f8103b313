"""Caller side of the TCP request plane: open response streams to worker instances.

One connection per worker address, shared by every concurrent stream and reused across
requests. A ``ResponseStream`` is an async iterator of response items; closing it early (or the
task reading it being cancelled) sends ``CANCEL`` so the worker stops generating. The reader
returns flow-control credit as it consumes, so a slow reader holds the worker back instead of
growing memory.

Liveness: while a connection has streams in flight and nothing arrived for a quarter of
``liveness_timeout``, the client sends ``PING``; the worker answers ``PONG`` from its event loop.
No frame at all for ``liveness_timeout`` (a stopped process, a cut link: no FIN ever comes) and
the connection is declared dead: every stream on it fails with ``ConnectionDead`` (a
``StreamBroken``, as when the worker is killed, so callers migrate or report it), the connection is
aborted, and the address is refused (``InstanceUnreachable``, nothing sent) until a probe on a new
connection gets a ``PONG`` or the address is forgotten (its instance left discovery). A long
prefill is not silence: the worker's event loop answers ``PING`` meanwhile.

Shutdown: a worker's ``GOAWAY`` takes its connection out of the pool (a later request to the
address opens a new one, which the draining worker refuses as retryable) and the connection is
closed by this side once its last stream has ended, so the worker never closes under a request.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from dynamo.runtime.request_plane.framing import (
    STREAM_WINDOW,
    FrameKind,
    FrameParser,
    ProtocolError,
    encode_frame,
    encode_hook,
    legacy_encode_hook,
)

if TYPE_CHECKING:
    from dynamo.runtime.tls import ClientTLS

log = logging.getLogger(__name__)

_encoder = msgspec.msgpack.Encoder(enc_hook=encode_hook)
_legacy_encoder = msgspec.msgpack.Encoder(enc_hook=legacy_encode_hook)  # a worker of an earlier version
_decoder = msgspec.msgpack.Decoder()

CONNECT_TIMEOUT = 10.0
LIVENESS_TIMEOUT = 5.0  # default seconds of silence (PING unanswered) before a connection is dead
_DATA = int(FrameKind.DATA)
_CREDIT_BATCH = STREAM_WINDOW // 2


class RequestPlaneError(Exception):
    """Base of request-plane failures seen by a caller."""


class InstanceUnreachable(RequestPlaneError):
    """No connection could be made to the instance: nothing was sent, retrying elsewhere is safe."""


class StreamBroken(RequestPlaneError):
    """The connection dropped while the stream was open (the worker may have died)."""


class ConnectionDead(StreamBroken):
    """Nothing, not even a ``PONG``, came from the worker within the liveness timeout."""


class RemoteError(RequestPlaneError):
    """The worker answered with an error frame."""

    def __init__(self, message: str, code: str = "error") -> None:
        super().__init__(message)
        self.code = code

    @property
    def retryable(self) -> bool:
        """True when the worker refused before doing any work (draining, unknown endpoint)."""
        return self.code in ("draining", "not_found")


class ResponseStream:
    """The responses of one request, in order. Iterate with ``async for``; ``aclose`` cancels."""

    __slots__ = ("_conn", "_consumed", "_done", "_error", "_items", "_waiter", "received_any", "sid")

    def __init__(self, conn: _ClientConnection, sid: int) -> None:
        self._conn = conn
        self.sid = sid
        self._items: collections.deque[Any] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._done = False
        self._error: BaseException | None = None
        self._consumed = 0
        self.received_any = False

    # --- fed by the connection --------------------------------------------------------------
    def _push(self, items: list[Any]) -> None:
        self._items.extend(items)
        self.received_any = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _finish(self, error: BaseException | None = None) -> None:
        if not self._done:
            self._done = True
            self._error = error
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- consumer side ----------------------------------------------------------------------
    def __aiter__(self) -> ResponseStream:
        return self

    async def __anext__(self) -> Any:
        while True:
            if self._items:
                self._consumed += 1
                if self._consumed >= _CREDIT_BATCH:
                    self._conn._send(FrameKind.CREDIT, self.sid, _encoder.encode(self._consumed))
                    self._consumed = 0
                return self._items.popleft()
            if self._done:
                if self._error is not None:
                    raise self._error
                raise StopAsyncIteration
            self._waiter = self._conn._loop.create_future()
            try:
                await self._waiter
            except asyncio.CancelledError:
                await self.aclose()
                raise
            finally:
                self._waiter = None

    def drain_ready(self) -> list[Any]:
        """Take every item already received without waiting (for batching SSE writes)."""
        if not self._items:
            return []
        items = list(self._items)
        self._items.clear()
        self._consumed += len(items)
        if self._consumed >= _CREDIT_BATCH:
            self._conn._send(FrameKind.CREDIT, self.sid, _encoder.encode(self._consumed))
            self._consumed = 0
        return items

    @property
    def finished(self) -> bool:
        return self._done and not self._items

    async def aclose(self) -> None:
        """Stop the stream; the worker's handler is cancelled if it is still running."""
        if not self._done:
            self._done = True
            self._conn._send(FrameKind.CANCEL, self.sid)
        self._conn.streams.pop(self.sid, None)
        self._conn._close_if_done()


class _ClientConnection(asyncio.Protocol):
    def __init__(
        self, address: str, liveness_timeout: float = 0.0, on_dead: Callable[[str], None] | None = None
    ) -> None:
        self.address = address
        self.liveness_timeout = liveness_timeout  # 0: no liveness checks
        self._on_dead = on_dead
        self._on_goaway: Callable[[_ClientConnection], None] | None = None
        self.goaway = False  # the worker is shutting down: no new stream here
        self._watchdog: asyncio.TimerHandle | None = None
        self.last_rx = 0.0  # loop time of the last bytes received
        self.pong = asyncio.Event()  # set by each PONG (a probe waits on it)
        # The worker's first PONG says what it reads (framing.FEATURES; empty from an earlier
        # version): until then, and for such a worker, arrays go out as lists.
        self.features = asyncio.Event()
        self.arrays_as_bytes = False
        self.parser = FrameParser()
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, ResponseStream] = {}
        self._ids = itertools.count(1)
        self._loop = asyncio.get_running_loop()
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transport is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(StreamBroken(f"connection to {self.address} lost" + (f": {exc}" if exc else "")))

    def _fail(self, reason: StreamBroken) -> None:
        self.closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        for stream in list(self.streams.values()):
            stream._finish(reason)
        self.streams.clear()

    # --- liveness -----------------------------------------------------------------------------
    def _arm(self) -> None:
        """Start watching the connection's silence (its first stream in flight)."""
        if self._watchdog is None and self.liveness_timeout > 0 and not self.closed:
            self.last_rx = self._loop.time()
            self._watchdog = self._loop.call_later(self.liveness_timeout / 4, self._check)

    def _check(self) -> None:
        self._watchdog = None
        if self.closed or not self.streams:
            return  # idle: re-armed by the next stream
        silent = self._loop.time() - self.last_rx
        if silent >= self.liveness_timeout:
            log.warning(
                "request-plane connection to %s is dead: nothing received for %.1fs (PING unanswered); "
                "failing its %d streams",
                self.address,
                silent,
                len(self.streams),
            )
            self._fail(
                ConnectionDead(
                    f"worker at {self.address} stopped answering: nothing received for {silent:.1f}s "
                    f"(liveness timeout {self.liveness_timeout:g}s)"
                )
            )
            if self.transport is not None:
                self.transport.abort()
            if self._on_dead is not None:
                self._on_dead(self.address)
            return
        if silent >= self.liveness_timeout / 4:
            self._send(FrameKind.PING, 0)
        self._watchdog = self._loop.call_later(self.liveness_timeout / 4, self._check)

    def data_received(self, data: bytes) -> None:
        self.last_rx = self._loop.time()
        streams = self.streams
        decode = _decoder.decode
        try:
            for kind, sid, payload in self.parser.feed(data):
                stream = streams.get(sid)
                if kind == _DATA:
                    if stream is not None:
                        items = decode(payload)
                        if type(items) is not list:
                            raise ProtocolError("DATA frame payload is not an array")
                        stream._push(items)
                elif kind == FrameKind.END:
                    if stream is not None:
                        stream._finish()
                        del self.streams[sid]
                        self._close_if_done()
                elif kind == FrameKind.ERROR:
                    if stream is not None:
                        info = _decoder.decode(payload)
                        if not isinstance(info, dict):
                            info = {"message": str(info)}
                        stream._finish(RemoteError(str(info.get("message")), str(info.get("code", "error"))))
                        del self.streams[sid]
                        self._close_if_done()
                elif kind == FrameKind.PONG:
                    self.pong.set()
                    if not self.features.is_set():
                        self._learn_features(payload)
                elif kind == FrameKind.PING:
                    self._send(FrameKind.PONG, 0)
                elif kind == FrameKind.GOAWAY:
                    self.goaway = True
                    if self._on_goaway is not None:
                        self._on_goaway(self)
                    self._close_if_done()
                else:
                    raise ProtocolError(f"unexpected frame kind {kind} from a worker")
        except (ProtocolError, msgspec.DecodeError) as exc:
            log.error("closing request-plane connection to %s: %s", self.address, exc)
            if self.transport is not None:
                self.transport.abort()

    def _learn_features(self, payload: bytes) -> None:
        features = _decoder.decode(payload) if payload else {}
        self.arrays_as_bytes = isinstance(features, dict) and features.get("arrays") == "bin"
        self.features.set()

    def _close_if_done(self) -> None:
        """After ``GOAWAY``: close once no stream is open (what was written is flushed first)."""
        if self.goaway and not self.streams and self.transport is not None:
            self._flush()
            self.transport.close()

    def _send(self, kind: FrameKind, sid: int, payload: bytes = b"") -> None:
        if self.closed:
            return
        self._out.append(encode_frame(kind, sid, payload))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._out and self.transport is not None and not self.transport.is_closing():
            self.transport.writelines(self._out)
        self._out = []

    def open_stream(self, endpoint: str, body: Any, headers: dict[str, Any]) -> ResponseStream:
        if self.closed or self.goaway:
            raise InstanceUnreachable(f"connection to {self.address} is closing; nothing sent")
        sid = next(self._ids)
        stream = ResponseStream(self, sid)
        self.streams[sid] = stream
        if self._watchdog is None:
            self._arm()
        encoder = _encoder if self.arrays_as_bytes else _legacy_encoder
        self._send(FrameKind.REQUEST, sid, encoder.encode([endpoint, headers, body]))
        # Written now, not at the end of this loop turn with the other frames: the worker starts on
        # it while this process prepares the burst's next requests (large frames gain nothing from
        # sharing a write).
        self._flush()
        return stream


class RequestPlaneClient:
    """Pool of request-plane connections, one per worker address."""

    def __init__(self, connect_timeout: float = CONNECT_TIMEOUT, tls: ClientTLS | None = None) -> None:
        self.connect_timeout = connect_timeout
        self.tls = tls  # TLS to every worker (dynamo.runtime.tls); None: plaintext
        self._conns: dict[str, _ClientConnection] = {}
        self._connecting: dict[str, asyncio.Future[_ClientConnection]] = {}
        self.liveness_timeout = LIVENESS_TIMEOUT  # seconds; 0 turns liveness checks off
        self._dead: set[str] = set()  # addresses whose connection went silent, until a probe answers
        self._probes: dict[str, asyncio.Task[None]] = {}

    async def _connection(self, address: str) -> _ClientConnection:
        conn = self._conns.get(address)
        if conn is not None and not conn.closed:
            return conn
        pending = self._connecting.get(address)
        if pending is not None:
            return await asyncio.shield(pending)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[_ClientConnection] = loop.create_future()
        self._connecting[address] = fut
        try:
            host, _, port = address.rpartition(":")
            host = host.strip("[]")
            tls: dict[str, Any] = {}
            if self.tls is not None:
                tls = {
                    "ssl": self.tls.context,
                    "server_hostname": self.tls.server_name or host,
                    "ssl_handshake_timeout": self.tls.handshake_timeout,
                }
            try:
                _, proto = await asyncio.wait_for(
                    loop.create_connection(lambda: _ClientConnection(address), host, int(port), **tls),
                    timeout=self.connect_timeout,
                )
            except (TimeoutError, OSError, ValueError) as exc:
                err = InstanceUnreachable(f"cannot connect to {address}: {exc or type(exc).__name__}")
                fut.set_exception(err)
                fut.exception()  # mark retrieved
                raise err from exc
            proto.liveness_timeout = self.liveness_timeout
            proto._on_dead = self._declare_dead
            proto._on_goaway = self._retire
            # Ask what the worker reads (its PONG, one round trip): requests sent before the answer,
            # and every request to a worker of an earlier version, carry arrays as lists.
            proto._send(FrameKind.PING, 0)
            if proto.goaway or proto.closed:  # the worker said GOAWAY on connect: it is shutting down
                err = InstanceUnreachable(f"worker at {address} is shutting down")
                fut.set_exception(err)
                fut.exception()
                raise err
            self._conns[address] = proto
            fut.set_result(proto)
            return proto
        finally:
            self._connecting.pop(address, None)

    async def stream(
        self, address: str, endpoint: str, body: Any, headers: dict[str, Any] | None = None
    ) -> ResponseStream:
        """Send one request to ``endpoint`` at ``address`` and return its response stream.

        Raises ``InstanceUnreachable`` when no connection can be made, or when the address's last
        connection went silent and no probe has heard from it since (nothing is sent then).
        """
        if address in self._dead:
            raise InstanceUnreachable(
                f"worker at {address} stopped answering (liveness); not yet seen alive again"
            )
        conn = await self._connection(address)
        return conn.open_stream(endpoint, body, headers or {})

    def _retire(self, conn: _ClientConnection) -> None:
        """A worker sent ``GOAWAY``: its connection takes no new stream (a new request reconnects)."""
        if self._conns.get(conn.address) is conn:
            del self._conns[conn.address]

    def is_dead(self, address: str) -> bool:
        """True while ``address`` is refused after a liveness failure."""
        return address in self._dead

    def _declare_dead(self, address: str) -> None:
        if self._conns.get(address) is not None and self._conns[address].closed:
            del self._conns[address]
        self._dead.add(address)
        if address not in self._probes and self.liveness_timeout > 0:
            task = asyncio.get_running_loop().create_task(self._probe_until_alive(address))
            self._probes[address] = task
            task.add_done_callback(self._probe_done)

    def _probe_done(self, task: asyncio.Task[None]) -> None:
        for address, probe in list(self._probes.items()):
            if probe is task:
                del self._probes[address]

    async def _probe_until_alive(self, address: str) -> None:
        """Every ``liveness_timeout``: a new connection and a ``PING``; a ``PONG`` lifts the refusal."""
        while address in self._dead:
            await asyncio.sleep(self.liveness_timeout)
            try:
                conn = await self._connection(address)
            except InstanceUnreachable:
                continue
            conn.pong.clear()
            conn._send(FrameKind.PING, 0)
            try:
                await asyncio.wait_for(conn.pong.wait(), self.liveness_timeout)
            except TimeoutError:
                conn.closed = True
                if conn.transport is not None:
                    conn.transport.abort()
                self._conns.pop(address, None)
                continue
            self._dead.discard(address)
            log.info("worker at %s answers again; routing to it resumes", address)

    def forget(self, address: str) -> None:
        """Close the pooled connection to an address (its instance went away)."""
        self._dead.discard(address)
        probe = self._probes.pop(address, None)
        if probe is not None:
            probe.cancel()
        conn = self._conns.pop(address, None)
        if conn is not None:
            conn.goaway = True  # no new stream; closed once the streams still on it have ended
            conn._close_if_done()

    async def close(self) -> None:
        for probe in list(self._probes.values()):
            probe.cancel()
        self._probes.clear()
        self._dead.clear()
        for conn in list(self._conns.values()):
            if conn.transport is not None:
                conn.transport.close()
        self._conns.clear()
        await asyncio.sleep(0)
