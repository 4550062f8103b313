"""The router's own prediction of each worker's load: active KV blocks and queued prefill tokens.

Journey: route -> ``add_request`` when a request is sent to a worker; first token back ->
``mark_prefill_completed``; stream ends or is cancelled -> ``free``. The selector reads
``active_blocks`` and ``prefill_tokens`` per worker. The prediction is immediate, unlike engine load
reports that lag by a reporting period, so a burst of requests spreads out instead of piling onto
the worker that looked idle a second ago.

Requests sharing a prompt prefix on the same worker share its KV blocks: blocks are reference
counted by the prompt's chained sequence hashes, so a shared block counts once. The partial last
block (and any prompt given without hashes) counts as private to its request.

Replica sync: with a ``publish`` callback every local change is also emitted as a ``RouterSyncEvent``
(``dynamo.router.sync_events``); another replica applies it with ``apply_sync``. Remote requests are
kept apart from local ones by their router id, so the same request id on two replicas never
collides. All operations are O(1) except ``add_request``/``free``, O(prompt blocks).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from dynamo.router.sync_events import RouterSyncEvent, SyncAddRequest, SyncFree, SyncPrefillDone
from dynamo.router.worker_key import format_worker_key, split_worker_key

logger = logging.getLogger(__name__)

RequestKey = str | tuple[int, str]  # a local request id, or (router id, request id) of a replica's


class _Request:
    __slots__ = ("hashes", "prefill_tokens", "private_blocks", "started", "worker")

    def __init__(
        self, worker: int, hashes: list[int], private_blocks: int, prefill_tokens: int, started: float
    ) -> None:
        self.worker = worker
        self.hashes = hashes
        self.private_blocks = private_blocks
        self.prefill_tokens = prefill_tokens  # 0 once prefill is done
        self.started = started


class _WorkerLoad:
    __slots__ = ("block_refs", "prefill_tokens", "private_blocks", "requests")

    def __init__(self) -> None:
        self.block_refs: dict[int, int] = {}  # sequence hash -> active requests using the block
        self.private_blocks = 0
        self.prefill_tokens = 0
        self.requests = 0


class ActiveSequences:
    """Per-worker active blocks and pending prefill tokens of the requests this router (and its
    replicas) sent.
    """

    def __init__(
        self,
        block_size: int,
        *,
        router_id: int = 0,
        publish: Callable[[RouterSyncEvent], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if block_size <= 0:
            raise ValueError("block_size must be positive")
        self.block_size = block_size
        self.router_id = router_id
        self._publish = publish
        self._clock = clock
        self._requests: dict[RequestKey, _Request] = {}
        self._workers: dict[int, _WorkerLoad] = {}

    # ----- reads (the selector's view) --------------------------------------------------------

    def active_blocks(self, worker: int) -> int:
        """KV blocks the worker's active requests occupy (shared prefix blocks counted once)."""
        load = self._workers.get(worker)
        return len(load.block_refs) + load.private_blocks if load is not None else 0

    def prefill_tokens(self, worker: int) -> int:
        """Prompt tokens routed to the worker whose prefill has not finished yet."""
        load = self._workers.get(worker)
        return load.prefill_tokens if load is not None else 0

    def new_blocks(self, worker: int, sequence_hashes: Sequence[int]) -> int:
        """How many of these blocks (a prompt's chained sequence hashes) the worker's active requests
        do not hold. Every request holds its whole prefix, so the held ones are a leading run:
        O(held blocks + 1)."""
        load = self._workers.get(worker)
        if load is None or not load.block_refs:
            return len(sequence_hashes)
        refs = load.block_refs
        held = 0
        for h in sequence_hashes:
            if h not in refs:
                break
            held += 1
        return len(sequence_hashes) - held

    def active_requests(self, worker: int) -> int:
        """Requests routed to the worker and not yet freed."""
        load = self._workers.get(worker)
        return load.requests if load is not None else 0

    def worker_of(self, request_id: str) -> int | None:
        """The worker a local request was routed to, if it is still active."""
        request = self._requests.get(request_id)
        return request.worker if request is not None else None

    def workers(self) -> list[int]:
        """Keys of the workers that have had requests routed to them."""
        return list(self._workers)

    def __len__(self) -> int:
        return len(self._requests)

    # ----- local lifecycle --------------------------------------------------------------------

    def add_request(
        self,
        request_id: str,
        worker: int,
        token_count: int,
        overlap_blocks: int,
        sequence_hashes: Sequence[int] = (),
    ) -> None:
        """Account a request just routed to ``worker``.

        ``token_count`` is the prompt length; ``overlap_blocks`` how many leading blocks the worker
        already caches (they need no prefill); ``sequence_hashes`` the prompt's full blocks as
        chained hashes, which lets requests with a common prefix share blocks. A request id that is
        still active is re-routed: its old placement is freed first.
        """
        if request_id in self._requests:
            logger.debug("request %s re-routed; freeing its previous placement", request_id)
            self.free(request_id)
        hashes = list(sequence_hashes)
        bs = self.block_size
        private_blocks = max(0, -(-token_count // bs) - len(hashes))
        prefill_tokens = max(0, token_count - overlap_blocks * bs)
        self._add(request_id, worker, hashes, private_blocks, prefill_tokens)
        if self._publish is not None:
            worker_id, dp_rank = split_worker_key(worker)
            self._publish(
                SyncAddRequest(
                    self.router_id, request_id, worker_id, dp_rank, hashes, private_blocks, prefill_tokens
                )
            )

    def mark_prefill_completed(self, request_id: str) -> None:
        """The request's first token arrived: its prompt no longer waits for prefill."""
        if self._prefill_done(request_id) and self._publish is not None:
            self._publish(SyncPrefillDone(self.router_id, request_id))

    def free(self, request_id: str) -> None:
        """The request completed or was cancelled: release its blocks and any pending prefill."""
        if self._free(request_id) and self._publish is not None:
            self._publish(SyncFree(self.router_id, request_id))

    # ----- replicas -------------------------------------------------------------------------

    def apply_sync(self, event: RouterSyncEvent) -> None:
        """Apply another replica's update; this router's own events (echoes) are ignored."""
        if event.router_id == self.router_id:
            return
        key = (event.router_id, event.request_id)
        if isinstance(event, SyncAddRequest):
            if key in self._requests:
                self._free(key)
            self._add(key, event.worker, event.sequence_hashes, event.private_blocks, event.prefill_tokens)
        elif isinstance(event, SyncPrefillDone):
            self._prefill_done(key)
        else:
            self._free(key)

    def drop_replica(self, router_id: int) -> int:
        """Free every request a (departed) replica added; returns how many."""
        keys = [k for k in self._requests if isinstance(k, tuple) and k[0] == router_id]
        for key in keys:
            self._free(key)
        return len(keys)

    # ----- housekeeping ---------------------------------------------------------------------

    def remove_worker(self, worker: int) -> list[RequestKey]:
        """Drop a departed worker and every request on it; returns the dropped request keys."""
        keys = [k for k, r in self._requests.items() if r.worker == worker]
        for key in keys:
            del self._requests[key]
        self._workers.pop(worker, None)
        return keys

    def free_stale(self, max_age_s: float) -> list[RequestKey]:
        """Free requests older than ``max_age_s`` (lost completions); returns their keys."""
        cutoff = self._clock() - max_age_s
        keys = [k for k, r in self._requests.items() if r.started < cutoff]
        for key in keys:
            logger.warning("freeing stale request %s (older than %.0f s)", key, max_age_s)
            self._free(key)
        return keys

    # ----- internals ------------------------------------------------------------------------

    def _add(
        self, key: RequestKey, worker: int, hashes: list[int], private_blocks: int, prefill_tokens: int
    ) -> None:
        load = self._workers.get(worker)
        if load is None:
            load = self._workers[worker] = _WorkerLoad()
        refs = load.block_refs
        for h in hashes:
            refs[h] = refs.get(h, 0) + 1
        load.private_blocks += private_blocks
        load.prefill_tokens += prefill_tokens
        load.requests += 1
        self._requests[key] = _Request(worker, hashes, private_blocks, prefill_tokens, self._clock())
        logger.debug(
            "request %s on worker %s: %d blocks, %d prefill tokens",
            key,
            format_worker_key(worker),
            len(hashes) + private_blocks,
            prefill_tokens,
        )

    def _prefill_done(self, key: RequestKey) -> bool:
        request = self._requests.get(key)
        if request is None:
            return False
        if request.prefill_tokens:
            load = self._workers.get(request.worker)
            if load is not None:
                load.prefill_tokens -= request.prefill_tokens
            request.prefill_tokens = 0
        return True

    def _free(self, key: RequestKey) -> bool:
        request = self._requests.pop(key, None)
        if request is None:
            return False
        load = self._workers.get(request.worker)
        if load is None:
            return True
        refs = load.block_refs
        for h in request.hashes:
            count = refs.get(h, 0)
            if count > 1:
                refs[h] = count - 1
            else:
                refs.pop(h, None)
        load.private_blocks -= request.private_blocks
        load.prefill_tokens -= request.prefill_tokens
        load.requests -= 1
        return True
