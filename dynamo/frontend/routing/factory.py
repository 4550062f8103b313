"""``--router-mode`` name -> ``RoutingPolicy`` (journey: route; used when a model pool is created)."""

from __future__ import annotations

from collections.abc import Callable

from dynamo.frontend.routing.kv import KvPolicy
from dynamo.frontend.routing.policy import RoutingPolicy
from dynamo.frontend.routing.random import RandomPolicy
from dynamo.frontend.routing.round_robin import RoundRobinPolicy
from dynamo.router import KvRouterConfig, ResyncRequest
from dynamo.router.metrics import RoutingMetrics
from dynamo.router.sync_events import RouterSyncEvent

POLICIES: dict[str, type[RoutingPolicy]] = {p.name: p for p in (RoundRobinPolicy, RandomPolicy, KvPolicy)}


def create_policy(
    mode: str,
    *,
    kv_config: KvRouterConfig | None = None,
    publish_sync: Callable[[RouterSyncEvent], None] | None = None,
    on_resync_needed: Callable[[ResyncRequest], None] | None = None,
    metrics: RoutingMetrics | None = None,
    label: str = "",
) -> RoutingPolicy:
    """The policy named by ``mode``; the keywords configure the kv policy and are ignored by the
    stateless ones. ``ValueError`` for an unknown mode."""
    cls = POLICIES.get(mode)
    if cls is None:
        raise ValueError(f"unknown router mode {mode!r} (use {', '.join(POLICIES)})")
    if cls is KvPolicy:
        return KvPolicy(
            kv_config,
            publish_sync=publish_sync,
            on_resync_needed=on_resync_needed,
            metrics=metrics,
            label=label,
        )
    return cls()
