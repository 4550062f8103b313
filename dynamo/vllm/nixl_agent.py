"""NIXL agents whose UCX progress thread sleeps until UCX has work, for vLLM's NIXL connector.

Journey: called when a prefill or decode engine's KV connector starts (``dynamo.vllm.nixl_connector``
makes vLLM create its agent here); the agent then moves the KV of every disaggregated request.

NIXL's Python API starts the UCX progress thread with no wait between polls, so an idle engine
keeps a core busy. The thread cannot simply be turned off: a READ that carries a completion
notification (vLLM's pull connector sends one with every read) stays in progress until the
*remote* agent progresses UCX, and a prefill engine only calls into NIXL on its own steps (none
while it is idle), so decode-side transfers waited for the prefill's next request -- tens of
seconds -- and hit the decode worker's fallback. Here the thread stays, blocked in ``poll()`` on
UCX's event descriptor: ``DYN_NIXL_PROGRESS_DELAY_MS`` (default 10) is its longest sleep without an
event, ``off`` removes the thread.

The thread and the engine thread that posts a READ share the engine's pinned core, and both take
the UCX worker's lock: UCX's default spinlock makes whichever waits spin through its time slice
while the holder, preempted, cannot finish the copy (a post took twice its CPU time). With the
thread on, ``UCX_USE_MT_MUTEX=y`` is the default (a value already set wins): the waiter sleeps.
Measurements: ``benchmarks/results/disagg_bandwidth.md``.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

# Under "vllm." so that vLLM's logging setup in its worker process prints it.
logger = logging.getLogger(f"vllm.{__name__}")

PROGRESS_DELAY_ENV = "DYN_NIXL_PROGRESS_DELAY_MS"
UCX_MUTEX_ENV = "UCX_USE_MT_MUTEX"
_BINDINGS_LOCK = threading.Lock()
DEFAULT_PROGRESS_DELAY_MS = 10


def progress_delay_ms() -> int | None:
    """The progress thread's longest sleep between UCX events in ms; None: no thread (``off``)."""
    raw = os.environ.get(PROGRESS_DELAY_ENV, "").strip().lower()
    if not raw:
        return DEFAULT_PROGRESS_DELAY_MS
    if raw in ("off", "none", "disabled"):
        return None
    try:
        value = int(raw)
    except ValueError:
        logger.warning("ignoring %s=%r: not an integer or 'off'", PROGRESS_DELAY_ENV, raw)
        return DEFAULT_PROGRESS_DELAY_MS
    return max(0, value)


def new_nixl_agent(name: str, config: Any = None) -> Any:
    """A NIXL agent whose UCX progress thread waits for events instead of spinning.

    Stands in for vLLM's ``NixlWrapper`` (``nixl._api.nixl_agent``). That constructor hard-codes a
    zero poll delay into the C++ agent config it builds; the binding module it builds it with is
    swapped, for the duration of the call, for one that sets ``pthrDelay`` (microseconds) first.
    With the thread on, this process's UCX gets ``UCX_USE_MT_MUTEX=y`` unless it is already set.
    """
    from nixl import _api as nixl_api

    delay_ms = progress_delay_ms()
    if delay_ms is not None and UCX_MUTEX_ENV not in os.environ:
        # Read by UCX when the agent's UCX backend is created, below.
        os.environ[UCX_MUTEX_ENV] = "y"
        logger.info("NIXL progress thread on: %s=y (UCX waits on a mutex, not a spinlock)", UCX_MUTEX_ENV)
    if config is None:
        config = nixl_api.nixl_agent_config()
    if hasattr(config, "enable_pthread"):
        config.enable_pthread = delay_ms is not None
    bindings: Any = getattr(nixl_api, "nixlBind", None)
    if delay_ms is None or not hasattr(bindings, "nixlAgent"):
        if delay_ms is not None:
            logger.warning("NIXL's API changed: its progress thread polls without a delay")
        return nixl_api.nixl_agent(name, config)
    delay_us = delay_ms * 1000

    class _Bindings:
        def __getattr__(self, attr: str) -> Any:
            return getattr(bindings, attr)

        @staticmethod
        def nixlAgent(agent_name: str, agent_config: Any) -> Any:
            agent_config.pthrDelay = delay_us
            return bindings.nixlAgent(agent_name, agent_config)

    with _BINDINGS_LOCK:
        nixl_api.nixlBind = _Bindings()
        try:
            return nixl_api.nixl_agent(name, config)
        finally:
            nixl_api.nixlBind = bindings
