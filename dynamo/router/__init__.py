"""Request routing: pick the worker for each request (journey: preprocess -> **route** -> request plane).

The KV-cache-aware router's core lives here as plain, network-free modules: ``indexer`` (which
worker caches which blocks, from KV events), ``approx`` (the same without events), ``sequences``
(predicted load), ``selector`` (the cost function), ``kv_router`` (all of it behind one object).
"""

from dynamo.router.indexer import KvIndexer, ResyncRequest
from dynamo.router.kv_router import KvRouter, KvRouterConfig, RouterCounters
from dynamo.router.overlap import OverlapScores
from dynamo.router.selector import AllWorkersBusy, NoWorkers, RoutingError, Selection
from dynamo.router.worker_key import split_worker_key, worker_key

__all__ = [
    "AllWorkersBusy",
    "KvIndexer",
    "KvRouter",
    "KvRouterConfig",
    "NoWorkers",
    "OverlapScores",
    "ResyncRequest",
    "RouterCounters",
    "RoutingError",
    "Selection",
    "split_worker_key",
    "worker_key",
]
