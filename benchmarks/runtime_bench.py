"""Request-plane benchmark: round trips and streamed messages over loopback, beside plain HTTP.

The server runs in a child process (this script with ``--serve``): our ``RequestPlaneServer`` and,
on another port, an aiohttp server with the same two endpoints: ``echo`` answers a small request
with one small message, ``stream`` answers with N small messages (``{"i": k}``; HTTP: one
``data: {"i": k}`` line each, chunked, the way SSE streams tokens). Both sides run on uvloop.
The client (this process) measures, for each transport in turn and in the same run:

- round trip: one request at a time on a warm connection, p50/p99 of request -> last message;
- streaming: one request streaming N messages on one connection, messages/s at the reader
  (``async for`` over the stream; for the request plane also ``drain_ready``, as the frontend reads),
  with the sender producing them back to back (the request plane then packs up to 256 per frame)
  and "paced", one loop turn per message as an engine hands out tokens (about one per frame);
- concurrent streaming: C streams at once on one connection (HTTP: C connections), messages/s.

Run: ``.venv/bin/python benchmarks/runtime_bench.py`` (about 1 minute). Prints numbers and ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

# BENCH_ROOT: measure the dynamo package of another checkout (e.g. a git worktree of an older commit).
sys.path.insert(
    0, os.environ.get("BENCH_ROOT") or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)

import aiohttp
import msgspec
from aiohttp import web

from dynamo.runtime.request_plane import RequestContext, RequestPlaneClient, RequestPlaneServer

_json = msgspec.json.Encoder()


# --- server process --------------------------------------------------------------------------
async def rp_echo(request: Any, _ctx: RequestContext) -> AsyncGenerator[Any, None]:
    yield request


async def rp_stream(request: Any, _ctx: RequestContext) -> AsyncGenerator[Any, None]:
    paced = request.get("paced", False)
    for i in range(int(request["n"])):
        if paced:
            await asyncio.sleep(0)  # as an engine hands out tokens: one loop turn per message
        yield {"i": i}


async def http_echo(request: web.Request) -> web.Response:
    return web.Response(body=await request.read(), content_type="application/json")


async def http_stream(request: web.Request) -> web.StreamResponse:
    n = int(request.query["n"])
    paced = request.query.get("paced") == "1"
    resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await resp.prepare(request)
    for i in range(n):
        if paced:
            await asyncio.sleep(0)
        await resp.write(b"data: " + _json.encode({"i": i}) + b"\n\n")
    await resp.write_eof()
    return resp


async def serve(rp_port: int, http_port: int) -> None:
    server = RequestPlaneServer("127.0.0.1", rp_port)
    server.register("bench.echo", rp_echo)
    server.register("bench.stream", rp_stream)
    await server.start()
    app = web.Application()
    app.router.add_post("/echo", http_echo)
    app.router.add_get("/stream", http_stream)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", http_port).start()
    print(f"READY {server.port}", flush=True)
    await asyncio.Event().wait()


# --- client ----------------------------------------------------------------------------------
class Transport:
    """One way to talk to the server: echo round trip, stream of n messages (returns the count)."""

    name = "?"

    async def echo(self, payload: dict[str, Any]) -> None:
        raise NotImplementedError

    async def stream(self, n: int, paced: bool = False) -> int:
        raise NotImplementedError

    async def close(self) -> None:
        pass


class RequestPlane(Transport):
    name = "request plane"

    def __init__(self, address: str, drain: bool = False) -> None:
        self.client = RequestPlaneClient()
        self.address = address
        self.drain = drain
        if drain:
            self.name = "request plane (drain_ready)"

    async def echo(self, payload: dict[str, Any]) -> None:
        async for _ in await self.client.stream(self.address, "bench.echo", payload):
            pass

    async def stream(self, n: int, paced: bool = False) -> int:
        s = await self.client.stream(self.address, "bench.stream", {"n": n, "paced": paced})
        count = 0
        if not self.drain:
            async for _ in s:
                count += 1
            return count
        while True:
            batch = s.drain_ready()
            if not batch:
                try:
                    await s.__anext__()
                except StopAsyncIteration:
                    return count
                count += 1
            count += len(batch)

    async def close(self) -> None:
        await self.client.close()


class Http(Transport):
    name = "HTTP (aiohttp)"

    def __init__(self, base: str, connections: int = 1) -> None:
        self.base = base
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections))

    async def echo(self, payload: dict[str, Any]) -> None:
        async with self.session.post(f"{self.base}/echo", data=_json.encode(payload)) as resp:
            await resp.read()

    async def stream(self, n: int, paced: bool = False) -> int:
        count = 0
        params = {"n": str(n), "paced": "1" if paced else "0"}
        async with self.session.get(f"{self.base}/stream", params=params) as resp:
            async for line in resp.content:
                if line.startswith(b"data: "):
                    count += 1
        return count

    async def close(self) -> None:
        await self.session.close()


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q / 100 * len(values)) - 1))]


async def round_trips(t: Transport, seconds: float) -> list[float]:
    payload = {"request_id": "r", "token_ids": list(range(16))}
    for _ in range(200):
        await t.echo(payload)
    out = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        await t.echo(payload)
        out.append(time.perf_counter() - t0)
    return out


_TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


async def stream_rate(
    make: Callable[[], Awaitable[int]], expected: int, server_pid: int
) -> tuple[float, float]:
    """Messages/s at the reader, and CPU µs per message of reader and server together (robust
    to other load on the machine, unlike the rate)."""
    c0, s0, t0 = time.process_time(), proc_cpu(server_pid), time.perf_counter()
    got = await make()
    dt = time.perf_counter() - t0
    cpu = time.process_time() - c0 + proc_cpu(server_pid) - s0
    if got != expected:
        raise RuntimeError(f"received {got} of {expected} messages")
    return expected / dt, cpu / expected * 1e6


def record(r: dict[str, list[float]], key: str, result: tuple[float, float]) -> None:
    r.setdefault(key, []).append(result[0])
    r.setdefault(key + "_cpu", []).append(result[1])


async def run_client(rp_port: int, http_port: int, server_pid: int, args: argparse.Namespace) -> list[str]:
    rp = RequestPlane(f"127.0.0.1:{rp_port}")
    rp_drain = RequestPlane(f"127.0.0.1:{rp_port}", drain=True)
    http = Http(f"http://127.0.0.1:{http_port}")
    http_many = Http(f"http://127.0.0.1:{http_port}", connections=args.streams)
    results: dict[str, dict[str, list[float]]] = {}
    try:
        for rep in range(args.repeats):
            order = [rp, http] if rep % 2 == 0 else [http, rp]
            for t in order:
                r = results.setdefault(t.name, {})
                rtt = await round_trips(t, args.rtt_seconds)
                r.setdefault("rtt_p50", []).append(pct(rtt, 50) * 1e6)
                r.setdefault("rtt_p99", []).append(pct(rtt, 99) * 1e6)
                r.setdefault("rtt_per_s", []).append(len(rtt) / args.rtt_seconds)
            for t in [rp, rp_drain, http] if rep % 2 == 0 else [http, rp_drain, rp]:
                r = results.setdefault(t.name, {})
                await t.stream(1000)
                record(r, "stream", await stream_rate(lambda t=t: t.stream(args.n), args.n, server_pid))
                quarter = args.n // 4
                paced = await stream_rate(lambda t=t, q=quarter: t.stream(q, True), quarter, server_pid)
                record(r, "paced", paced)
            for t, name in ((rp, rp.name), (http_many, http.name)):
                per = args.n // args.streams

                async def many(t: Transport = t, per: int = per) -> int:
                    counts = await asyncio.gather(*(t.stream(per) for _ in range(args.streams)))
                    return sum(counts)

                record(
                    results.setdefault(name, {}),
                    "concurrent",
                    await stream_rate(many, per * args.streams, server_pid),
                )
            print(f"  repeat {rep + 1}/{args.repeats} done", file=sys.stderr)
    finally:
        for t in (rp, rp_drain, http, http_many):
            await t.close()
    return report(results, args)


def report(results: dict[str, dict[str, list[float]]], args: argparse.Namespace) -> list[str]:
    def med(name: str, key: str) -> float:
        vals = results.get(name, {}).get(key)
        return statistics.median(vals) if vals else float("nan")

    def fmt(v: float) -> str:
        return f"{v:,.2f}" if v < 100 else f"{v:,.0f}"

    def spread(name: str, key: str) -> str:
        vals = results.get(name, {}).get(key)
        return f"{fmt(min(vals))}-{fmt(max(vals))}" if vals else "-"

    rp, rpd, http = "request plane", "request plane (drain_ready)", "HTTP (aiohttp)"
    rows = [
        ("round trip p50, µs (lower is better)", "rtt_p50", True),
        ("round trip p99, µs (lower is better)", "rtt_p99", True),
        ("round trips/s, one at a time", "rtt_per_s", False),
        (f"one stream of {args.n:,} messages, msgs/s", "stream", False),
        (f"one stream of {args.n // 4:,}, sender yields to its loop per message, msgs/s", "paced", False),
        (f"{args.streams} concurrent streams, msgs/s", "concurrent", False),
        ("one stream, CPU µs/message (reader + server)", "stream_cpu", True),
        ("one stream paced, CPU µs/message (reader + server)", "paced_cpu", True),
        (f"{args.streams} concurrent streams, CPU µs/message", "concurrent_cpu", True),
    ]
    lines = [
        f"| metric (median of {args.repeats}; min-max) | request plane | HTTP (aiohttp) | ratio, better = >1 |",
        "|---|---|---|---|",
    ]
    for label, key, lower_better in rows:
        a, b = med(rp, key), med(http, key)
        ratio = b / a if lower_better else a / b
        lines.append(
            f"| {label} | {fmt(a)} ({spread(rp, key)}) | {fmt(b)} ({spread(http, key)}) | {ratio:.2f} |"
        )
    lines.append(
        f"| one stream, reader using drain_ready (as the frontend), msgs/s | {med(rpd, 'stream'):,.0f} "
        f"({spread(rpd, 'stream')}) | - | {med(rpd, 'stream') / med(http, 'stream'):.2f} |"
    )
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--serve", nargs=2, type=int, metavar=("RP_PORT", "HTTP_PORT"), help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, default=200_000, help="messages in the streaming runs")
    p.add_argument("--streams", type=int, default=64, help="concurrent streams")
    p.add_argument("--rtt-seconds", type=float, default=3.0, help="seconds of round trips per run")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=None, help="also write the table as markdown here")
    args = p.parse_args()
    import uvloop

    if args.serve:
        uvloop.run(serve(*args.serve))
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        http_port = sock.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", "0", str(http_port)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        if not line.startswith("READY"):
            raise RuntimeError(f"server did not start: {line!r}")
        rp_port = int(line.split()[1])
        load = os.getloadavg()
        facts = [
            f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
            f"- machine: {os.cpu_count()} CPUs, Python {platform.python_version()}, uvloop on both sides, "
            f"server and client in separate processes over 127.0.0.1",
            f"- load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
            f"- command: `{' '.join(sys.argv)}`",
        ]
        print("\n".join(facts))
        table = uvloop.run(run_client(rp_port, http_port, server.pid, args))
    finally:
        server.terminate()
        server.wait(timeout=10)
    print()
    print("\n".join(table))
    if args.out:
        with open(args.out, "w") as f:
            f.write("# runtime_bench\n\n" + "\n".join(facts) + "\n\n" + "\n".join(table) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
