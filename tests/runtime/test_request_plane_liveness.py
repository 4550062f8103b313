"""Request-plane connection liveness: a silent peer (stopped, hung, cut off without a FIN) fails its
streams with ``ConnectionDead`` within the bound, is refused until it answers a probe again, and a
slow but live worker (a long prefill) is never mistaken for a dead one; the other way round, a
worker drops a caller that went silent (cancelling its work) but keeps one whose stream is slow."""

from __future__ import annotations

import asyncio
import re
import signal
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from dynamo.runtime.request_plane import (
    ConnectionDead,
    InstanceUnreachable,
    RequestContext,
    RequestPlaneClient,
    RequestPlaneServer,
    StreamBroken,
)
from dynamo.runtime.request_plane.framing import FrameKind, encode_frame
from tests.support.procs import ManagedProcess, wait_until

pytestmark = pytest.mark.timeout(60)
LIVENESS = 0.6


@pytest.fixture
def worker(log_dir: Path) -> Iterator[tuple[ManagedProcess, str]]:
    """A real request-plane server process (so SIGSTOP stops a whole peer, as on a real host)."""
    proc = ManagedProcess.python("plane-server", ["-m", "tests.runtime.plane_server_proc"], log_dir)
    try:
        proc.wait_for_log("PORT ", timeout=30)
        port = re.search(r"PORT (\d+)", proc.log_text())
        assert port is not None
        yield proc, f"127.0.0.1:{port.group(1)}"
    finally:
        proc.signal(signal.SIGCONT)
        proc.stop(grace=5)


@pytest.fixture
async def client() -> AsyncIterator[RequestPlaneClient]:
    c = RequestPlaneClient()
    c.liveness_timeout = LIVENESS
    yield c
    await c.close()


@pytest.fixture
async def silent_server() -> AsyncIterator[tuple[str, list[int]]]:
    """A TCP peer that accepts and reads everything but never answers (the kernel still ACKs)."""
    received: list[int] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            received.append(len(data))
        writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"127.0.0.1:{port}", received
    server.close()


async def test_silent_peer_fails_streams_with_connection_dead_within_the_bound(client, silent_server):
    address, received = silent_server
    streams = [await client.stream(address, "t.w.tick", {"n": 1}) for _ in range(3)]
    start = time.monotonic()
    for stream in streams:
        with pytest.raises(ConnectionDead, match="stopped answering"):
            await asyncio.wait_for(stream.__anext__(), timeout=10 * LIVENESS)
    elapsed = time.monotonic() - start
    assert 0.9 * LIVENESS <= elapsed <= 1.25 * LIVENESS + 1.5, elapsed
    assert sum(received) > 0  # the requests (and PINGs) did reach the peer
    assert issubclass(ConnectionDead, StreamBroken)  # callers migrate as after a kill -9
    # Refused at once afterwards: nothing is sent to a peer that stopped answering.
    assert client.is_dead(address)
    t0 = time.monotonic()
    with pytest.raises(InstanceUnreachable, match="stopped answering"):
        await client.stream(address, "t.w.tick", {"n": 1})
    assert time.monotonic() - t0 < 0.1
    # Forgetting the address (its instance left discovery) lifts the refusal.
    client.forget(address)
    assert not client.is_dead(address)


async def test_liveness_off_never_declares_a_connection_dead(silent_server):
    address, _ = silent_server
    c = RequestPlaneClient()
    c.liveness_timeout = 0
    try:
        stream = await c.stream(address, "t.w.tick", {"n": 1})
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.shield(stream.__anext__()), timeout=3 * LIVENESS)
        assert not c.is_dead(address)
        await stream.aclose()
    finally:
        await c.close()


async def test_slow_but_live_worker_is_not_dead(client, worker):
    """Items 4x the liveness timeout apart (a long prefill): PINGs are answered, nothing fails."""
    _, address = worker
    stream = await client.stream(address, "t.w.tick", {"n": 2, "delay": 4 * LIVENESS})
    items = [item async for item in stream]
    assert items == [0, 1]
    assert not client.is_dead(address)


