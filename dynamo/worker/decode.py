"""The decode-side disaggregation step every worker that can continue a prefill worker's KV runs.

Journey: request plane -> worker handler -> **``DecodeStep.generate``** -> engine -> tokens back.
A request arrives in one of three shapes: with a prefill worker's ``kv_transfer_params``
(prefill_first: the engine pulls the KV and continues), with ``remote_prefill`` naming a prefill
worker (decode_first: this step runs the prefill there first), or with neither (the frontend chose
a local prefill, or the graph has no prefill workers: the engine prefills). An engine whose decode
workers cannot prefill (``decode_can_prefill = False``, SGLang) gets a live prefill worker picked
here for the third shape, or an error chunk that says none is live.

A disaggregation failure never fails the request: when the prefill worker is unreachable, errs or
is slower than ``DYN_PREFILL_TIMEOUT``, when the engine ends the request with an error before its
first token (vLLM after a failed NIXL handshake or read), or when no first token comes within
``DYN_KV_TRANSFER_TIMEOUT`` of a transfer starting, the request is prefilled locally. The reason
is logged with the request id, counted in ``dynamo_worker_disagg_fallback{reason}`` and reported
on the first chunk (``EngineOutput.disagg_fallback``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Callable
from typing import Any

import msgspec
from prometheus_client import CollectorRegistry, Counter

from dynamo.llm.disagg import (
    TRANSFER_FAILED,
    TRANSFER_TIMEOUT,
    DisaggTimeouts,
    PrefillFailed,
    run_remote_prefill,
)
from dynamo.llm.protocols import FINISH_ERROR, EngineOutput, PreprocessedRequest, RemotePrefill
from dynamo.runtime.request_plane import RequestPlaneClient
from dynamo.runtime.runtime import handler_name

log = logging.getLogger(__name__)

GenerateFn = Callable[[PreprocessedRequest], AsyncGenerator[EngineOutput, None]]
# The next live prefill worker to call (SGLang decode workers), or None when none is live.
PrefillPicker = Callable[[], RemotePrefill | None]


class DecodeStep:
    """Remote prefill (decode_first), KV pull with a bounded wait, local fallback, around ``engine``."""

    def __init__(
        self,
        engine: GenerateFn,
        client: RequestPlaneClient,
        registry: CollectorRegistry,
        *,
        timeouts: DisaggTimeouts,
        pick_prefill: PrefillPicker | None = None,
    ) -> None:
        self.engine = engine
        self.client = client
        self.timeouts = timeouts  # the worker's, read and checked with its flags
        self.pick_prefill = pick_prefill
        self.fallbacks = Counter(
            "dynamo_worker_disagg_fallback",
            "disaggregated requests this decode worker prefilled locally instead, by reason",
            ["reason"],
            registry=registry,
        )
        self.transfers = Counter(
            "dynamo_worker_disagg_transfers",
            "requests this decode worker continued from a prefill worker's KV",
            registry=registry,
        )
        self.picked = 0  # requests this worker found a prefill worker for itself

    def generate(self, req: PreprocessedRequest) -> AsyncGenerator[EngineOutput, None]:
        """The request's outputs; a plain request on an engine that can prefill goes straight through."""
        if req.kv_transfer_params is None and req.remote_prefill is None:
            if self.pick_prefill is None:
                return self.engine(req)
            return self._picked(req)
        return self._disaggregated(req)

    async def _picked(self, req: PreprocessedRequest) -> AsyncGenerator[EngineOutput, None]:
        assert self.pick_prefill is not None
        target = self.pick_prefill()
        if target is None:
            log.warning("request %s: no prefill worker is live for this decode worker", req.request_id)
            yield EngineOutput(
                finish_reason=FINISH_ERROR,
                error="no live prefill worker, and this engine cannot prefill on a decode worker",
            )
            return
        self.picked += 1
        log.debug("request %s: prefill on %s (picked by the decode worker)", req.request_id, target.address)
        async with contextlib.aclosing(
            self._disaggregated(msgspec.structs.replace(req, remote_prefill=target))
        ) as out:
            async for chunk in out:
                yield chunk

    async def _disaggregated(self, req: PreprocessedRequest) -> AsyncGenerator[EngineOutput, None]:
        rid = req.request_id
        reason: str | None = None
        params = req.kv_transfer_params
        if req.remote_prefill is not None:
            target = req.remote_prefill
            try:
                result = await run_remote_prefill(
                    self.client, target.address, target.handler, req, self.timeouts.prefill_s
                )
                params = result.kv_transfer_params
                log.debug(
                    "request %s: remote prefill at %s done in %.3f s", rid, target.address, result.seconds
                )
            except PrefillFailed as exc:
                reason = exc.reason
                log.warning("request %s: remote prefill failed (%s); prefilling locally", rid, exc)
                params = None
        if params:
            transfer = msgspec.structs.replace(req, kv_transfer_params=params, remote_prefill=None)
            async with contextlib.aclosing(self.engine(transfer)) as outputs:
                first: EngineOutput | None = None
                try:
                    async with asyncio.timeout(self.timeouts.transfer_s):
                        first = await anext(outputs)
                except TimeoutError:
                    reason = TRANSFER_TIMEOUT
                    log.warning(
                        "request %s: no first token within %g s of the KV transfer starting; prefilling locally",
                        rid,
                        self.timeouts.transfer_s,
                    )
                except StopAsyncIteration:
                    reason = TRANSFER_FAILED
                    log.warning(
                        "request %s: the engine ended the transfer without output; prefilling locally", rid
                    )
                if first is not None:
                    if first.finish_reason == FINISH_ERROR and not first.token_ids:
                        reason = TRANSFER_FAILED
                        log.warning(
                            "request %s: the KV transfer failed (%s); prefilling locally",
                            rid,
                            first.error or "the engine could not load the prefill worker's KV",
                        )
                    else:
                        self.transfers.inc()
                        yield first
                        async for out in outputs:
                            yield out
                        return
        if reason is not None:
            self.fallbacks.labels(reason).inc()
        local = msgspec.structs.replace(req, kv_transfer_params=None, remote_prefill=None)
        first_chunk = True
        async with contextlib.aclosing(self.engine(local)) as outputs:
            async for out in outputs:
                if first_chunk and reason is not None:
                    out.disagg_fallback = reason
                first_chunk = False
                yield out


class PrefillPool:
    """Round robin over the live prefill workers of a graph, for decode workers that pick their own."""

    def __init__(self, instances: Callable[[], dict[int, Any]]) -> None:
        self._instances = instances
        self._turn = 0

    def pick(self) -> RemotePrefill | None:
        """The next live prefill worker; None when there is none."""
        instances = self._instances()
        if not instances:
            return None
        ids = sorted(instances)
        record = instances[ids[self._turn % len(ids)]]
        self._turn += 1
        return RemotePrefill(address=record.address, handler=handler_name(record.endpoint_id))
