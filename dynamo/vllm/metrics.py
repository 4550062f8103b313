"""Engine metrics of the vLLM worker: load for the router, vLLM's own Prometheus metrics for /metrics.

Journey: after every **engine** step vLLM hands ``SchedulerStats`` to its stat loggers (on the
worker's event loop). ``LoadStatLogger`` keeps the latest numbers in a ``LoadState`` that
``VllmEngine.load_metrics()`` turns into a ``LoadMetrics`` report for the KV router.

vLLM's ``PrometheusStatLogger`` registers its ``vllm:*`` metrics (queue lengths, KV cache usage,
prefix cache queries/hits, prompt tokens by source, latencies) on ``prometheus_client``'s default
``REGISTRY`` of this process (the engine core process sends its stats here). ``register_vllm_metrics``
exposes them on another registry too, for a worker that serves its own registry on ``/metrics``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from vllm.config import VllmConfig
from vllm.v1.metrics.loggers import StatLoggerBase
from vllm.v1.metrics.stats import CachingMetrics, IterationStats, SchedulerStats

logger = logging.getLogger(__name__)

VLLM_METRIC_PREFIX = "vllm:"


@dataclass
class LoadState:
    """Latest scheduler numbers of one engine, updated by ``LoadStatLogger``."""

    running: int = 0
    waiting: int = 0
    kv_usage: float = 0.0  # fraction of KV blocks in use by requests (0..1)
    steps: int = 0  # scheduler stats received so far
    prefix_cache: CachingMetrics = field(default_factory=CachingMetrics)  # hit rate, last 1000 requests


class LoadStatLogger(StatLoggerBase):
    """A vLLM stat logger that records load into a shared ``LoadState`` (no logging, no I/O)."""

    def __init__(
        self, vllm_config: VllmConfig, engine_index: int = 0, state: LoadState | None = None
    ) -> None:
        self.engine_index = engine_index
        self.state = state if state is not None else LoadState()

    def record(
        self,
        scheduler_stats: SchedulerStats | None,
        iteration_stats: IterationStats | None,
        mm_cache_stats: Any = None,
        engine_idx: int = 0,
    ) -> None:
        if scheduler_stats is None:
            return
        state = self.state
        state.running = scheduler_stats.num_running_reqs
        state.waiting = scheduler_stats.num_waiting_reqs + scheduler_stats.num_skipped_waiting_reqs
        state.kv_usage = scheduler_stats.kv_cache_usage
        state.steps += 1
        if scheduler_stats.prefix_cache_stats is not None:
            state.prefix_cache.observe(scheduler_stats.prefix_cache_stats)

    def log_engine_initialized(self) -> None:
        pass


class _VllmMetricsMirror(Collector):
    """Collects the ``vllm:*`` families of the default registry on behalf of another registry."""

    def collect(self) -> Iterable[Metric]:
        for family in REGISTRY.collect():
            if family.name.startswith(VLLM_METRIC_PREFIX):
                yield family

    def describe(self) -> Iterable[Metric]:
        return []  # families appear only once an engine exists; no name checks at registration


def register_vllm_metrics(registry: CollectorRegistry) -> Collector | None:
    """Expose vLLM's ``vllm:*`` metrics on ``registry``; returns the collector to unregister later.

    With the default ``REGISTRY`` nothing is needed (vLLM registers there) and None is returned.
    """
    if registry is REGISTRY:
        return None
    collector = _VllmMetricsMirror()
    registry.register(collector)
    return collector
