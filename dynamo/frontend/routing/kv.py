"""``--router-mode kv`` (journey: route): the instance with the best KV-cache overlap for the least
predicted load.

A thin adapter from the ``RoutingPolicy`` hooks to ``dynamo.router.KvRouter``, which does the work
(cache index fed by ``KvFeed``, per-worker load prediction, cost function). Load accounting follows
the hooks: ``select`` adds the request (its prompt blocks and pending prefill) to the chosen
worker, ``on_first_token`` releases the pending prefill, ``on_request_complete`` releases the rest.
A migrated request is completed on its old worker and selected again for the new one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from dynamo.frontend.routing.policy import Choice, RoutingPolicy
from dynamo.router import AllWorkersBusy, KvRouter, KvRouterConfig, ResyncRequest, worker_key
from dynamo.router.metrics import RoutingMetrics
from dynamo.router.sync_events import RouterSyncEvent


class KvPolicy(RoutingPolicy):
    """KV-cache-aware choice; ``router`` is the ``KvRouter`` behind it (the feed and metrics read it)."""

    name = "kv"

    def __init__(
        self,
        config: KvRouterConfig | None = None,
        *,
        publish_sync: Callable[[RouterSyncEvent], None] | None = None,
        on_resync_needed: Callable[[ResyncRequest], None] | None = None,
        metrics: RoutingMetrics | None = None,
        label: str = "",
    ) -> None:
        """``publish_sync``: replica sync (``--router-replica-sync``); ``on_resync_needed``: fetch a
        worker's missed KV events; ``metrics``/``label``: observe overlap and refusals per model."""
        self.router = KvRouter(
            config or KvRouterConfig(), on_resync_needed=on_resync_needed, publish=publish_sync
        )
        self._overlap = metrics.overlap_blocks.labels(label) if metrics is not None else None
        self._all_busy = metrics.all_busy.labels(label) if metrics is not None else None

    def select(
        self, candidates: Sequence[int], token_ids: Sequence[int], request_id: str, pinned: int | None
    ) -> Choice:
        try:
            sel = self.router.select(
                token_ids,
                request_id,
                [worker_key(i) for i in candidates],
                pinned=worker_key(pinned) if pinned is not None else None,
            )
        except AllWorkersBusy:
            if self._all_busy is not None:
                self._all_busy.inc()
            raise
        if self._overlap is not None:
            self._overlap.observe(sel.overlap_blocks)
        return Choice(sel.instance_id, sel.overlap_blocks)

    def add_instance(self, instance_id: int, total_blocks: int | None) -> None:
        self.router.add_worker(worker_key(instance_id), total_blocks)

    def remove_instance(self, instance_id: int) -> None:
        self.router.remove_instance(instance_id)

    def on_first_token(self, request_id: str) -> None:
        self.router.on_first_token(request_id)

    def on_request_complete(self, request_id: str) -> None:
        self.router.on_finished(request_id)
