"""vLLM's NixlConnector, keeping each engine's compute on the cores Dynamo bound it to (CPU build),
and NIXL's agents with a progress thread that sleeps until UCX has work.

Journey: loaded once inside vLLM's worker process when a prefill or decode engine starts; it moves
the KV between engines (prefill -> decode) for the rest of the engine's life.

On the CPU platform vLLM's NIXL worker "reserves" the last core of each NUMA node for KV loads by
moving the thread that creates it there -- and that thread is the engine's OpenMP master thread,
which does the model's compute. With one engine per core (``dynamo.vllm.cpu``) every prefill and
decode engine then computes on that same last core, whatever ``--cpu-core`` said: measured here,
a 1200-token prefill took ~40 s instead of ~4 s. This subclass puts the thread back on its cores
after vLLM's constructor; everything else is vLLM's pull-mode ``NixlConnector``. The worker selects
it with ``kv_connector_module_path`` under vLLM's own name ``NixlConnector``, so vLLM's checks for
that name still apply (``dynamo.vllm.args.default_kv_transfer_config``).

NIXL's agents keep their UCX progress thread, waiting for events instead of spinning
(``dynamo.vllm.nixl_agent``: why it cannot simply be turned off).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from vllm.distributed.kv_transfer.kv_connector.v1.nixl import NixlPullConnector
from vllm.distributed.kv_transfer.kv_connector.v1.nixl import base_worker as _nixl_worker

from dynamo.vllm.nixl_agent import new_nixl_agent

# Under "vllm." so that vLLM's logging setup in its worker process prints it.
logger = logging.getLogger(f"vllm.{__name__}")

MODULE_PATH = __name__

if getattr(_nixl_worker, "NixlWrapper", None) is not None:
    _nixl_worker.NixlWrapper = new_nixl_agent


class NixlConnector(NixlPullConnector):
    """``NixlPullConnector`` that leaves the creating thread's CPU affinity as it found it."""

    def __init__(self, vllm_config: Any, role: Any, kv_cache_config: Any = None) -> None:
        cores = os.sched_getaffinity(0)
        super().__init__(vllm_config, role, kv_cache_config)
        moved = os.sched_getaffinity(0)
        if moved != cores:
            os.sched_setaffinity(0, cores)
            logger.info(
                "NIXL connector moved the engine thread to cores %s; restored its cores %s",
                sorted(moved),
                sorted(cores),
            )
