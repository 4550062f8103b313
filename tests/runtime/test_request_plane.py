"""The TCP request plane in one process: ordering, cancellation, backpressure, bad peers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import msgspec
import pytest

from dynamo.runtime.request_plane import (
    InstanceUnreachable,
    RemoteError,
    RequestContext,
    RequestPlaneClient,
    RequestPlaneServer,
)
from dynamo.runtime.request_plane.framing import HEADER, HEADER_SIZE, STREAM_WINDOW, FrameKind, encode_frame
from tests.support.procs import free_port

pytestmark = pytest.mark.timeout(60)
msgpack = msgspec.msgpack


class Probe:
    def __init__(self) -> None:
        self.produced = 0
        self.cancelled = asyncio.Event()
        self.started = asyncio.Event()

    async def count(self, request: Any, ctx: RequestContext) -> AsyncGenerator[dict[str, int], None]:
        for i in range(int(request["n"])):
            yield {"i": i}

    async def endless(self, request: Any, ctx: RequestContext) -> AsyncGenerator[int, None]:
        self.started.set()
        try:
            while True:
                self.produced += 1
                yield self.produced
                if request.get("delay"):
                    await asyncio.sleep(request["delay"])
                else:
                    await asyncio.sleep(0)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise

    async def boom(self, request: Any, ctx: RequestContext) -> AsyncGenerator[int, None]:
        yield 1
        raise ValueError("engine exploded")


@pytest.fixture
async def plane() -> AsyncIterator[tuple[RequestPlaneServer, RequestPlaneClient, str, Probe]]:
    probe = Probe()
    server = RequestPlaneServer("127.0.0.1", 0)
    server.register("t.w.count", probe.count)
    server.register("t.w.endless", probe.endless)
    server.register("t.w.boom", probe.boom)
    await server.start()
    client = RequestPlaneClient()
    try:
        yield server, client, f"127.0.0.1:{server.port}", probe
    finally:
        await client.close()
        await server.stop()


async def test_ten_thousand_responses_arrive_complete_and_in_order(plane):
    _, client, addr, _ = plane
    stream = await client.stream(addr, "t.w.count", {"n": 10_000})
    got = [item["i"] async for item in stream]
    assert got == list(range(10_000))


async def test_concurrent_streams_share_one_connection(plane):
    _, client, addr, _ = plane

    async def one(n: int) -> list[int]:
        stream = await client.stream(addr, "t.w.count", {"n": n})
        return [item["i"] async for item in stream]

    results = await asyncio.gather(*(one(50 + k) for k in range(100)))
    assert all(r == list(range(50 + k)) for k, r in enumerate(results))
    assert len(client._conns) == 1


async def test_closing_the_stream_cancels_the_handler(plane):
    server, client, addr, probe = plane
    stream = await client.stream(addr, "t.w.endless", {"delay": 0.01})
    async for item in stream:
        if item >= 3:
            break
    await stream.aclose()
    await asyncio.wait_for(probe.cancelled.wait(), 5)
    await asyncio.sleep(0.05)
    assert server.inflight == 0


async def test_cancelling_the_reading_task_cancels_the_handler(plane):
    _, client, addr, probe = plane
    stream = await client.stream(addr, "t.w.endless", {"delay": 0.05})

    async def read_all() -> None:
        async for _ in stream:
            pass

    reader = asyncio.create_task(read_all())
    await asyncio.wait_for(probe.started.wait(), 5)
    await asyncio.sleep(0.1)
    reader.cancel()
    await asyncio.wait_for(probe.cancelled.wait(), 5)


async def test_slow_reader_holds_the_handler_back(plane):
    _, client, addr, probe = plane
    stream = await client.stream(addr, "t.w.endless", {})
    first = await stream.__anext__()
    assert first == 1
    await asyncio.sleep(0.5)  # the reader stalls; the handler must stop at the credit window
    stalled_at = probe.produced
    assert stalled_at <= STREAM_WINDOW + 1, stalled_at
    await asyncio.sleep(0.2)
    assert probe.produced == stalled_at
    for _ in range(STREAM_WINDOW):  # reading returns credit, so the handler moves on
        await stream.__anext__()
    await asyncio.sleep(0.2)
    assert probe.produced > stalled_at
    await stream.aclose()


async def test_handler_error_reaches_the_caller_after_earlier_items(plane):
    _, client, addr, _ = plane
    stream = await client.stream(addr, "t.w.boom", {})
    items = []
    with pytest.raises(RemoteError, match="engine exploded"):
        async for item in stream:
            items.append(item)
    assert items == [1]


async def test_unknown_endpoint_is_a_retryable_remote_error(plane):
    _, client, addr, _ = plane
    stream = await client.stream(addr, "t.w.nope", {})
    with pytest.raises(RemoteError) as info:
        async for _ in stream:
            pass
    assert info.value.retryable


async def test_unreachable_instance_raises_before_sending():
    client = RequestPlaneClient(connect_timeout=2)
    with pytest.raises(InstanceUnreachable):
        await client.stream(f"127.0.0.1:{free_port()}", "t.w.count", {"n": 1})
    await client.close()


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x00\x00\x00\x05\x63" + b"\x00" * 8 + b"hello",  # unknown frame kind 0x63
        b"\xff\xff\xff\xff" + b"\x01" + b"\x00" * 8,  # declares a 4 GiB payload
        encode_frame(FrameKind.REQUEST, 1, b"\xc1\xc1\xc1"),  # invalid msgpack
        encode_frame(FrameKind.REQUEST, 1, b"\x93\x01\x02"),  # truncated array
    ],
)
async def test_garbage_on_one_connection_leaves_other_streams_alone(plane, garbage):
    server, client, addr, probe = plane
    stream = await client.stream(addr, "t.w.endless", {"delay": 0.01})
    await stream.__anext__()
    host, port = addr.split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(garbage)
    await writer.drain()
    closed = await asyncio.wait_for(reader.read(), 5)  # the server closes the bad connection
    assert closed == b""
    writer.close()
    # The existing stream keeps flowing and new streams work.
    before = probe.produced
    for _ in range(5):
        await stream.__anext__()
    assert probe.produced > before
    fresh = await client.stream(addr, "t.w.count", {"n": 100})
    assert [i["i"] async for i in fresh] == list(range(100))
    await stream.aclose()


async def test_drain_refuses_new_requests_and_waits_for_inflight(plane):
    server, client, addr, _ = plane
    slow = await client.stream(addr, "t.w.endless", {"delay": 0.01})
    await slow.__anext__()
    drain = asyncio.create_task(server.drain(timeout=0.5))
    await asyncio.sleep(0.05)
    # The worker's GOAWAY took the connection out of the pool; the new request's connection gets
    # GOAWAY too (refused before sending) or, if the request left first, a ``draining`` refusal.
    with pytest.raises((InstanceUnreachable, RemoteError)) as info:
        refused = await client.stream(addr, "t.w.count", {"n": 1})
        async for _ in refused:
            pass
    refusal = info.value
    assert isinstance(refusal, InstanceUnreachable) or (
        isinstance(refusal, RemoteError) and refusal.code == "draining"
    )
    assert await drain is False  # the endless stream outlived the timeout
    await slow.aclose()


async def _read_frame(reader: asyncio.StreamReader) -> tuple[int, int, bytes]:
    header = await asyncio.wait_for(reader.readexactly(HEADER_SIZE), 5)
    length, kind, sid = HEADER.unpack(header)
    return kind, sid, await asyncio.wait_for(reader.readexactly(length), 5)


async def test_a_request_sent_before_the_goaway_was_read_is_answered_not_cut_off(plane):
    # The race of a rolling update: the caller sends a request while the worker shuts down. The
    # worker must answer it (a retryable ``draining`` refusal) and close only after the caller.
    server, _, addr, _ = plane
    host, port = addr.split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(encode_frame(FrameKind.REQUEST, 1, msgpack.encode(["t.w.endless", {}, {"delay": 0.01}])))
    await writer.drain()
    kind, sid, _ = await _read_frame(reader)
    assert (kind, sid) == (FrameKind.DATA, 1)
    stopping = asyncio.create_task(server.stop())  # no drain: the in-flight stream is cancelled
    while True:  # the rest of stream 1, then the notice
        kind, sid, _ = await _read_frame(reader)
        if kind == FrameKind.GOAWAY:
            break
        assert (kind, sid) == (FrameKind.DATA, 1)
    # This caller has not "read" the notice yet and sends one more request: it is answered.
    writer.write(encode_frame(FrameKind.REQUEST, 3, msgpack.encode(["t.w.count", {}, {"n": 1}])))
    await writer.drain()
    kind, sid, payload = await _read_frame(reader)
    while kind == FrameKind.DATA and sid == 1:
        kind, sid, payload = await _read_frame(reader)
    assert (kind, sid) == (FrameKind.ERROR, 3)
    assert msgpack.decode(payload)["code"] == "draining"
    assert not stopping.done()  # the worker waits for the caller to close
    writer.close()
    await asyncio.wait_for(stopping, 5)


async def test_client_closes_after_goaway_once_its_streams_end(plane):
    server, client, addr, _ = plane
    stream = await client.stream(addr, "t.w.endless", {"delay": 0.01})
    await stream.__anext__()  # in flight at the worker
    drain = asyncio.create_task(server.drain(timeout=5))
    await asyncio.sleep(0.1)
    (conn,) = server._connections
    assert not conn.lost.done()  # a stream is open: the caller keeps the connection
    await stream.aclose()  # its last stream ends: the caller closes the connection
    await asyncio.wait_for(conn.lost, 2)
    assert await drain is True
    await asyncio.wait_for(server.stop(), 5)


async def test_forgetting_an_address_closes_its_connection_once_its_streams_end(plane):
    server, client, addr, _ = plane
    stream = await client.stream(addr, "t.w.endless", {"delay": 0.01})
    await stream.__anext__()
    (conn,) = server._connections
    client.forget(addr)  # its instance left discovery while a stream still runs on it
    await stream.__anext__()  # the stream is not cut
    assert not conn.lost.done()
    await stream.aclose()
    await asyncio.wait_for(conn.lost, 2)  # then the connection is closed, not left open
