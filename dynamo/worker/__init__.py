"""The engine-worker framework: one base (``WorkerEngine``), one entry (``run_worker``).

An engine package is its flags (composed with ``add_worker_args``), a ``WorkerEngine`` adapter and
its request/output mapping; see docs/architecture.md, "Add an engine".
"""

from dynamo.worker.args import DisaggregationMode, WorkerArgs, add_worker_args, worker_args_from
from dynamo.worker.engine import (
    EngineConfig,
    EngineContext,
    EngineFacts,
    EngineNotInstalledError,
    EngineStartError,
    KvEventSink,
    WorkerEngine,
)
from dynamo.worker.run import run_worker, serve

__all__ = [
    "DisaggregationMode",
    "EngineConfig",
    "EngineContext",
    "EngineFacts",
    "EngineNotInstalledError",
    "EngineStartError",
    "KvEventSink",
    "WorkerArgs",
    "WorkerEngine",
    "add_worker_args",
    "run_worker",
    "serve",
    "worker_args_from",
]
