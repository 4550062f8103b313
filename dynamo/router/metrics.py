"""Prometheus metrics of routing decisions (journey: **route**), for the frontend and the standalone router.

Names start with the process's prefix (``dynamo_frontend_router_`` in the frontend,
``dynamo_router_`` in ``python3 -m dynamo.router``). The frontend's cache hit rate is
``dynamo_frontend_kv_hit_rate``; these add the per-decision view behind it.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

_BLOCK_BUCKETS = (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


class RoutingMetrics:
    """Decisions per chosen worker, cached overlap of the chosen worker, refusals."""

    def __init__(self, registry: CollectorRegistry, prefix: str) -> None:
        self.decisions = Counter(
            prefix + "decisions",
            "routing decisions by model and chosen worker instance (hex id)",
            ["model", "instance"],
            registry=registry,
        )
        self.overlap_blocks = Histogram(
            prefix + "overlap_blocks",
            "KV router: prompt blocks already cached on the chosen worker",
            ["model"],
            buckets=_BLOCK_BUCKETS,
            registry=registry,
        )
        self.all_busy = Counter(
            prefix + "all_workers_busy",
            "KV router: requests refused because every worker was above a load threshold",
            ["model"],
            registry=registry,
        )
