"""The frontend's Prometheus metrics (prefix ``dynamo_frontend_``), served on ``/metrics``."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
_TOKEN_BUCKETS = (16, 64, 256, 1024, 4096, 16384, 65536, 262144)


class FrontendMetrics:
    """Request counts, latency and token histograms by model."""

    def __init__(self, registry: CollectorRegistry) -> None:
        p = "dynamo_frontend_"
        self.requests = Counter(
            p + "requests",
            "HTTP requests by model, endpoint, type and status",
            ["model", "endpoint", "request_type", "status"],
            registry=registry,
        )
        self.inflight = Gauge(p + "inflight_requests", "requests being served", ["model"], registry=registry)
        self.queued = Gauge(
            p + "queued_requests", "requests waiting for a first token", ["model"], registry=registry
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
        self.kv_hit_rate = Gauge(
            p + "kv_hit_rate",
            "KV router: overlap blocks / prompt blocks of routed requests",
            ["model"],
            registry=registry,
        )
        self.migrations = Counter(
            p + "model_migration", "streams resumed on another worker", ["model", "reason"], registry=registry
        )
        self.disagg_fallbacks = Counter(
            p + "disagg_fallback",
            "disaggregated requests prefilled locally instead",
            ["model", "reason"],
            registry=registry,
        )
        self.routed = Counter(
            p + "routed_requests",
            "requests sent to a worker instance",
            ["model", "instance"],
            registry=registry,
        )
