"""Measurements over real HTTP: what one engine behind a frontend does with a prompt alone, and
with many streams at once.

Contract: requests are streamed ``/v1/completions`` with token-id prompts of exactly the asked
length (random ids from a seeded generator, so no two prompts share a cached prefix), ``ignore_eos``
and ``stream_options.include_usage`` (the token count comes from the engine, not from chunks).

- ``lone_ttft``: the time to the first token of one request with nothing else running (the median
  of ``repeats``), by prompt length: the prefill table.
- ``decode_itl``: ``concurrency`` streams started together, each with a prompt of ``context - gen/2``
  tokens and ``gen`` tokens out, so their KV holds ``context`` tokens on average; the ITL is measured
  in the window where every stream is decoding (after the last first token, before the first
  finish), so the streams' own prefills are not counted: the decode table.
- ``replay``: the stated workload itself, open loop: Poisson arrivals at ``rate`` for ``seconds``,
  prompts of ``isl`` tokens, ``osl`` tokens out; each request's TTFT and ITL (first to last token
  over ``tokens - 1``, as the SLA benchmark reads it), or ``None`` for one that failed or did not
  finish within ``deadline`` seconds. This is what the tables miss: prefills arriving into a
  running decode batch, and requests waiting for a free batch slot when arrivals bunch.

A request that fails (outside ``replay``) raises ``MeasureError`` with the server's answer. Journey: profiling only.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
from dataclasses import dataclass, field

import aiohttp


class MeasureError(RuntimeError):
    """A measurement request failed; the message has the server's answer."""


@dataclass
class Stream:
    """One streamed request: when it started, each chunk's arrival, and its token count."""

    start: float
    chunks: list[float] = field(default_factory=list)
    tokens: int = 0


class Client:
    """Streams completions from one frontend."""

    def __init__(self, url: str, model: str, vocab: int = 32000, seed: int = 0) -> None:
        self.url = url.rstrip("/") + "/v1/completions"
        self.model = model
        self.vocab = vocab
        self._random = random.Random(seed)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Client:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600))
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._session is not None:
            await self._session.close()

    def prompt(self, length: int) -> list[int]:
        # Ids from 1000 up: clear of the special tokens at the start of most vocabularies.
        return [self._random.randrange(1000, self.vocab) for _ in range(max(1, length))]

    async def stream(self, prompt_len: int, max_tokens: int) -> Stream:
        assert self._session is not None, "use Client as an async context manager"
        body = {
            "model": self.model,
            "prompt": self.prompt(prompt_len),
            "max_tokens": max_tokens,
            "ignore_eos": True,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        out = Stream(start=time.perf_counter())
        async with self._session.post(self.url, json=body) as resp:
            if resp.status != 200:
                raise MeasureError(f"POST {self.url}: HTTP {resp.status}: {(await resp.text())[:500]}")
            async for raw in resp.content:
                line = raw.decode().strip()
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    raise MeasureError(f"stream error: {chunk['error']}")
                if any(c.get("text") for c in chunk.get("choices") or []):
                    out.chunks.append(time.perf_counter())
                usage = chunk.get("usage")
                if usage:
                    out.tokens = int(usage.get("completion_tokens") or 0)
        if not out.chunks:
            raise MeasureError(f"POST {self.url}: the stream ended without a token")
        out.tokens = out.tokens or len(out.chunks)
        return out

    async def lone_ttft(self, isl: int, repeats: int) -> float:
        """Median TTFT (ms) of a lone ``isl``-token prompt."""
        values = []
        for _ in range(repeats):
            s = await self.stream(isl, 1)
            values.append((s.chunks[0] - s.start) * 1000)
        return statistics.median(values)

    async def decode_itl(self, context: int, concurrency: int, gen: int) -> float:
        """Mean ITL (ms) of ``concurrency`` streams at ``context`` tokens of KV each."""
        prompt = max(1, context - gen // 2)
        streams = await asyncio.gather(*(self.stream(prompt, gen) for _ in range(concurrency)))
        begin = max(s.chunks[0] for s in streams)
        end = min(s.chunks[-1] for s in streams)
        itls = []
        for s in streams:
            per_chunk = s.tokens / len(s.chunks)  # > 1 when the detokenizer merged tokens
            window = [t for t in s.chunks if begin <= t <= end]
            if len(window) < 3:  # too short an overlap: the whole stream
                window = s.chunks
            if len(window) < 2:
                continue
            itls.append((window[-1] - window[0]) * 1000 / ((len(window) - 1) * per_chunk))
        if not itls:
            raise MeasureError(
                f"no stream produced two tokens (context {context}, concurrency {concurrency})"
            )
        return statistics.fmean(itls)

    async def replay(
        self, rate: float, isl: int, osl: int, seconds: float, deadline: float, seed: int = 0
    ) -> list[tuple[float, float] | None]:
        """(TTFT ms, ITL ms) of each request of ``seconds`` of Poisson arrivals at ``rate``."""
        rng = random.Random(seed)
        arrivals: list[float] = []
        t = rng.expovariate(rate)
        while t < seconds:
            arrivals.append(t)
            t += rng.expovariate(rate)
        t0 = time.perf_counter()

        async def one(at: float) -> tuple[float, float] | None:
            await asyncio.sleep(max(0.0, t0 + at - time.perf_counter()))
            try:
                s = await asyncio.wait_for(self.stream(isl, osl), deadline)
            except (MeasureError, aiohttp.ClientError, TimeoutError, ValueError):
                return None
            itl = (s.chunks[-1] - s.chunks[0]) * 1000 / (s.tokens - 1) if s.tokens > 1 else 0.0
            return (s.chunks[0] - s.start) * 1000, itl

        return list(await asyncio.gather(*(one(at) for at in arrivals)))
