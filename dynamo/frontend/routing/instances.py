"""One model pool's live instances (journey: preprocess -> **route** -> request plane).

An ``InstanceRouter`` per served model and pool (aggregated/decode workers, prefill workers) keeps
the bookkeeping every policy needs: which instances are live (from discovery), which could not be
reached lately (skipped for ``UNREACHABLE_COOLDOWN`` seconds, so a killed worker costs one failed
connect, not a lease TTL of failed requests), pinned requests, and a decision counter per chosen
instance. The choice itself is its ``RoutingPolicy``'s; the request's life events are passed on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from prometheus_client import Counter

from dynamo.frontend.routing.policy import Choice, RoutingPolicy
from dynamo.router import KvRouter, NoWorkers
from dynamo.router.metrics import RoutingMetrics

log = logging.getLogger(__name__)

UNREACHABLE_COOLDOWN = 5.0  # seconds an unreachable instance is skipped


class InstanceRouter:
    """Live instances of one model pool and the policy that picks among them."""

    def __init__(
        self, policy: RoutingPolicy, *, metrics: RoutingMetrics | None = None, label: str = ""
    ) -> None:
        """``metrics``/``label``: count decisions per chosen instance under that model name."""
        self.policy = policy
        self.instances: list[int] = []
        self._down_until: dict[int, float] = {}
        self._metrics = metrics
        self._label = label
        self._decisions: dict[int, Counter] = {}  # instance -> its decision counter child
        router = getattr(policy, "router", None)
        # The KV router behind a kv policy: the KV feed, the prefill router and /metrics read it.
        self.kv: KvRouter | None = router if isinstance(router, KvRouter) else None

    # --- membership -------------------------------------------------------------------------
    def add(self, instance_id: int, total_blocks: int | None = None) -> bool:
        """Add (or refresh) a live instance; True when it is new to this pool."""
        new = instance_id not in self.instances
        if new:
            self.instances.append(instance_id)
            self.instances.sort()
        self._down_until.pop(instance_id, None)
        self.policy.add_instance(instance_id, total_blocks)
        return new

    def remove(self, instance_id: int) -> None:
        if instance_id in self.instances:
            self.instances.remove(instance_id)
        self._down_until.pop(instance_id, None)
        self._decisions.pop(instance_id, None)
        self.policy.remove_instance(instance_id)

    def mark_unreachable(self, instance_id: int) -> None:
        self._down_until[instance_id] = time.monotonic() + UNREACHABLE_COOLDOWN

    def candidates(self, exclude: set[int] | frozenset[int] = frozenset()) -> list[int]:
        """Live instances not excluded and not cooling down (cooling ones only if nothing else)."""
        live = [i for i in self.instances if i not in exclude] if exclude else self.instances
        if not self._down_until:
            return live
        now = time.monotonic()
        healthy = [i for i in live if self._down_until.get(i, 0.0) <= now]
        return healthy or live

    # --- selection --------------------------------------------------------------------------
    def select(
        self,
        token_ids: Sequence[int],
        request_id: str,
        exclude: set[int] | frozenset[int] = frozenset(),
        pinned: int | None = None,
    ) -> Choice:
        """Pick an instance. Raises ``NoWorkers`` when none is live, ``AllWorkersBusy`` when the
        policy finds every candidate too busy."""
        if pinned is not None:
            if pinned not in self.instances:
                raise NoWorkers()
            candidates = [pinned]
        else:
            candidates = self.candidates(exclude)
            if not candidates:
                raise NoWorkers()
        choice = self.policy.select(candidates, token_ids, request_id, pinned)
        if self._metrics is not None:
            counter = self._decisions.get(choice.instance_id)
            if counter is None:
                counter = self._metrics.decisions.labels(self._label, f"{choice.instance_id:x}")
                self._decisions[choice.instance_id] = counter
            counter.inc()
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "request %s -> instance %x (%s, overlap %d blocks, %d prompt tokens)",
                request_id,
                choice.instance_id,
                self.policy.name,
                choice.overlap_blocks,
                len(token_ids),
            )
        return choice

    # --- the request's life, for stateful policies ------------------------------------------
    def on_first_token(self, request_id: str) -> None:
        self.policy.on_first_token(request_id)

    def on_finished(self, request_id: str) -> None:
        self.policy.on_request_complete(request_id)
