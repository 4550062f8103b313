"""Prometheus metrics of routing decisions (journey: **route**), declared once for the frontend and
the standalone router.

Names start with the process's prefix (``dynamo_frontend_router_`` in the frontend,
``dynamo_router_`` in ``python3 -m dynamo.router``): decisions per chosen instance, the chosen
instance's cached overlap, refusals when every worker is busy (``RoutingMetrics``), and the KV
router's own predicted load per worker, read at scrape time (``KvLoadCollector``). The frontend's
request metrics and its model-level ``dynamo_frontend_kv_hit_rate`` are ``dynamo.frontend.metrics``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

from dynamo.router.kv_router import KvRouter
from dynamo.router.worker_key import format_worker_key

_BLOCK_BUCKETS = (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
LABELS = ["model", "instance"]


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


class KvLoadCollector:
    """The KV routers' own load prediction per worker, read at scrape time (nothing to keep in step):
    ``{prefix}active_requests``, ``{prefix}active_blocks``, ``{prefix}prefill_tokens`` by model and
    worker instance. ``routers()`` gives ``(model label, KvRouter)`` pairs."""

    def __init__(self, routers: Callable[[], Iterable[tuple[str, KvRouter]]], prefix: str) -> None:
        self._routers = routers
        self._prefix = prefix

    def collect(self) -> Iterator[GaugeMetricFamily]:
        p = self._prefix
        families = {
            "requests": GaugeMetricFamily(
                p + "active_requests", "KV router: requests it routed that are not finished", labels=LABELS
            ),
            "blocks": GaugeMetricFamily(
                p + "active_blocks", "KV router: KV blocks its active requests occupy", labels=LABELS
            ),
            "prefill": GaugeMetricFamily(
                p + "prefill_tokens", "KV router: routed prompt tokens not yet prefilled", labels=LABELS
            ),
        }
        for model, router in self._routers():
            seqs = router.sequences
            for worker in seqs.workers():
                labels = [model, format_worker_key(worker)]
                families["requests"].add_metric(labels, seqs.active_requests(worker))
                families["blocks"].add_metric(labels, seqs.active_blocks(worker))
                families["prefill"].add_metric(labels, seqs.prefill_tokens(worker))
        yield from families.values()
