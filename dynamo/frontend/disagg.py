"""Where a prompt is prefilled, for models with prefill workers (journey: preprocess -> **route:
prefill here or there** -> decode worker -> tokens back).

``PrefillRouter.generation`` gives a plain ``Generation`` when nothing is disaggregated (no prefill
workers, or the client pinned an instance), else a ``DisaggGeneration`` that decides per request:

- **local** (the decode worker prefills) when the prompt's uncached part -- its length minus the
  blocks the best decode worker caches (kv mode) -- is below ``--max-local-prefill-length``, or when
  every prefill worker is above ``--active-prefill-tokens-threshold`` (kv mode);
- else **remote**: a prefill worker is picked from the prefill pool (by its routing policy), then by
  ``--disaggregation-strategy``: ``prefill_first`` runs the prefill from here and sends the request
  with the returned ``kv_transfer_params`` to a decode worker; ``decode_first`` sends the request to a
  decode worker naming the prefill worker (``RemotePrefill``), which the decode worker calls.

The client sees one ordinary stream; its TTFT includes the remote prefill and the KV transfer.
Failures never fail the request: an unreachable prefill worker is skipped for another; when none
answers, it errs, or it is slower than ``DYN_PREFILL_TIMEOUT``, the prompt is prefilled locally; a
decode worker that could not load the KV prefills locally and says so on its first output. Each
fallback is logged with its reason and counted in ``dynamo_frontend_disagg_fallback{model,reason}``.
Why the defaults are what they are: docs/frontend.md, "Disaggregation".
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import Any

import msgspec

from dynamo.frontend.args import FrontendConfig
from dynamo.frontend.generation import Generation
from dynamo.frontend.metrics import DisaggMetrics
from dynamo.frontend.models import ServedModel
from dynamo.frontend.routing import AllWorkersBusy, NoWorkers
from dynamo.llm.disagg import (
    PREFILL_UNREACHABLE,
    PrefillFailed,
    decode_first_request,
    fallback_reason,
    run_remote_prefill,
)
from dynamo.llm.protocols import PreprocessedRequest
from dynamo.runtime.request_plane import RequestPlaneClient
from dynamo.runtime.runtime import handler_name

log = logging.getLogger(__name__)

# Decisions (label values of dynamo_frontend_disagg_requests{prefill=...}).
REMOTE = "remote"
LOCAL_SHORT = "local_short"
LOCAL_BUSY = "local_busy"


class PrefillRouter:
    """One per frontend: decides per request and builds the request's ``Generation``."""

    def __init__(self, config: FrontendConfig, metrics: DisaggMetrics) -> None:
        self.strategy = config.disaggregation_strategy
        self.max_local_prefill_length = config.max_local_prefill_length
        self.timeouts = config.disagg_timeouts  # read and checked with the frontend's flags
        self.metrics = metrics

    def generation(
        self,
        client: RequestPlaneClient,
        model: ServedModel,
        request: PreprocessedRequest,
        *,
        pinned: int | None = None,
        migration_limit: int = 0,
        on_migration: Callable[[str], None] | None = None,
    ) -> Generation | DisaggGeneration:
        """A plain ``Generation`` when nothing is disaggregated (no prefill workers, or the client
        pinned an instance), else a ``DisaggGeneration``."""
        if pinned is not None or not model.prefill_router.instances:
            return Generation(
                client,
                model,
                request,
                pinned=pinned,
                migration_limit=migration_limit,
                on_migration=on_migration,
            )
        return DisaggGeneration(self, client, model, request, migration_limit, on_migration)

    def uncached_tokens(self, model: ServedModel, token_ids: Sequence[int]) -> int:
        """Prompt tokens the best decode worker does not cache (all of them outside KV mode)."""
        kv = model.router.kv
        if kv is None:
            return len(token_ids)
        scores = kv.find_overlap(token_ids).scores
        best = max(scores.values(), default=0)
        return max(0, len(token_ids) - best * kv.config.block_size)

    def fallback(self, model: str, request_id: str, reason: str, detail: str) -> None:
        log.warning(
            "request %s: prefilling on the decode worker instead (%s: %s)", request_id, reason, detail
        )
        self.metrics.fallbacks.labels(model, reason).inc()


