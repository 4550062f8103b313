"""Disaggregation on an SGLang decode worker: every request gets a prefill worker.

Journey: request plane -> **``SglangDecodeEngine``** -> ``DisaggDecodeEngine`` (remote prefill,
KV pull, fallback; ``dynamo.llm.disagg``) -> ``SglangEngine`` in decode mode -> tokens back.

The frontend sends a decode worker one of three shapes: with a prefill worker's bootstrap
parameters (prefill_first), with ``REMOTE_PREFILL_KEY`` naming a prefill worker (decode_first), or
with neither -- it chose to prefill on the decode worker (a short prompt, busy prefill workers).
vLLM and TRT-LLM decode workers can do that; SGLang cannot, so for the third shape this wrapper
picks a live prefill worker itself (round robin over ``dyn://<namespace>.prefill.generate``) and
turns the request into the decode_first shape. With no prefill worker live the request ends with
an error chunk that says so.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import msgspec

from dynamo.llm.disagg import REMOTE_PREFILL_KEY, DisaggDecodeEngine
from dynamo.llm.kv_events import LoadMetrics
from dynamo.llm.protocols import FINISH_ERROR, EngineOutput, PreprocessedRequest
from dynamo.runtime import DistributedRuntime, EndpointClient, EndpointId
from dynamo.runtime.runtime import handler_name
from dynamo.sglang.request import Bootstrap

log = logging.getLogger(__name__)


class SglangDecodeEngine:
    """Serves in place of the decode worker's ``DisaggDecodeEngine`` (``inner``); everything but
    ``generate``, ``start`` and ``stop`` is the inner engine's."""

    def __init__(
        self, inner: DisaggDecodeEngine, runtime: DistributedRuntime, prefill_endpoint: EndpointId
    ) -> None:
        self.inner = inner
        self.runtime = runtime
        self.prefill_endpoint = prefill_endpoint
        self._prefill: EndpointClient | None = None
        self._turn = 0
        self.picked = 0  # requests this worker found a prefill worker for

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def start(self) -> None:
        await self.inner.start()
        self._prefill = await self.runtime.endpoint_client(self.prefill_endpoint)

    async def stop(self) -> None:
        if self._prefill is not None:
            await self._prefill.close()
            self._prefill = None
        await self.inner.stop()

    def load_metrics(self) -> LoadMetrics:
        return self.inner.load_metrics()

    def pick_prefill_worker(self) -> dict[str, Any] | None:
        """The next live prefill worker, as a ``REMOTE_PREFILL_KEY`` target; None if there is none."""
        instances = self._prefill.instances if self._prefill is not None else {}
        if not instances:
            return None
        ids = sorted(instances)
        record = instances[ids[self._turn % len(ids)]]
        self._turn += 1
        return {"address": record.address, "handler": handler_name(record.endpoint_id)}

    async def generate(self, req: PreprocessedRequest) -> AsyncIterator[EngineOutput]:
        params = req.kv_transfer_params or {}
        if Bootstrap.from_params(params) is None and REMOTE_PREFILL_KEY not in params:
            target = self.pick_prefill_worker()
            if target is None:
                log.warning(
                    "request %s: no prefill worker is live for this SGLang decode worker", req.request_id
                )
                yield EngineOutput(
                    finish_reason=FINISH_ERROR,
                    error=f"no live prefill worker at {self.prefill_endpoint}, and SGLang cannot prefill "
                    "on a decode worker",
                )
                return
            self.picked += 1
            log.debug(
                "request %s: prefill on %s (picked by the decode worker)", req.request_id, target["address"]
            )
            req = msgspec.structs.replace(req, kv_transfer_params={REMOTE_PREFILL_KEY: target})
        async with contextlib.aclosing(self.inner.generate(req)) as outputs:
            async for out in outputs:
                yield out
