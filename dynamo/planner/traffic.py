"""Client traffic per interval, from the frontends' ``dynamo_frontend_*`` metrics: scraped from each
frontend's ``/metrics`` and summed, or queried from a Prometheus server that scrapes them.

Contract: ``sample()`` returns the ``Traffic`` since the previous call (the first call only sets the
baseline and returns None). Scraping keeps the last totals per URL: a counter that went down means
that frontend restarted, and its new totals count whole; a URL that does not answer is left out of
that interval (logged). Every sample of a family is summed, whatever its labels: a frontend with
``--http-workers N`` answers its URL with all N processes' samples, each labelled ``http_worker``, so
one URL per frontend replica counts each request once. TTFT is the frontend's histogram: what clients waited, queueing included.

Journey: frontends (HTTP) -> **here** -> the planner's observe step.
"""

from __future__ import annotations

import abc
import logging
import time
from dataclasses import dataclass, fields
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from dynamo.planner.observation import Traffic

log = logging.getLogger(__name__)

# family (as the parser names it) -> which total its samples feed
_HISTOGRAMS = {
    "dynamo_frontend_input_sequence_tokens": "isl",
    "dynamo_frontend_output_sequence_tokens": "osl",
    "dynamo_frontend_time_to_first_token_seconds": "ttft",
    "dynamo_frontend_inter_token_latency_seconds": "itl",
    "dynamo_frontend_request_duration_seconds": "duration",
}
_REQUESTS = "dynamo_frontend_requests"


@dataclass
class Totals:
    """Cumulative counters of one frontend process (or of all of them)."""

    requests: float = 0.0
    isl_sum: float = 0.0
    isl_count: float = 0.0
    osl_sum: float = 0.0
    osl_count: float = 0.0
    ttft_sum: float = 0.0
    ttft_count: float = 0.0
    itl_sum: float = 0.0
    itl_count: float = 0.0
    duration_sum: float = 0.0
    duration_count: float = 0.0

    def minus(self, earlier: Totals) -> Totals | None:
        """The increase since ``earlier``; None if any counter went down (a restart)."""
        out = Totals()
        for f in fields(self):
            delta = getattr(self, f.name) - getattr(earlier, f.name)
            if delta < 0:
                return None
            setattr(out, f.name, delta)
        return out

    def add(self, other: Totals) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def traffic(self, seconds: float) -> Traffic:
        def mean(name: str) -> float | None:
            count = getattr(self, f"{name}_count")
            return getattr(self, f"{name}_sum") / count if count > 0 else None

        return Traffic(
            seconds=seconds,
            requests=self.requests,
            isl=mean("isl"),
            osl=mean("osl"),
            ttft_s=mean("ttft"),
            itl_s=mean("itl"),
            duration_s=mean("duration"),
        )


def parse_totals(text: str, model: str | None = None) -> Totals:
    """The frontend totals in a Prometheus text exposition (only ``model``'s when given)."""
    totals = Totals()
    for family in text_string_to_metric_families(text):
        kind = _HISTOGRAMS.get(family.name)
        if family.name != _REQUESTS and kind is None:
            continue
        for sample in family.samples:
            if model is not None and sample.labels.get("model") != model:
                continue
            if family.name == _REQUESTS:
                if sample.name.endswith("_total"):
                    totals.requests += sample.value
            elif sample.name.endswith("_sum"):
                setattr(totals, f"{kind}_sum", getattr(totals, f"{kind}_sum") + sample.value)
            elif sample.name.endswith("_count"):
                setattr(totals, f"{kind}_count", getattr(totals, f"{kind}_count") + sample.value)
    return totals


class TrafficSource(abc.ABC):
    """Where the planner reads client traffic from."""

    @abc.abstractmethod
    async def sample(self) -> Traffic | None:
        """Traffic since the previous call (None on the first call or when nothing answered)."""

    async def close(self) -> None:  # noqa: B027 - sources without connections have nothing to close
        """Release connections."""


class ScrapeSource(TrafficSource):
    """Scrapes each frontend process's ``/metrics`` and sums the increases."""

    def __init__(self, urls: list[str], model: str | None = None, timeout: float = 5.0) -> None:
        self.urls = list(urls)
        self.model = model
        self.timeout = timeout
        self._last: dict[str, Totals] = {}
        self._last_at: float | None = None
        self._session: aiohttp.ClientSession | None = None

    async def _scrape(self, url: str) -> Totals | None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        try:
            async with self._session.get(url) as resp:
                resp.raise_for_status()
                return parse_totals(await resp.text(), self.model)
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            log.warning("planner: cannot scrape %s: %s", url, exc)
            return None

    async def sample(self) -> Traffic | None:
        now = time.monotonic()
        increase = Totals()
        answered = 0
        for url in self.urls:
            current = await self._scrape(url)
            if current is None:
                continue
            previous = self._last.get(url)
            self._last[url] = current
            if previous is None:
                continue  # a new target: this scrape is its baseline
            delta = current.minus(previous)
            if delta is None:
                log.warning(
                    "planner: a counter of %s went down: a restart (its totals count whole)",
                    url,
                )
                delta = current
            increase.add(delta)
            answered += 1
        last_at, self._last_at = self._last_at, now
        if last_at is None or answered == 0:
            return None
        return increase.traffic(now - last_at)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class PrometheusSource(TrafficSource):
    """Asks a Prometheus server for the increases over the interval (it sums every frontend
    process it scrapes)."""

    def __init__(
        self,
        url: str,
        model: str | None = None,
        *,
        token: str | None = None,
        verify_ssl: bool = False,
        extra_params: dict[str, str] | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.model = model
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.verify_ssl = verify_ssl
        self.extra_params = dict(extra_params or {})
        self.timeout = timeout
        self._last_at: float | None = None
        self._session: aiohttp.ClientSession | None = None

    def _selector(self) -> str:
        return f'{{model="{self.model}"}}' if self.model else ""

    async def _query(self, promql: str) -> float:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        params = {**self.extra_params, "query": promql}
        async with self._session.get(
            f"{self.url}/api/v1/query", params=params, headers=self.headers, ssl=self.verify_ssl
        ) as resp:
            resp.raise_for_status()
            body: dict[str, Any] = await resp.json()
        if body.get("status") != "success":
            raise ValueError(f"prometheus answered {body.get('status')}: {body.get('error')}")
        result = body.get("data", {}).get("result") or []
        return sum(float(item["value"][1]) for item in result)

    async def sample(self) -> Traffic | None:
        now = time.monotonic()
        last_at, self._last_at = self._last_at, now
        if last_at is None:
            return None
        window = max(1, round(now - last_at))
        sel = self._selector()
        totals = Totals()
        try:
            totals.requests = await self._query(f"sum(increase({_REQUESTS}_total{sel}[{window}s]))")
            for family, kind in _HISTOGRAMS.items():
                for part in ("sum", "count"):
                    value = await self._query(f"sum(increase({family}_{part}{sel}[{window}s]))")
                    setattr(totals, f"{kind}_{part}", value)
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError, KeyError, IndexError) as exc:
            log.warning("planner: prometheus %s did not answer: %s", self.url, exc)
            return None
        return totals.traffic(float(window))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