async def test_stopped_worker_is_detected_refused_then_served_again_after_it_resumes(client, worker):
    proc, address = worker
    stream = await client.stream(address, "t.w.tick", {"n": 100000, "delay": 0.01})
    assert [await stream.__anext__() for _ in range(3)] == [0, 1, 2]
    proc.signal(signal.SIGSTOP)
    start = time.monotonic()
    with pytest.raises(ConnectionDead):
        async for _ in stream:
            pass
    elapsed = time.monotonic() - start
    assert elapsed <= 1.25 * LIVENESS + 1.5, elapsed
    with pytest.raises(InstanceUnreachable):
        await client.stream(address, "t.w.tick", {"n": 1})

    proc.signal(signal.SIGCONT)
    # The aborted connection reaches the worker once it runs: its handler is cancelled (engine
    # work freed), and the client's probe hears a PONG and lifts the refusal.
    await asyncio.to_thread(proc.wait_for_log, "CANCELLED", 10)
    deadline = time.monotonic() + 6 * LIVENESS + 2
    while client.is_dead(address) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert not client.is_dead(address)
    again = await client.stream(address, "t.w.tick", {"n": 3})
    assert [item async for item in again] == [0, 1, 2]


async def test_killed_worker_still_reports_a_broken_stream_at_once(client, worker):
    proc, address = worker
    stream = await client.stream(address, "t.w.tick", {"n": 100000, "delay": 0.01})
    await stream.__anext__()
    start = time.monotonic()
    proc.kill9()
    with pytest.raises(StreamBroken) as info:
        async for _ in stream:
            pass
    assert not isinstance(info.value, ConnectionDead)
    assert time.monotonic() - start < LIVENESS + 1.0  # a FIN, not the liveness check
    wait_until(lambda: not proc.alive(), 5, "the killed worker to exit")


class _Endless:
    def __init__(self) -> None:
        self.cancelled = asyncio.Event()

    async def run(self, request: Any, ctx: RequestContext) -> AsyncGenerator[int, None]:
        try:
            for i in range(int(request.get("n", 10**9))):
                await asyncio.sleep(float(request.get("delay", 0.05)))
                yield i
        except asyncio.CancelledError:
            self.cancelled.set()
            raise


@pytest.fixture
async def local_server() -> AsyncIterator[tuple[RequestPlaneServer, _Endless]]:
    handler = _Endless()
    server = RequestPlaneServer("127.0.0.1", 0)
    server.liveness_timeout = LIVENESS
    server.register("t.w.endless", handler.run)
    await server.start()
    yield server, handler
    await server.stop()


async def test_worker_drops_a_silent_caller_and_cancels_its_work(local_server):
    server, handler = local_server
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    request = msgspec.msgpack.encode(["t.w.endless", {"request_id": "r1"}, {"delay": 0.05}])
    writer.write(encode_frame(FrameKind.REQUEST, 1, request))
    await writer.drain()
    start = time.monotonic()
    # The caller never answers the worker's PINGs (hung, or its link cut): the handler is cancelled.
    await asyncio.wait_for(handler.cancelled.wait(), timeout=10 * LIVENESS)
    assert LIVENESS * 0.9 <= time.monotonic() - start <= 1.25 * LIVENESS + 1.5
    writer.close()


async def test_worker_keeps_a_live_caller_whose_stream_is_slow(local_server):
    server, handler = local_server
    c = RequestPlaneClient()
    c.liveness_timeout = 0  # only the worker's check runs: the client answers its PINGs
    try:
        address = f"127.0.0.1:{server.port}"
        stream = await c.stream(address, "t.w.endless", {"n": 2, "delay": 3 * LIVENESS})
        assert [item async for item in stream] == [0, 1]
        assert not handler.cancelled.is_set()
    finally:
        await c.close()
