"""Client load for chaos scenarios: streamed completions counted token by token.

Each request is a streamed ``/v1/completions`` with ``logprobs`` on, so every token the client
receives is counted (one logprob entry per token), whatever the SSE batching; the expected count is
``max_tokens`` (the mocker does not stop early when ``max_tokens`` is set). An ``Outcome`` says
what the client saw; ``Tally.add`` classifies it. The client never uses a proxy and every request
has a total timeout, so a hung stream shows up as a failure, not a hung test.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx

from tests.chaos.hosts import SYSTEM_PORT, Host
from tests.chaos.tally import Outcome, Tally
from tests.support.graph import metric_value

PROMPT = "Write a long story about a lighthouse keeper and the sea."


class SseEvents:
    """The JSON events of a streamed response, in order; ``done`` once ``data: [DONE]`` came."""

    def __init__(self, resp: httpx.Response) -> None:
        self._resp = resp
        self.done = False

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        async for line in self._resp.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                self.done = True
                return
            yield json.loads(data)


def client(timeout: float = 60.0) -> httpx.AsyncClient:
    """An HTTP client for the lab (no proxies from the environment)."""
    return httpx.AsyncClient(timeout=httpx.Timeout(timeout, connect=5.0), trust_env=False)


async def stream_completion(
    http: httpx.AsyncClient,
    base_url: str,
    model: str,
    max_tokens: int,
    *,
    prompt: str = PROMPT,
    timeout: float = 60.0,
    on_token: Callable[[int], None] | None = None,
) -> Outcome:
    """One streamed completion; ``on_token(n)`` is called as tokens arrive (running count)."""
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "stream": True,
        "logprobs": 0,
    }
    start = time.monotonic()
    out = Outcome(status=0, expected_tokens=max_tokens)
    try:
        async with asyncio.timeout(timeout):
            async with http.stream("POST", f"{base_url}/v1/completions", json=body) as resp:
                out.status = resp.status_code
                if resp.status_code != 200:
                    text = (await resp.aread()).decode(errors="replace")
                    out.error = f"HTTP {resp.status_code}: {text[:300]}"
                    return out
                events = SseEvents(resp)
                async for chunk in events:
                    if "error" in chunk:
                        out.error = f"stream error: {json.dumps(chunk['error'])[:300]}"
                        continue
                    for choice in chunk.get("choices", []):
                        lp = choice.get("logprobs") or {}
                        out.tokens += len(lp.get("tokens") or [])
                        out.text += choice.get("text") or ""
                        if choice.get("finish_reason"):
                            out.finish_reason = choice["finish_reason"]
                    if on_token is not None:
                        on_token(out.tokens)
                if not events.done and out.error is None:
                    out.error = "stream ended without [DONE]"
    except TimeoutError:
        out.error = f"no answer within {timeout:.0f}s"
    except httpx.HTTPError as exc:
        out.error = f"{type(exc).__name__}: {exc}"
    finally:
        out.latency_s = time.monotonic() - start
    return out


async def steady_load(
    send: Callable[[], Awaitable[Outcome]],
    tally: Tally,
    stop: asyncio.Event,
    concurrency: int,
    outcomes: list[tuple[float, Outcome]] | None = None,
) -> None:
    """Keep ``concurrency`` requests in flight until ``stop`` is set; every outcome goes to ``tally``
    (and, with its finish time, to ``outcomes``)."""

    async def loop() -> None:
        while not stop.is_set():
            outcome = await send()
            tally.add(outcome)
            if outcomes is not None:
                outcomes.append((time.monotonic(), outcome))

    await asyncio.gather(*(loop() for _ in range(concurrency)))


def scrape(url: str) -> str:
    """GET a metrics page (no proxies)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=5) as resp:
        return resp.read().decode()


def worker_inflight(host: Host) -> float:
    """Requests the worker on ``host`` is serving now, from its status server (``SYSTEM_PORT``)."""
    return metric_value(scrape(f"http://{host.ip}:{SYSTEM_PORT}/metrics"), "dynamo_worker_inflight_requests")


def worker_completed(host: Host) -> float:
    """Requests the worker on ``host`` completed, from its status server (``SYSTEM_PORT``)."""
    text = scrape(f"http://{host.ip}:{SYSTEM_PORT}/metrics")
    return metric_value(text, "dynamo_worker_requests_total", outcome="completed")
