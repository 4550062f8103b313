"""The frontend's Prometheus metrics (prefix ``dynamo_frontend_``), all declared here, on ``/metrics``.

Journey: every stage of a completion request reports here through one ``RequestMetrics`` (admitted
-> first output -> finished with a status); the disaggregation decisions through ``DisaggMetrics``.
Gauges of what is live (in-flight and queued requests, the KV router's hit rate) are read at scrape
time from the served models, so the request path only bumps plain integers for them. The routing
decisions themselves are counted by ``dynamo.router.metrics`` (``dynamo_frontend_router_*``),
shared with the standalone router.

With ``--http-workers N`` each process keeps its own registry and also answers on a private loopback
port; ``/metrics`` on the shared port then serves ``merge_expositions`` of all N (see
``dynamo.frontend.main``), so one scrape of the frontend's URL sees every process.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import cached_property
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

if TYPE_CHECKING:
    from dynamo.frontend.models import ServedModel

PREFIX = "dynamo_frontend_"
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
_TOKEN_BUCKETS = (16, 64, 256, 1024, 4096, 16384, 65536, 262144)
_PREFILL_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_LAG_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


class DisaggMetrics:
    """Where prompts of models with prefill workers were prefilled, and what remote prefills cost."""

    def __init__(self, registry: CollectorRegistry) -> None:
        p = PREFIX + "disagg_"
        self.requests = Counter(
            p + "requests",
            "requests of models with prefill workers, by where the prompt was meant to be prefilled",
            ["model", "prefill"],
            registry=registry,
        )
        self.fallbacks = Counter(
            p + "fallback",
            "disaggregated requests prefilled locally instead, by reason",
            ["model", "reason"],
            registry=registry,
        )
        self.prefill_seconds = Histogram(
            p + "prefill_seconds",
            "remote prefill time seen by the frontend (prefill_first)",
            ["model"],
            buckets=_PREFILL_BUCKETS,
            registry=registry,
        )
        self.prefill_cached_tokens = Counter(
            p + "prefill_cached_tokens",
            "prompt tokens the prefill workers found in their prefix caches (prefill_first)",
            ["model"],
            registry=registry,
        )


class FrontendMetrics:
    """Every ``dynamo_frontend_*`` metric except the routing decisions; ``model(name)`` gives one
    model's children."""

    def __init__(self, registry: CollectorRegistry, served: Callable[[], Iterable[ServedModel]]) -> None:
        """``served``: the models being served now (for the live gauges, read at scrape time)."""
        p = PREFIX
        self.requests = Counter(
            p + "requests",
            "HTTP requests by model, endpoint, type and status",
            ["model", "endpoint", "request_type", "status"],
            registry=registry,
        )
        self.duration = Histogram(
            p + "request_duration_seconds",
            "request duration",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.ttft = Histogram(
            p + "time_to_first_token_seconds",
            "time to first token",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.itl = Histogram(
            p + "inter_token_latency_seconds",
            "time between tokens",
            ["model"],
            buckets=_ITL_BUCKETS,
            registry=registry,
        )
        self.isl = Histogram(
            p + "input_sequence_tokens", "prompt tokens", ["model"], buckets=_TOKEN_BUCKETS, registry=registry
        )
        self.osl = Histogram(
            p + "output_sequence_tokens",
            "generated tokens",
            ["model"],
            buckets=_TOKEN_BUCKETS,
            registry=registry,
        )
        self.cached = Counter(
            p + "cached_tokens",
            "prompt tokens served from the engines' prefix caches",
            ["model"],
            registry=registry,
        )
        self.migrations = Counter(
            p + "model_migration", "streams resumed on another worker", ["model", "reason"], registry=registry
        )
        self.loop_lag = Histogram(
            p + "event_loop_lag_seconds",
            "how late the event loop ran a timer that was due (dynamo.frontend.loop_lag)",
            buckets=_LAG_BUCKETS,
            registry=registry,
        )
        self.disagg = DisaggMetrics(registry)
        self._models: dict[str, ModelMetrics] = {}
        registry.register(_LiveGauges(served, self._models))

    def model(self, name: str) -> ModelMetrics:
        """The metric children of model ``name`` (made once, then reused)."""
        mm = self._models.get(name)
        if mm is None:
            mm = self._models[name] = ModelMetrics(self, name)
        return mm

    def rejected(self, model: str, endpoint: str, status: int) -> None:
        """A request refused before it reached a worker (parse or preprocess failed)."""
        self.requests.labels(model, endpoint, "unary", str(status)).inc()


class ModelMetrics:
    """One model's metric children, each looked up on first use and then kept (``labels()`` on
    every request costs a lock and a dict lookup); ``queued`` counts requests awaiting a first output."""

    def __init__(self, m: FrontendMetrics, name: str) -> None:
        self.name = name
        self.queued = 0
        self._m = m
        self._by_status: dict[tuple[str, str, str], Counter] = {}

    @cached_property
    def isl(self) -> Histogram:
        return self._m.isl.labels(self.name)

    @cached_property
    def osl(self) -> Histogram:
        return self._m.osl.labels(self.name)

    @cached_property
    def ttft(self) -> Histogram:
        return self._m.ttft.labels(self.name)

    @cached_property
    def itl(self) -> Histogram:
        return self._m.itl.labels(self.name)

    @cached_property
    def duration(self) -> Histogram:
        return self._m.duration.labels(self.name)

    @cached_property
    def cached(self) -> Counter:
        return self._m.cached.labels(self.name)

    def migrated(self, reason: str) -> None:
        self._m.migrations.labels(self.name, reason).inc()

    def requests(self, endpoint: str, request_type: str, status: str) -> Counter:
        key = (endpoint, request_type, status)
        child = self._by_status.get(key)
        if child is None:
            child = self._by_status[key] = self._m.requests.labels(self.name, *key)
        return child


class RequestMetrics:
    """One admitted request's accounting: in flight and queued from admission, TTFT at the first
    output, duration, output tokens and status at the end (``finish`` counts only once)."""

    __slots__ = ("endpoint", "finished", "first_at", "mm", "model", "request_type", "started")

    def __init__(
        self,
        mm: ModelMetrics,
        model: ServedModel,
        endpoint: str,
        stream: bool,
        started: float,
        prompt_len: int,
    ) -> None:
        self.mm = mm
        self.model = model
        self.endpoint = endpoint
        self.request_type = "stream" if stream else "unary"
        self.started = started
        self.first_at = 0.0
        self.finished = False
        model.inflight += 1
        mm.queued += 1
        mm.isl.observe(prompt_len)

    def first_output(self) -> None:
        """The first output arrived: time to first token."""
        self.first_at = now = time.monotonic()
        self.mm.queued -= 1
        self.mm.ttft.observe(now - self.started)

    def finish(self, status: str, completion_tokens: int, cached_tokens: int | None) -> None:
        """The request ended with HTTP ``status`` (``499``: the client left)."""
        if self.finished:
            return
        self.finished = True
        mm = self.mm
        self.model.inflight -= 1
        if not self.first_at:
            mm.queued -= 1
        mm.requests(self.endpoint, self.request_type, status).inc()
        mm.duration.observe(time.monotonic() - self.started)
        mm.osl.observe(completion_tokens)
        if cached_tokens:
            mm.cached.inc(cached_tokens)


class _LiveGauges:
    """``inflight_requests``, ``queued_requests`` and ``kv_hit_rate`` per served model, at scrape time."""

    def __init__(
        self, served: Callable[[], Iterable[ServedModel]], per_model: dict[str, ModelMetrics]
    ) -> None:
        self._served = served
        self._per_model = per_model

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        inflight = GaugeMetricFamily(PREFIX + "inflight_requests", "requests being served", labels=["model"])
        queued = GaugeMetricFamily(
            PREFIX + "queued_requests", "requests waiting for a first output", labels=["model"]
        )
        hit_rate = GaugeMetricFamily(
            PREFIX + "kv_hit_rate",
            "KV router: overlap blocks / prompt blocks of routed requests",
            labels=["model"],
        )
        # The tokenization prefix cache, under the reference's names.
        cache_hits = CounterMetricFamily(
            PREFIX + "tokenizer_cache_hits", "prompt pieces found in the tokenization cache", labels=["model"]
        )
        cache_misses = CounterMetricFamily(
            PREFIX + "tokenizer_cache_misses", "long prompt pieces encoded and kept", labels=["model"]
        )
        cached_tokens = CounterMetricFamily(
            PREFIX + "tokenizer_cache_cached_tokens", "prompt tokens taken from the cache", labels=["model"]
        )
        uncached_tokens = CounterMetricFamily(
            PREFIX + "tokenizer_cache_uncached_tokens", "prompt tokens encoded", labels=["model"]
        )
        cache_bytes = GaugeMetricFamily(
            PREFIX + "tokenizer_cache_bytes", "bytes held by the tokenization cache", labels=["model"]
        )
        for model in self._served():
            inflight.add_metric([model.name], model.inflight)
            cache = model.preprocessor.token_cache
            if cache is not None:
                stats = cache.stats
                cache_hits.add_metric([model.name], stats.hits)
                cache_misses.add_metric([model.name], stats.misses)
                cached_tokens.add_metric([model.name], stats.cached_tokens)
                uncached_tokens.add_metric([model.name], stats.uncached_tokens)
                cache_bytes.add_metric([model.name], stats.bytes)
            mm = self._per_model.get(model.name)
            queued.add_metric([model.name], mm.queued if mm is not None else 0)
            kv = model.router.kv
            if kv is not None:
                hit_rate.add_metric([model.name], kv.counters.hit_rate)
        yield from (inflight, queued, hit_rate)
        yield from (cache_hits, cache_misses, cached_tokens, uncached_tokens, cache_bytes)


# --- ``--http-workers N``: one /metrics for all the processes that share the port ----------------

HTTP_WORKER_LABEL = "http_worker"


def merge_expositions(texts: Sequence[str]) -> bytes:
    """One Prometheus text exposition of several processes' ones: each sample keeps its labels and
    gains ``http_worker="<index in texts>"``, so nothing is summed here (a gauge such as a hit rate
    is not additive) and a reader sums what is additive (``sum without (http_worker)``)."""
    families: dict[str, Metric] = {}
    for index, text in enumerate(texts):
        worker = str(index)
        for family in text_string_to_metric_families(text):
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(family.name, family.documentation, family.type)
            merged.samples.extend(
                Sample(s.name, {**s.labels, HTTP_WORKER_LABEL: worker}, s.value, s.timestamp, s.exemplar)
                for s in family.samples
            )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(list(families.values())))
    return generate_latest(registry)


class _Fixed:
    """A collector of already collected families."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        yield from self._families
