"""The frontend's view of what is served: models, their cards, tokenizers and live instances.

Journey: workers register (card + instance record) -> **the model watcher here** builds one
``ServedModel`` per model name (preprocessor from the card's files, an instance router per pool)
-> HTTP handlers look models up by name, and serve a model on the endpoints its card's
``model_type`` lists (``chat``, ``completions``, ``embeddings``; a 404 on the others). Only the
Dynamo namespaces of ``--namespace`` (or ``DYN_DISCOVERY_NAMESPACES``) are watched, else every one.
A model appears with its first live instance and goes with its last. A card whose checksum or
``model_type`` differs from the one already serving that name is refused (a model cannot change
under a running name). Embedding models are routed round-robin in ``kv`` router mode: no KV cache
outlives an embedding request, so there is nothing for a KV router to find. Card files come from
the local disk when the frontend shares the worker's filesystem, else from the worker over the
request plane.

In ``kv`` router mode a ``KvFeed`` keeps every pool's KV router current: KV events and load
reports from the event plane, a snapshot of each worker's cache when it joins a pool (so a
restarted frontend routes to cached prefixes at once), replays when events went missing, and with
``--router-replica-sync`` the other frontends' load predictions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from dynamo.frontend.args import FrontendConfig
from dynamo.frontend.routing import InstanceRouter, create_policy
from dynamo.llm.card_watch import watch_model_cards
from dynamo.llm.endpoints import FilesRequest, files_endpoint_name
from dynamo.llm.errors import RequestError
from dynamo.llm.model_card import ModelDeploymentCard
from dynamo.llm.preprocessor import Preprocessor
from dynamo.router import KvRouter, KvRouterConfig
from dynamo.router.feed import KvFeed
from dynamo.router.metrics import KvLoadCollector, RoutingMetrics
from dynamo.router.sync_events import router_sync_subject
from dynamo.runtime import DistributedRuntime, EndpointId, InstanceRecord
from dynamo.runtime.discovery.registry import scope_prefixes

log = logging.getLogger(__name__)

LISTING_TIMEOUT = 5.0  # seconds the start-up listing of model cards may take

PREFILL_COMPONENT = "prefill"
BACKEND_COMPONENT = "backend"
EMBEDDINGS = "embeddings"  # the card model type of embedding workers
# The path each card model type is served on, for error messages.
MODEL_TYPE_PATHS = {
    "chat": "/v1/chat/completions",
    "completions": "/v1/completions",
    EMBEDDINGS: "/v1/embeddings",
}

_V = TypeVar("_V")


@dataclass(eq=False)
class ServedModel:
    """One model name and everything needed to serve it."""

    name: str
    card: ModelDeploymentCard
    preprocessor: Preprocessor
    router: InstanceRouter  # aggregated / decode workers
    prefill_router: InstanceRouter  # prefill workers (disaggregation)
    records: dict[int, InstanceRecord] = field(default_factory=dict)
    inflight: int = 0  # admitted and not finished (``--max-inflight-requests`` bounds it)
    created: int = field(default_factory=lambda: int(time.time()))  # when this frontend first served it

    @property
    def has_workers(self) -> bool:
        return bool(self.router.instances)

    @contextlib.contextmanager
    def hold_slot(self) -> Iterator[None]:
        """Count a request that was just admitted in flight while it is prepared (templated and
        tokenized, perhaps in a thread): without it a burst of long prompts all pass the admission
        check during that wait. ``RequestMetrics``, created right after with no wait in between,
        takes the slot over."""
        self.inflight += 1
        try:
            yield
        finally:
            self.inflight -= 1

    def require(self, model_type: str) -> None:
        """``RequestError`` (404) unless this model is served on ``model_type``'s endpoint."""
        if model_type in self.card.model_type:
            return
        served = ", ".join(MODEL_TYPE_PATHS.get(t, t) for t in self.card.model_type)
        raise RequestError(
            404,
            f"The model '{self.name}' is not served on {MODEL_TYPE_PATHS.get(model_type, model_type)} "
            f"(it is served on {served}).",
            param="model",
            code="model_not_found",
        )


