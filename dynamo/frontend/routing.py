"""Choosing a worker instance for a request (journey: preprocess -> **route** -> request plane).

One ``InstanceRouter`` per served model (and per pool: aggregated/decode workers, prefill
workers). ``round-robin`` and ``random`` look only at which instances are live; ``kv`` asks the
KV router (``dynamo.router``) for the instance with the best cache overlap for the least load.
Instances that could not be reached are skipped for a short cool-down, so a killed worker costs
one failed connect, not a lease TTL of failed requests. Every decision is counted per chosen
instance (``RoutingMetrics``) and logged at debug level with its overlap.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from dynamo.router import AllWorkersBusy, KvRouter, KvRouterConfig, NoWorkers, ResyncRequest, worker_key
from dynamo.router.metrics import RoutingMetrics
from dynamo.router.sync_events import RouterSyncEvent

log = logging.getLogger(__name__)

UNREACHABLE_COOLDOWN = 5.0  # seconds an unreachable instance is skipped


@dataclass(slots=True)
class Choice:
    """The instance picked for a request, with the KV overlap when the KV router chose it."""

    instance_id: int
    overlap_blocks: int = 0


class InstanceRouter:
    """Live instances of one model pool and the policy that picks among them."""

    def __init__(
        self,
        mode: str,
        kv_config: KvRouterConfig | None = None,
        publish_sync: Callable[[RouterSyncEvent], None] | None = None,
        *,
        on_resync_needed: Callable[[ResyncRequest], None] | None = None,
        metrics: RoutingMetrics | None = None,
        label: str = "",
    ) -> None:
        """``publish_sync``: replica sync (``--router-replica-sync``); ``on_resync_needed``: fetch a
        worker's missed KV events; ``metrics``/``label``: count decisions under that model name."""
        self.mode = mode
        self.instances: list[int] = []
        self._rr = 0
        self._down_until: dict[int, float] = {}
        self._metrics = metrics
        self._label = label
        self.kv: KvRouter | None = None
        if mode == "kv":
            self.kv = KvRouter(
                kv_config or KvRouterConfig(), on_resync_needed=on_resync_needed, publish=publish_sync
            )

    # --- membership -------------------------------------------------------------------------
    def add(self, instance_id: int, total_blocks: int | None = None) -> bool:
        """Add (or refresh) a live instance; True when it is new to this pool."""
        new = instance_id not in self.instances
        if new:
            self.instances.append(instance_id)
            self.instances.sort()
        self._down_until.pop(instance_id, None)
        if self.kv is not None:
            self.kv.add_worker(worker_key(instance_id), total_blocks)
        return new

    def remove(self, instance_id: int) -> None:
        if instance_id in self.instances:
            self.instances.remove(instance_id)
        self._down_until.pop(instance_id, None)
        if self.kv is not None:
            self.kv.remove_instance(instance_id)

    def mark_unreachable(self, instance_id: int) -> None:
        self._down_until[instance_id] = time.monotonic() + UNREACHABLE_COOLDOWN

    def candidates(self, exclude: set[int] | frozenset[int] = frozenset()) -> list[int]:
        """Live instances not excluded and not cooling down (cooling ones only if nothing else)."""
        now = time.monotonic()
        live = [i for i in self.instances if i not in exclude]
        healthy = [i for i in live if self._down_until.get(i, 0.0) <= now]
        return healthy or live

    # --- selection --------------------------------------------------------------------------
    def select(
        self,
        token_ids: list[int],
        request_id: str,
        exclude: set[int] | frozenset[int] = frozenset(),
        pinned: int | None = None,
    ) -> Choice:
        """Pick an instance. Raises ``NoWorkers`` when none is live, ``AllWorkersBusy`` when the
        KV router finds every candidate above its load thresholds."""
        candidates = self.candidates(exclude)
        if pinned is not None:
            if pinned not in self.instances:
                raise NoWorkers()
            candidates = [pinned]
        if not candidates:
            raise NoWorkers()
        if self.kv is not None:
            try:
                sel = self.kv.select(
                    token_ids,
                    request_id,
                    [worker_key(i) for i in candidates],
                    pinned=worker_key(pinned) if pinned is not None else None,
                )
            except AllWorkersBusy:
                if self._metrics is not None:
                    self._metrics.all_busy.labels(self._label).inc()
                raise
            choice = Choice(sel.instance_id, sel.overlap_blocks)
            if self._metrics is not None:
                self._metrics.overlap_blocks.labels(self._label).observe(sel.overlap_blocks)
        elif len(candidates) == 1 or pinned is not None:
            choice = Choice(candidates[0])
        elif self.mode == "random":
            choice = Choice(random.choice(candidates))
        else:
            self._rr += 1
            choice = Choice(candidates[self._rr % len(candidates)])
        if self._metrics is not None:
            self._metrics.decisions.labels(self._label, f"{choice.instance_id:x}").inc()
        log.debug(
            "request %s -> instance %x (%s, overlap %d blocks, %d prompt tokens)",
            request_id,
            choice.instance_id,
            self.mode,
            choice.overlap_blocks,
            len(token_ids),
        )
        return choice

    def on_first_token(self, request_id: str) -> None:
        if self.kv is not None:
            self.kv.on_first_token(request_id)

    def on_finished(self, request_id: str) -> None:
        if self.kv is not None:
            self.kv.on_finished(request_id)


__all__ = ["AllWorkersBusy", "Choice", "InstanceRouter", "NoWorkers"]
