"""A lean closed-loop load generator for OpenAI-compatible streaming endpoints.

It shares the machine's cores with what it measures, so it is built to cost little per token:
raw asyncio protocols on uvloop, one keep-alive HTTP/1.1 connection per simulated user, the
C ``httptools`` response parser (it removes the chunked framing), and msgspec decoding of each SSE
event into a struct that names only the fields it needs. No openai client, no aiohttp.

Metrics follow aiperf's definitions: TTFT is the time to the first event carrying content, ITL is
``(time of the last content event - TTFT) / (output tokens - 1)`` per request, output tokens come
from the final ``usage`` event (``stream_options.include_usage``), or from the count of content
events when a server sends no usage.

Used by ``frontend_bench.py`` and ``perf.sh``; ``python benchmarks/loadgen.py --help`` runs it alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httptools
import msgspec


class _Delta(msgspec.Struct):
    content: str | None = None


class _Choice(msgspec.Struct):
    delta: _Delta | None = None
    text: str | None = None


class _Usage(msgspec.Struct):
    completion_tokens: int = 0


class _Event(msgspec.Struct):
    choices: list[_Choice] = []
    usage: _Usage | None = None
    error: Any = None


_decode_event = msgspec.json.Decoder(_Event).decode


@dataclass(slots=True)
class RequestResult:
    """One request's outcome: times are seconds since it was sent."""

    started: float  # perf_counter when sent
    ttft: float = 0.0
    last: float = 0.0  # time of the last content event
    latency: float = 0.0  # time of the end of the response
    tokens: int = 0
    content_events: int = 0
    error: str | None = None

    @property
    def itl(self) -> float | None:
        return (self.last - self.ttft) / (self.tokens - 1) if self.tokens > 1 else None


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 keep-alive connection; one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.done: asyncio.Future[None] | None = None
        self.result: RequestResult | None = None
        self.status = 0
        self.buf = b""
        self.body_parts: list[bytes] = []
        self.lost = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.done is not None and not self.done.done():
            self.done.set_exception(ConnectionError(f"connection lost: {exc}"))

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if self.done is not None and not self.done.done():
                self.done.set_exception(exc)

    # httptools callbacks
    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        if self.status != 200:
            self.body_parts.append(body)
            return
        buf = self.buf + body if self.buf else body
        if b"\n\n" not in buf:
            self.buf = buf
            return
        *events, self.buf = buf.split(b"\n\n")
        now = time.perf_counter()
        res = self.result
        assert res is not None
        for raw in events:
            if not raw.startswith(b"data:"):
                continue
            payload = raw[5:].strip()
            if payload == b"[DONE]":
                continue
            ev = _decode_event(payload)
            if ev.error is not None:
                res.error = str(ev.error)[:200]
                continue
            for ch in ev.choices:
                text = ch.delta.content if ch.delta is not None else ch.text
                if text:
                    if not res.content_events:
                        res.ttft = now - res.started
                    res.content_events += 1
                    res.last = now - res.started
                    break
            if ev.usage is not None:
                res.tokens = ev.usage.completion_tokens

    def on_message_complete(self) -> None:
        res = self.result
        if res is not None:
            res.latency = time.perf_counter() - res.started
            if self.status != 200:
                res.error = f"HTTP {self.status}: {b''.join(self.body_parts)[:200]!r}"
            elif not res.tokens:
                res.tokens = res.content_events
        if self.done is not None and not self.done.done():
            self.done.set_result(None)

    async def request(self, head: bytes, body: bytes) -> RequestResult:
        assert self.transport is not None
        self.result = res = RequestResult(time.perf_counter())
        self.status = 0
        self.buf = b""
        self.body_parts = []
        self.done = asyncio.get_running_loop().create_future()
        self.transport.write(head + body)
        await self.done
        return res


