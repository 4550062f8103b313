"""Arrays on the request plane: sent as bytes to a worker that says it reads them (its PONG), as
lists to a worker of an earlier version (an empty PONG; here a hand-written server speaking the
frames as that version did), and before the worker has said anything."""

from __future__ import annotations

import asyncio
from array import array
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import msgspec
import pytest

from dynamo.runtime.request_plane import RequestContext, RequestPlaneClient, RequestPlaneServer
from dynamo.runtime.request_plane.framing import FEATURES, FrameKind, FrameParser, encode_frame

pytestmark = pytest.mark.timeout(60)
IDS = array("I", [0, 1, 65_536, 2**32 - 1])


@pytest.fixture
async def client() -> AsyncIterator[RequestPlaneClient]:
    c = RequestPlaneClient()
    try:
        yield c
    finally:
        await c.close()


async def test_this_version_gets_arrays_as_bytes_once_its_worker_said_so(client: RequestPlaneClient) -> None:
    seen: list[Any] = []

    async def echo(body: Any, ctx: RequestContext) -> AsyncGenerator[int, None]:
        seen.append(body["ids"])
        yield 1

    server = RequestPlaneServer("127.0.0.1", 0)
    server.register("t.w.echo", echo)
    await server.start()
    try:
        address = f"127.0.0.1:{server.port}"
        for _ in range(2):
            assert [x async for x in await client.stream(address, "t.w.echo", {"ids": IDS})] == [1]
            await asyncio.wait_for(client._conns[address].features.wait(), 5)
        assert client._conns[address].arrays_as_bytes
        assert seen[-1] == IDS.tobytes()  # little-endian u32 on every supported host
        assert all(s in (IDS.tolist(), IDS.tobytes()) for s in seen)
    finally:
        await server.stop()


async def test_a_worker_of_an_earlier_version_gets_lists(client: RequestPlaneClient) -> None:
    """The earlier server: answers PING with an empty PONG, decodes a REQUEST, answers END."""
    bodies: list[Any] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        parser = FrameParser()
        while data := await reader.read(65536):
            for kind, sid, payload in parser.feed(data):
                if kind == FrameKind.PING:
                    writer.write(encode_frame(FrameKind.PONG, 0))
                elif kind == FrameKind.REQUEST:
                    bodies.append(msgspec.msgpack.decode(payload)[2])
                    writer.write(encode_frame(FrameKind.END, sid))
        writer.close()

    old = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        address = f"127.0.0.1:{old.sockets[0].getsockname()[1]}"
        for _ in range(2):
            assert [x async for x in await client.stream(address, "t.w.echo", {"ids": IDS})] == []
            await asyncio.wait_for(client._conns[address].features.wait(), 5)
        assert not client._conns[address].arrays_as_bytes
        assert bodies == [{"ids": IDS.tolist()}] * 2
    finally:
        old.close()


async def test_this_worker_tells_any_caller_what_it_reads() -> None:
    server = RequestPlaneServer("127.0.0.1", 0)
    await server.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(encode_frame(FrameKind.PING, 0))  # what every version's caller sends
        frames = FrameParser()
        got: list[tuple[int, int, bytes]] = []
        while not got:
            got = list(frames.feed(await asyncio.wait_for(reader.read(65536), 5)))
        assert got[0][0] == FrameKind.PONG and msgspec.msgpack.decode(got[0][2]) == FEATURES
        writer.close()
    finally:
        await server.stop()
