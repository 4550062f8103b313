"""The standalone KV router service: "which worker for these tokens?" for any component.

Journey: a caller that is not the HTTP frontend (the prefill side of disaggregation, an external
gateway) -> request plane -> **this service** -> either an answer (``best_worker_id``,
``overlap_scores``) or the request itself forwarded to the chosen worker (``generate``), whose
outputs stream back through here so the router sees first token and completion.

It follows one worker endpoint in discovery (instances and model cards, through the runtime's
typed watch scoped to that endpoint), keeps a ``KvRouter`` current with a ``KvFeed`` (KV events,
load reports, resyncs, replica sync) and serves, under ``dyn://<namespace>.router.*``:

- ``generate``: a ``PreprocessedRequest`` (wire form) -> routed, recorded in the load view,
  forwarded; outputs are the worker's ``EngineOutput`` items. An unreachable worker is skipped.
- ``best_worker_id``: ``{"token_ids": [...], "lora_name"?: str}`` -> ``{"worker_id", "dp_rank",
  "overlap_blocks", "request_blocks", "logit", "prefill_cost", "decode_cost", "active_blocks",
  "prefill_tokens", "active_requests"}``; nothing is recorded.
- ``overlap_scores``: the same request -> ``{"request_blocks", "scores": {worker_id: blocks}}``.

The block size comes from ``--kv-cache-block-size`` or else the first model card seen.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncGenerator
from typing import Any

from dynamo.llm.card_watch import watch_model_cards
from dynamo.llm.kv_events import compute_block_hashes, compute_sequence_hashes
from dynamo.llm.model_card import ModelDeploymentCard
from dynamo.llm.token_ids import TokenIds, from_wire
from dynamo.router.feed import KvFeed
from dynamo.router.kv_router import KvRouter, KvRouterConfig
from dynamo.router.metrics import KvLoadCollector, RoutingMetrics
from dynamo.router.selector import AllWorkersBusy, NoWorkers, RoutingError
from dynamo.router.sync_events import router_sync_subject
from dynamo.router.worker_key import worker_key
from dynamo.runtime import DistributedRuntime, EndpointId, InstanceRecord, InstanceUnreachable, RequestContext
from dynamo.runtime.runtime import handler_name

log = logging.getLogger(__name__)

ROUTER_COMPONENT = "router"
METRICS_PREFIX = "dynamo_router_"


class StandaloneRouter:
    """Routes requests among the instances of one worker endpoint."""

    def __init__(
        self,
        runtime: DistributedRuntime,
        workers: EndpointId,
        config: KvRouterConfig,
        *,
        block_size_given: bool,
        replica_sync: bool = False,
    ) -> None:
        self.runtime = runtime
        self.workers = workers
        self.config = config
        self.replica_sync = replica_sync
        self.records: dict[int, InstanceRecord] = {}
        self.total_blocks: dict[int, int] = {}
        self.router: KvRouter | None = None
        self._waiting_for_block_size = not block_size_given
        self.metrics = RoutingMetrics(runtime.metrics, METRICS_PREFIX)
        self.feed = KvFeed(
            runtime,
            self._routers_of,
            self._all_routers,
            self.records.get,
            subscription=f"dynamo.{workers.namespace}.>",
            replica_sync=replica_sync,
            metrics_prefix=METRICS_PREFIX,
        )
        self._label = str(workers)
        runtime.metrics.register(
            KvLoadCollector(lambda: [(self._label, self.router)] if self.router else [], METRICS_PREFIX)
        )

    async def start(self, component: str = ROUTER_COMPONENT) -> None:
        """Follow the workers and serve the router's endpoints in the workers' namespace."""
        if not self._waiting_for_block_size:
            self._make_router()
        self.feed.start()
        self.runtime.spawn(self._follow_instances(), "router-watch-instances")
        self.runtime.spawn(self._follow_cards(), "router-watch-cards")
        ns = self.workers.namespace
        await self.runtime.serve_endpoint(EndpointId(ns, component, "best_worker_id"), self.best_worker_id)
        await self.runtime.serve_endpoint(EndpointId(ns, component, "overlap_scores"), self.overlap_scores)
        await self.runtime.serve_endpoint(EndpointId(ns, component, "generate"), self.generate)
        self.runtime.set_ready()
        log.info(
            "KV router %x serving dyn://%s.%s.* for %s", self.runtime.instance_id, ns, component, self.workers
        )

    # ----- workers ----------------------------------------------------------------------------

    def _make_router(self) -> None:
        publish = None
        if self.replica_sync:
            subject = router_sync_subject(self.workers.namespace, self.workers.component)
            publish = self.feed.sync_publisher(subject, self.config.router_id)
        self.router = KvRouter(self.config, on_resync_needed=self.feed.on_resync_needed, publish=publish)
        log.info("KV router ready: block size %d", self.config.block_size)
        for iid in self.records:
            self.router.add_worker(worker_key(iid), self.total_blocks.get(iid))
            self.feed.worker_added(iid)

    def _routers_of(self, instance_id: int) -> list[KvRouter]:
        return [self.router] if self.router is not None and instance_id in self.records else []

    def _all_routers(self) -> list[KvRouter]:
        return [self.router] if self.router is not None else []

    async def _follow_instances(self) -> None:
        async for event in self.runtime.watch_instances(endpoint=self.workers):
            try:
                self._on_instance(event.instance_id, event.record)
            except Exception:
                log.exception("failed to apply the discovery change of worker %x", event.instance_id)

    async def _follow_cards(self) -> None:
        async for event in watch_model_cards(self.runtime, endpoint=self.workers):
            try:
                self._on_card(event.instance_id, event.card)
            except Exception:
                log.exception("failed to apply the model card of worker %x", event.instance_id)

    def _on_instance(self, iid: int, record: InstanceRecord | None) -> None:
        if record is None:
            gone = self.records.pop(iid, None)
            if gone is not None:
                self.runtime.request_client.forget(gone.address)
                if self.router is not None:
                    self.router.remove_instance(iid)
                log.info("worker %x left", iid)
            return
        new = iid not in self.records
        self.records[iid] = record
        if new:
            log.info("worker %x joined at %s", iid, record.address)
            if self.router is not None:
                self.router.add_worker(worker_key(iid), self.total_blocks.get(iid))
                self.feed.worker_added(iid)

    def _on_card(self, iid: int, card: ModelDeploymentCard | None) -> None:
        if card is None:
            return
        if card.runtime.total_kv_blocks:
            self.total_blocks[iid] = card.runtime.total_kv_blocks
        if self._waiting_for_block_size:
            self._waiting_for_block_size = False
            self.config.block_size = card.kv_cache_block_size
            self._make_router()
        elif self.router is not None and iid in self.records:
            self.router.add_worker(worker_key(iid), self.total_blocks.get(iid))

    def _require_router(self) -> KvRouter:
        if self.router is None:
            raise NoWorkers()
        return self.router

    # ----- endpoints --------------------------------------------------------------------------

    async def best_worker_id(self, request: Any, ctx: RequestContext) -> AsyncGenerator[dict[str, Any], None]:
        """The worker this router would choose now for ``token_ids``, with its overlap and load."""
        router = self._require_router()
        tokens = _token_ids(request)
        local = compute_block_hashes(tokens, router.config.block_size, request.get("lora_name"))
        hashes = compute_sequence_hashes(local)
        sel = router.selector.select(
            [worker_key(i) for i in self.records],
            len(tokens),
            router.index.find_matches_sequence(hashes).scores,
            router.sequences,
            router.total_blocks,
            sequence_hashes=hashes,
        )
        seqs = router.sequences
        yield {
            "worker_id": sel.instance_id,
            "dp_rank": sel.dp_rank,
            "overlap_blocks": sel.overlap_blocks,
            "request_blocks": sel.request_blocks,
            "logit": sel.logit,
            "prefill_cost": sel.prefill_cost,
            "decode_cost": sel.decode_cost,
            "active_blocks": seqs.active_blocks(sel.worker),
            "prefill_tokens": seqs.prefill_tokens(sel.worker),
            "active_requests": seqs.active_requests(sel.worker),
        }

    async def overlap_scores(self, request: Any, ctx: RequestContext) -> AsyncGenerator[dict[str, Any], None]:
        """Per worker, the leading blocks of ``token_ids`` it caches (workers with none are absent)."""
        router = self._require_router()
        tokens = _token_ids(request)
        scores = router.find_overlap(tokens, request.get("lora_name")).scores
        yield {"request_blocks": -(-len(tokens) // router.config.block_size), "scores": scores}

    async def generate(self, request: Any, ctx: RequestContext) -> AsyncGenerator[Any, None]:
        """Route a ``PreprocessedRequest`` and stream the chosen worker's outputs back."""
        router = self._require_router()
        tokens = _token_ids(request)
        request["token_ids"] = tokens  # forwarded as the worker reads them (bytes or, if older, a list)
        rid = str(request.get("request_id") or ctx.request_id or uuid.uuid4().hex)
        tried: set[int] = set()
        while True:
            candidates = [worker_key(i) for i in self.records if i not in tried]
            try:
                sel = router.select(tokens, rid, candidates)
            except AllWorkersBusy:
                self.metrics.all_busy.labels(self._label).inc()
                raise
            self.metrics.decisions.labels(self._label, f"{sel.instance_id:x}").inc()
            self.metrics.overlap_blocks.labels(self._label).observe(sel.overlap_blocks)
            record = self.records.get(sel.instance_id)
            try:
                if record is None:
                    raise InstanceUnreachable(f"worker {sel.instance_id:x} left")
                stream = await self.runtime.request_client.stream(
                    record.address, handler_name(record.endpoint_id), request, {"request_id": rid}
                )
                break
            except InstanceUnreachable as exc:
                log.warning(
                    "worker %x unreachable (%s); routing request %s elsewhere", sel.instance_id, exc, rid
                )
                router.on_finished(rid)
                tried.add(sel.instance_id)
        first = True
        try:
            async for item in stream:
                if first:
                    first = False
                    router.on_first_token(rid)
                yield item
        finally:
            if not stream.finished:
                await stream.aclose()
            router.on_finished(rid)


def _token_ids(request: Any) -> TokenIds:
    """The request's ``token_ids``: a list of ints, or their little-endian u32 bytes (the wire form
    of a frontend's ``PreprocessedRequest``)."""
    ids = request.get("token_ids") if isinstance(request, dict) else None
    try:
        return from_wire(ids)
    except (TypeError, ValueError):
        raise RoutingError("the request needs 'token_ids', a list of token ids") from None
