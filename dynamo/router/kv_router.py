"""The KV-cache-aware router: cache overlap + predicted load -> a worker, with no network code.

Journey: HTTP -> preprocess (token ids) -> ``KvRouter.select`` -> request plane -> engine; the
frontend calls ``on_first_token`` and ``on_finished`` as the stream goes, and feeds
``on_kv_events`` / ``on_load_metrics`` from the event plane and ``add_worker`` / ``remove_worker``
from discovery. With replica sync it sends its own load updates through ``publish`` and applies
the other replicas' with ``apply_sync_event``.

Per ``select``: the prompt is hashed once (local block hashes + chained sequence hashes, ~0.4 µs
per block; a prefix hashed before is reused: ``dynamo.router.prefix_hashes``), the index is walked
once (O(prompt blocks)), the candidates are scored once
(O(candidates)) and the request is recorded in the load view (O(prompt blocks)). Not thread-safe:
call it from the event loop that owns it.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from dynamo.llm.kv_events import KvEventBatch, LoadMetrics
from dynamo.router.approx import DEFAULT_MAX_BLOCKS, DEFAULT_TTL_S, ApproxKvIndexer
from dynamo.router.indexer import KvIndexer, ResyncRequest
from dynamo.router.overlap import OverlapScores
from dynamo.router.prefix_hashes import PrefixHasher
from dynamo.router.selector import AllWorkersBusy, Selection, SelectorConfig, WorkerSelector, describe
from dynamo.router.sequences import ActiveSequences
from dynamo.router.sync_events import RouterSyncEvent
from dynamo.router.worker_key import split_worker_key, worker_key

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class KvRouterConfig:
    """KV router settings; the comments name the frontend flags (reference defaults)."""

    block_size: int = 16  # from the model card's kv_cache_block_size
    overlap_weight: float = 1.0  # --kv-overlap-score-weight
    temperature: float = 0.0  # --router-temperature
    active_decode_blocks_threshold: float | None = None  # --active-decode-blocks-threshold
    active_prefill_tokens_threshold: int | None = None  # --active-prefill-tokens-threshold
    use_kv_events: bool = True  # --kv-events / --no-kv-events
    ttl_s: float = DEFAULT_TTL_S  # --no-kv-events: how long a routed prefix is assumed cached
    approx_max_blocks: int = DEFAULT_MAX_BLOCKS  # --no-kv-events: bound on assumed-cached blocks
    # This replica's id for --router-replica-sync; random so that replicas never mistake each
    # other's updates for their own echoes.
    router_id: int = field(default_factory=lambda: random.getrandbits(63))


@dataclass(slots=True)
class RouterCounters:
    """Cumulative counters for /metrics."""

    decisions: int = 0
    prompt_blocks: int = 0  # full prompt blocks over all decisions
    overlap_blocks: int = 0  # of which were already cached on the chosen worker
    all_busy: int = 0  # selections refused because every candidate was busy

    @property
    def hit_rate(self) -> float:
        """Cached share of routed prompt blocks (overlap blocks / prompt blocks)."""
        return self.overlap_blocks / self.prompt_blocks if self.prompt_blocks else 0.0


class KvRouter:
    """Routes requests to the worker with the best cache overlap for the least load."""

    def __init__(
        self,
        config: KvRouterConfig,
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_resync_needed: Callable[[ResyncRequest], None] | None = None,
        publish: Callable[[RouterSyncEvent], None] | None = None,
    ) -> None:
        """``on_resync_needed``: asked to fetch a worker's missed KV events or snapshot (events mode).
        ``publish``: sends this router's load updates to its replicas (``--router-replica-sync``).
        """
        self.config = config
        self.index: KvIndexer | ApproxKvIndexer
        if config.use_kv_events:
            self.index = KvIndexer(on_resync_needed)
        else:
            self.index = ApproxKvIndexer(config.ttl_s, config.approx_max_blocks, clock=clock)
        self.sequences = ActiveSequences(
            config.block_size, router_id=config.router_id, publish=publish, clock=clock
        )
        self.selector = WorkerSelector(
            SelectorConfig(
                block_size=config.block_size,
                overlap_weight=config.overlap_weight,
                temperature=config.temperature,
                active_decode_blocks_threshold=config.active_decode_blocks_threshold,
                active_prefill_tokens_threshold=config.active_prefill_tokens_threshold,
            ),
            rng,
        )
        self.total_blocks: dict[int, int] = {}  # worker key -> KV capacity in blocks, when known
        self.counters = RouterCounters()
        self.hasher = PrefixHasher(config.block_size)

    # ----- workers (discovery) ----------------------------------------------------------------

    def add_worker(self, worker: int, total_blocks: int | None = None) -> None:
        """A worker (key from ``worker_key``) joined; ``total_blocks`` from its model card if known."""
        if total_blocks:
            self.total_blocks[worker] = total_blocks

    def remove_worker(self, worker: int) -> None:
        """A worker left: forget its cache, its capacity and the requests routed to it."""
        self.index.remove_worker(worker)
        self.sequences.remove_worker(worker)
        self.total_blocks.pop(worker, None)

    def remove_instance(self, instance_id: int) -> None:
        """An instance left: ``remove_worker`` for each of its data-parallel ranks."""
        keys = {*self.index.workers(), *self.sequences.workers(), *self.total_blocks}
        for key in keys:
            if split_worker_key(key)[0] == instance_id:
                self.remove_worker(key)

    # ----- event plane ------------------------------------------------------------------------

    def on_kv_events(self, batch: KvEventBatch) -> None:
        """Apply a worker's KV events (ignored with ``use_kv_events=False``)."""
        if isinstance(self.index, KvIndexer):
            self.index.apply(batch)

    def resync(self, snapshot: KvEventBatch) -> None:
        """Replace a worker's cache view with the snapshot it sent after a ``ResyncRequest``."""
        if isinstance(self.index, KvIndexer):
            self.index.resync(snapshot)

    def on_load_metrics(self, metrics: LoadMetrics) -> None:
        """Take a worker's KV capacity from its load report, and check the index has every KV event
        the report says the worker sent."""
        key = worker_key(metrics.worker_id, metrics.dp_rank)
        if metrics.kv_total_blocks > 0:
            self.total_blocks[key] = metrics.kv_total_blocks
        if metrics.kv_last_event_id is not None and isinstance(self.index, KvIndexer):
            self.index.note_sent(key, metrics.kv_last_event_id)

    def apply_sync_event(self, event: RouterSyncEvent) -> None:
        """Apply a load update published by another router replica."""
        self.sequences.apply_sync(event)

    # ----- requests ---------------------------------------------------------------------------

    def find_overlap(self, token_ids: Sequence[int], lora_name: str | None = None) -> OverlapScores:
        """Per worker, leading blocks of this prompt it caches (no decision is recorded)."""
        return self.index.find_matches_sequence(self.hasher.sequence_hashes(token_ids, lora_name))

    def select(
        self,
        token_ids: Sequence[int],
        request_id: str,
        candidates: Sequence[int],
        pinned: int | None = None,
        lora_name: str | None = None,
    ) -> Selection:
        """Choose a worker among ``candidates`` (worker keys) and record the request on it.

        ``pinned`` forces the worker (still refused when busy). Raises ``NoWorkers`` or
        ``AllWorkersBusy``; nothing is recorded then.
        """
        seq = self.hasher.sequence_hashes(token_ids, lora_name)
        overlaps = self.index.find_matches_sequence(seq).scores
        try:
            selection = self.selector.select(
                candidates, len(token_ids), overlaps, self.sequences, self.total_blocks, pinned, seq
            )
        except AllWorkersBusy:
            self.counters.all_busy += 1
            raise
        self.sequences.add_request(
            request_id, selection.worker, len(token_ids), selection.overlap_blocks, seq
        )
        if isinstance(self.index, ApproxKvIndexer):
            self.index.record_routed(selection.worker, seq)
        counters = self.counters
        counters.decisions += 1
        counters.prompt_blocks += len(seq)
        counters.overlap_blocks += selection.overlap_blocks
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("request %s routed to %s", request_id, describe(selection))
        return selection

    def on_first_token(self, request_id: str) -> None:
        """The request's first token arrived: its prefill is done."""
        self.sequences.mark_prefill_completed(request_id)

    def on_finished(self, request_id: str) -> None:
        """The request completed, failed or was cancelled: release its predicted load."""
        self.sequences.free(request_id)