class DisaggGeneration:
    """A request of a model with prefill workers; iterate ``batches()`` like a ``Generation``."""

    def __init__(
        self,
        router: PrefillRouter,
        client: RequestPlaneClient,
        model: ServedModel,
        request: PreprocessedRequest,
        migration_limit: int,
        on_migration: Callable[[str], None] | None,
    ) -> None:
        self.router = router
        self.client = client
        self.model = model
        self.request = request
        self.migration_limit = migration_limit
        self.on_migration = on_migration
        self.inner: Generation | None = None

    @property
    def instance_id(self) -> int | None:
        """The decode instance serving the stream."""
        return self.inner.instance_id if self.inner is not None else None

    @property
    def overlap_blocks(self) -> int:
        return self.inner.overlap_blocks if self.inner is not None else 0

    async def batches(self) -> AsyncGenerator[list[dict[str, Any]], None]:
        """Batches of the decode worker's outputs; the prefill (if remote) happens first."""
        router = self.router
        model = self.model
        request = self.request
        rid = request.request_id
        prefill_pool = model.prefill_router
        booked = False  # decode_first: the prefill worker's load is released at the first token
        uncached = router.uncached_tokens(model, request.token_ids)
        if uncached < router.max_local_prefill_length:
            router.metrics.requests.labels(model.name, LOCAL_SHORT).inc()
            log.debug("request %s: %d uncached prompt tokens, prefilling locally", rid, uncached)
        elif router.strategy == "decode_first":
            handoff = self._pick_prefill_worker()
            if handoff is not None:
                booked = True
                request = handoff
        else:
            params = await self._prefill_first()
            if params is not None:
                request = msgspec.structs.replace(request, kv_transfer_params=params)
        self.inner = Generation(
            self.client,
            model,
            request,
            migration_limit=self.migration_limit,
            on_migration=self.on_migration,
        )
        first = True
        try:
            async for batch in self.inner.batches():
                if first:
                    first = False
                    if booked:
                        booked = False
                        prefill_pool.on_finished(rid)
                    reason = fallback_reason(batch[0]) if batch else None
                    if reason is not None:
                        # The decode worker logged the details with this request id.
                        log.warning(
                            "request %s: decode worker %x prefilled locally (%s)",
                            rid,
                            self.instance_id or 0,
                            reason,
                        )
                        router.metrics.fallbacks.labels(model.name, reason).inc()
                yield batch
        finally:
            if booked:
                prefill_pool.on_finished(rid)

    def _pick_prefill_worker(self) -> PreprocessedRequest | None:
        """decode_first: the request naming the prefill worker the decode worker should call, or
        None (prefill locally)."""
        router = self.router
        model = self.model
        rid = self.request.request_id
        pool = model.prefill_router
        tried: set[int] = set()
        while True:
            try:
                choice = pool.select(self.request.token_ids, rid, exclude=tried)
            except AllWorkersBusy:
                router.metrics.requests.labels(model.name, LOCAL_BUSY).inc()
                log.info("request %s: every prefill worker is busy, prefilling locally", rid)
                return None
            except NoWorkers:
                router.fallback(model.name, rid, PREFILL_UNREACHABLE, "no live prefill worker")
                return None
            record = model.records.get(choice.instance_id)
            if record is None:
                pool.on_finished(rid)
                tried.add(choice.instance_id)
                continue
            router.metrics.requests.labels(model.name, REMOTE).inc()
            return decode_first_request(self.request, record.address, handler_name(record.endpoint_id))

    async def _prefill_first(self) -> dict[str, Any] | None:
        """Run the prefill on a prefill worker; its ``kv_transfer_params``, or None (local)."""
        router = self.router
        model = self.model
        request = self.request
        rid = request.request_id
        pool = model.prefill_router
        tried: set[int] = set()
        counted = False
        while True:
            try:
                choice = pool.select(request.token_ids, rid, exclude=tried)
            except AllWorkersBusy:
                router.metrics.requests.labels(model.name, LOCAL_BUSY).inc()
                log.info("request %s: every prefill worker is busy, prefilling locally", rid)
                return None
            except NoWorkers:
                router.fallback(model.name, rid, PREFILL_UNREACHABLE, "no reachable prefill worker")
                return None
            iid = choice.instance_id
            if not counted:
                counted = True
                router.metrics.requests.labels(model.name, REMOTE).inc()
            record = model.records.get(iid)
            try:
                if record is None:
                    raise PrefillFailed(PREFILL_UNREACHABLE, f"instance {iid:x} is gone")
                result = await run_remote_prefill(
                    self.client,
                    record.address,
                    handler_name(record.endpoint_id),
                    request,
                    router.timeouts.prefill_s,
                )
            except PrefillFailed as exc:
                if exc.reason == PREFILL_UNREACHABLE:
                    # Nothing was sent: another prefill worker may take it.
                    log.warning("request %s: prefill instance %x unreachable (%s)", rid, iid, exc.detail)
                    pool.mark_unreachable(iid)
                    tried.add(iid)
                    continue
                router.fallback(model.name, rid, exc.reason, f"prefill instance {iid:x}: {exc.detail}")
                return None
            finally:
                pool.on_finished(rid)
            router.metrics.prefill_seconds.labels(model.name).observe(result.seconds)
            if result.cached_tokens:
                router.metrics.prefill_cached_tokens.labels(model.name).inc(result.cached_tokens)
            log.debug(
                "request %s: prefilled on instance %x in %.3f s (%d tokens cached there)",
                rid,
                iid,
                result.seconds,
                result.cached_tokens,
            )
            return result.kv_transfer_params