@dataclass
class LoadSpec:
    """What to send: one chat (or completion) request body, repeated."""

    url: str  # http://host:port (no path)
    model: str
    max_tokens: int = 32
    prompt: str = "Tell me a story about a lighthouse keeper and a storm."
    endpoint: str = "chat"  # chat | completions
    extra: dict[str, Any] = field(default_factory=dict)
    # A new JSON body per request (e.g. prompts that must differ): replaces ``prompt`` and ``extra``.
    make_body: Callable[[], bytes] | None = None

    @property
    def path(self) -> str:
        return "/v1/chat/completions" if self.endpoint == "chat" else "/v1/completions"

    def head(self, body_len: int) -> bytes:
        """The request line and headers for a body of ``body_len`` bytes."""
        parts = urlsplit(self.url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        return (
            f"POST {self.path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Accept: text/event-stream\r\nContent-Length: {body_len}\r\n\r\n"
        ).encode()

    def request_bytes(self) -> tuple[str, int, bytes, bytes]:
        parts = urlsplit(self.url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": self.max_tokens,
            "min_tokens": self.max_tokens,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if self.endpoint == "chat":
            body["messages"] = [{"role": "user", "content": self.prompt}]
        else:
            body["prompt"] = self.prompt
        body.update(self.extra)
        data = json.dumps(body).encode()
        return host, port, self.head(len(data)), data


@dataclass
class LoadResult:
    """Results of one load run (the measured window only)."""

    concurrency: int
    window: float
    results: list[RequestResult]
    errors: int
    error_sample: str | None
    loadgen_cpu: float  # seconds of this process's CPU during the window
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> list[RequestResult]:
        return [r for r in self.results if r.error is None]

    @property
    def requests_per_s(self) -> float:
        return len(self.ok) / self.window

    @property
    def tokens_per_s(self) -> float:
        return sum(r.tokens for r in self.ok) / self.window

    def pct(self, name: str, q: float) -> float:
        """Percentile ``q`` (0-100) of ``ttft``, ``itl`` or ``latency``, in seconds."""
        values = sorted(v for r in self.ok if (v := getattr(r, name)) is not None)
        if not values:
            return float("nan")
        return values[min(len(values) - 1, max(0, round(q / 100 * len(values)) - 1))]

    @property
    def mean_tokens(self) -> float:
        ok = self.ok
        return statistics.fmean(r.tokens for r in ok) if ok else 0.0

    @property
    def events_per_request(self) -> float:
        ok = self.ok
        return statistics.fmean(r.content_events for r in ok) if ok else 0.0

    def summary(self) -> dict[str, float]:
        return {
            "concurrency": self.concurrency,
            "requests": len(self.ok),
            "errors": self.errors,
            "req_s": self.requests_per_s,
            "tok_s": self.tokens_per_s,
            "ttft_p50_ms": self.pct("ttft", 50) * 1e3,
            "ttft_p99_ms": self.pct("ttft", 99) * 1e3,
            "itl_p50_ms": self.pct("itl", 50) * 1e3,
            "itl_p99_ms": self.pct("itl", 99) * 1e3,
            "latency_p50_ms": self.pct("latency", 50) * 1e3,
            "tokens_per_request": self.mean_tokens,
            "events_per_request": self.events_per_request,
            "loadgen_cpu_ms_per_req": 1e3 * self.loadgen_cpu / max(1, len(self.ok)),
        }


async def run_load(
    spec: LoadSpec,
    concurrency: int,
    duration: float,
    warmup: float = 2.0,
    on_window: Callable[[str], Awaitable[None] | None] | None = None,
) -> LoadResult:
    """``concurrency`` users send back-to-back requests for ``warmup + duration`` seconds.

    Requests that finish inside the measured window (after the warm-up) are counted;
    ``on_window("start")`` and ``on_window("end")`` run at its edges (e.g. to sample CPU time).
    """
    host, port, head, body = spec.request_bytes()
    loop = asyncio.get_running_loop()
    conns: list[_Connection] = []
    for _ in range(concurrency):
        _, proto = await loop.create_connection(_Connection, host, port)
        conns.append(proto)
    t_start = time.perf_counter() + warmup
    t_end = t_start + duration
    recorded: list[RequestResult] = []
    errors = 0
    error_sample: str | None = None
    stop = False

    async def user(conn: _Connection) -> None:
        nonlocal errors, error_sample
        while not stop:
            if conn.lost:
                _, conn = await loop.create_connection(_Connection, host, port)
            if spec.make_body is not None:
                data = spec.make_body()
                req_head, req_body = spec.head(len(data)), data
            else:
                req_head, req_body = head, body
            try:
                res = await conn.request(req_head, req_body)
            except (ConnectionError, httptools.HttpParserError) as exc:
                res = RequestResult(time.perf_counter(), error=f"{type(exc).__name__}: {exc}")
                conn.lost = True
            now = time.perf_counter()
            if t_start <= now <= t_end:
                if res.error is not None:
                    errors += 1
                    error_sample = error_sample or res.error
                recorded.append(res)

    async def edge(what: str) -> None:
        if on_window is not None:
            r = on_window(what)
            if r is not None:
                await r

    tasks = [asyncio.create_task(user(c)) for c in conns]
    await asyncio.sleep(max(0.0, t_start - time.perf_counter()))
    await edge("start")
    cpu0 = time.process_time()
    await asyncio.sleep(max(0.0, t_end - time.perf_counter()))
    cpu1 = time.process_time()
    await edge("end")
    stop = True
    await asyncio.wait(tasks, timeout=30)
    for t in tasks:
        t.cancel()
    for c in conns:
        if c.transport is not None:
            c.transport.close()
    return LoadResult(concurrency, duration, recorded, errors, error_sample, cpu1 - cpu0)


def format_row(label: str, s: dict[str, float]) -> str:
    return (
        f"{label:<12} {int(s['concurrency']):>5} {s['req_s']:>9.1f} {s['tok_s']:>10.0f} "
        f"{s['ttft_p50_ms']:>8.2f} {s['ttft_p99_ms']:>8.2f} {s['itl_p50_ms']:>7.2f} {s['itl_p99_ms']:>7.2f} "
        f"{s['latency_p50_ms']:>8.1f} {s['tokens_per_request']:>6.1f} {int(s['errors']):>4}"
    )


HEADER = (
    f"{'target':<12} {'conc':>5} {'req/s':>9} {'tok/s':>10} {'ttft50':>8} {'ttft99':>8} "
    f"{'itl50':>7} {'itl99':>7} {'e2e50':>8} {'tok/r':>6} {'err':>4}   (times in ms)"
)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--model", required=True)
    p.add_argument("--concurrency", default="1,8,32,128", help="comma-separated levels")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per level")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each level")
    p.add_argument("--max-tokens", type=int, default=32, help="output tokens per request (ignore_eos)")
    p.add_argument("--isl-words", type=int, default=0, help="prompt of this many words (default: a sentence)")
    p.add_argument("--endpoint", choices=("chat", "completions"), default="chat")
    p.add_argument("--json", default=None, help="also write the summaries as JSON lines to this file")
    args = p.parse_args(argv)
    spec = LoadSpec(args.url.rstrip("/"), args.model, args.max_tokens, endpoint=args.endpoint)
    if args.isl_words:
        spec.prompt = " ".join(["word"] * args.isl_words)

    async def go() -> list[dict[str, float]]:
        print(HEADER)
        out = []
        for c in (int(x) for x in args.concurrency.split(",")):
            res = await run_load(spec, c, args.duration, args.warmup)
            s = res.summary()
            out.append(s)
            print(format_row("target", s), flush=True)
            if res.error_sample:
                print(f"  first error: {res.error_sample}", file=sys.stderr)
        return out

    import uvloop

    summaries = uvloop.run(go())
    if args.json:
        with open(args.json, "a") as f:
            for s in summaries:
                f.write(json.dumps({"url": args.url, "model": args.model, **s}) + "\n")


if __name__ == "__main__":
    main()