class ModelManager:
    """Watches discovery and keeps ``models`` up to date."""

    def __init__(self, runtime: DistributedRuntime, config: FrontendConfig) -> None:
        self.runtime = runtime
        self.config = config
        self.models: dict[str, ServedModel] = {}
        self._cards: dict[tuple[EndpointId, int], ModelDeploymentCard] = {}
        self._records: dict[tuple[EndpointId, int], InstanceRecord] = {}
        self._owner: dict[int, ServedModel] = {}  # instance id -> model
        self._loading: set[str] = set()  # models whose first instance is being loaded (tokenizer, template)
        self._lock = asyncio.Lock()
        self.changed = asyncio.Event()
        self.routing_metrics = RoutingMetrics(runtime.metrics, "dynamo_frontend_router_")
        self.kv_feed: KvFeed | None = None
        if config.router_mode == "kv":
            self.kv_feed = KvFeed(
                runtime,
                self._kv_routers_of,
                self._all_kv_routers,
                self._record_of,
                replica_sync=config.router_replica_sync,
                metrics_prefix="dynamo_frontend_router_",
            )
            runtime.metrics.register(KvLoadCollector(self._named_kv_routers, "dynamo_frontend_router_"))

    async def start(self) -> None:
        await self._note_models_to_load()
        self.runtime.spawn(self._follow_cards(), "watch-model-cards")
        self.runtime.spawn(self._follow_instances(), "watch-instances")
        if self.kv_feed is not None:
            self.kv_feed.start()

    def get(self, name: str) -> ServedModel | None:
        return self.models.get(name)

    async def _note_models_to_load(self) -> None:
        """The models discovery lists now count as loading until their first reconcile, so a
        request in the instant before the watch delivers them gets 503 + Retry-After, not 404."""
        try:
            async with asyncio.timeout(LISTING_TIMEOUT):  # never hold up the frontend's start
                for prefix in scope_prefixes("cards", self.config.discovery_namespaces):
                    for raw in (await self.runtime.discovery.get_prefix(prefix)).values():
                        with contextlib.suppress(ValueError):
                            self._loading.add(ModelDeploymentCard.from_json(raw).display_name)
        except Exception as exc:  # discovery unreachable right now: the watch will catch up
            log.debug("no initial listing of model cards: %s", exc)

    def loading(self, name: str) -> bool:
        """True while model ``name`` was discovered and is being loaded here (not servable yet)."""
        return name in self._loading

    async def _follow_cards(self) -> None:
        async for event in watch_model_cards(self.runtime, namespaces=self.config.discovery_namespaces):
            await self._apply(self._cards, (event.endpoint, event.instance_id), event.card)

    async def _follow_instances(self) -> None:
        async for event in self.runtime.watch_instances(namespaces=self.config.discovery_namespaces):
            await self._apply(self._records, (event.endpoint, event.instance_id), event.record)

    async def _apply(
        self, table: dict[tuple[EndpointId, int], _V], key: tuple[EndpointId, int], value: _V | None
    ) -> None:
        """Record one discovery change (``None``: removed) and reconcile that instance."""
        try:
            async with self._lock:
                if value is None:
                    gone = table.pop(key, None)
                    if isinstance(gone, ModelDeploymentCard):
                        self._loading.discard(gone.display_name)
                else:
                    table[key] = value
                await self._reconcile(key)
        except Exception:
            log.exception("failed to apply the discovery change of instance %x of %s", key[1], key[0])
        self.changed.set()

    async def _reconcile(self, key: tuple[EndpointId, int]) -> None:
        endpoint, iid = key
        card = self._cards.get(key)
        record = self._records.get(key)
        if card is not None and record is not None and card.display_name not in self.models:
            self._loading.add(card.display_name)
        try:
            await self._reconcile_instance(endpoint, iid, card, record)
        finally:
            if card is not None and record is not None:  # a card alone waits for its instance
                self._loading.discard(card.display_name)

    async def _reconcile_instance(
        self, endpoint: EndpointId, iid: int, card: ModelDeploymentCard | None, record: InstanceRecord | None
    ) -> None:
        if card is None or record is None:
            self._remove_instance(iid)
            return
        model = self.models.get(card.display_name)
        if model is not None and model.card.model_type != card.model_type:
            log.error(
                "refusing instance %x: it serves '%s' as %s, but the model is served as %s",
                iid,
                card.display_name,
                "/".join(card.model_type),
                "/".join(model.card.model_type),
            )
            return
        if model is not None and model.card.checksum != card.checksum:
            log.error(
                "refusing instance %x: its card for '%s' differs from the one being served (checksum %s != %s)",
                iid,
                card.display_name,
                card.checksum[:12],
                model.card.checksum[:12],
            )
            return
        if model is None:
            model = await self._load_model(card, record)
            if model is None:
                return
            self.models[card.display_name] = model
            log.info("model '%s' is now served", card.display_name)
        is_prefill = endpoint.component == PREFILL_COMPONENT or card.runtime.disaggregation_role == "prefill"
        pool = model.prefill_router if is_prefill else model.router
        model.records[iid] = record
        self._owner[iid] = model
        if pool.add(iid, card.runtime.total_kv_blocks) and self.kv_feed is not None:
            self.kv_feed.worker_added(iid)
        log.info(
            "instance %x of '%s' added (%s, %s)",
            iid,
            model.name,
            "prefill" if is_prefill else "serving",
            record.address,
        )

    def _remove_instance(self, iid: int) -> None:
        model = self._owner.pop(iid, None)
        if model is None:
            return
        model.router.remove(iid)
        model.prefill_router.remove(iid)
        record = model.records.pop(iid, None)
        if record is not None:
            self.runtime.request_client.forget(record.address)
        log.info("instance %x of '%s' removed", iid, model.name)
        if not model.records:
            self.models.pop(model.name, None)
            log.info("model '%s' has no workers left and is no longer served", model.name)

    async def _load_model(self, card: ModelDeploymentCard, record: InstanceRecord) -> ServedModel | None:
        files = await asyncio.to_thread(card.try_read_local_files)
        if files is None:
            try:
                files = await self._fetch_files(card, record)
            except Exception as exc:
                log.error(
                    "cannot fetch the files of model '%s' from %s: %s", card.display_name, record.address, exc
                )
                return None
        try:
            preprocessor = await asyncio.to_thread(Preprocessor.from_card, card, files)
        except Exception as exc:
            log.error("cannot build the preprocessor of model '%s': %s", card.display_name, exc)
            return None
        namespace = record.endpoint_id.namespace
        component = record.endpoint_id.component
        if component == PREFILL_COMPONENT:
            component = BACKEND_COMPONENT
        return ServedModel(
            name=card.display_name,
            card=card,
            preprocessor=preprocessor,
            router=self._make_router(card, router_sync_subject(namespace, component)),
            prefill_router=self._make_router(card, router_sync_subject(namespace, PREFILL_COMPONENT)),
        )

    def _make_router(self, card: ModelDeploymentCard, sync_subject: str) -> InstanceRouter:
        """A pool's router; in kv mode fed by ``kv_feed`` and, with replica sync, publishing on ``sync_subject``."""
        cfg = self.config
        kv_config = KvRouterConfig(
            block_size=cfg.kv_cache_block_size or card.kv_cache_block_size,
            overlap_weight=cfg.kv_overlap_score_weight,
            temperature=cfg.router_temperature,
            active_decode_blocks_threshold=cfg.active_decode_blocks_threshold,
            active_prefill_tokens_threshold=cfg.active_prefill_tokens_threshold,
            use_kv_events=cfg.use_kv_events,
            ttl_s=cfg.router_ttl,
        )
        feed = self.kv_feed
        publish = None
        if feed is not None and cfg.router_replica_sync:
            publish = feed.sync_publisher(sync_subject, kv_config.router_id)
        mode = cfg.router_mode
        if mode == "kv" and EMBEDDINGS in card.model_type:
            mode = "round-robin"  # no KV cache outlives an embedding request: nothing to route by
        policy = create_policy(
            mode,
            kv_config=kv_config,
            publish_sync=publish,
            on_resync_needed=feed.on_resync_needed if feed is not None else None,
            metrics=self.routing_metrics,
            label=card.display_name,
        )
        return InstanceRouter(policy, metrics=self.routing_metrics, label=card.display_name)

    async def _fetch_files(self, card: ModelDeploymentCard, record: InstanceRecord) -> dict[str, bytes]:
        stream = await self.runtime.request_client.stream(
            record.address, files_endpoint_name(record.endpoint_id), FilesRequest(names=list(card.files))
        )
        files: dict[str, bytes] = {}
        async for item in stream:
            files.update(item)
        card.verify_files(files)
        return files

    # --- the KV routers, for the feed ------------------------------------------------------
    def _kv_routers_of(self, iid: int) -> list[KvRouter]:
        model = self._owner.get(iid)
        if model is None:
            return []
        return [p.kv for p in (model.router, model.prefill_router) if p.kv is not None and iid in p.instances]

    def _all_kv_routers(self) -> list[KvRouter]:
        return [p.kv for m in self.models.values() for p in (m.router, m.prefill_router) if p.kv is not None]

    def _named_kv_routers(self) -> list[tuple[str, KvRouter]]:
        return [
            (m.name, p.kv)
            for m in self.models.values()
            for p in (m.router, m.prefill_router)
            if p.kv is not None
        ]

    def _record_of(self, iid: int) -> InstanceRecord | None:
        model = self._owner.get(iid)
        return model.records.get(iid) if model is not None else None
