"""One request's stream from the workers, kept whole across failures.

Journey: route -> **open a stream on the instance the pool's routing policy chose (skip unreachable
ones), read engine outputs in batches, resume on another instance if the stream breaks
(migration)** -> stream | collect.

Failover before the first output is always safe (nothing reached the client). After that, a broken
stream is *migrated* when the migration limit allows: the tokens already produced are appended to
the prompt, ``max_tokens`` is reduced by as many, and a new stream continues on another instance;
the client sees one continuous stream. The policy hears of each placement: ``on_first_token`` at
the first output of every instance the request lands on, ``on_finished`` when it leaves one (done,
failed, cancelled or migrated), so a KV router's predicted load follows the request.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Callable
from typing import Any

import msgspec

from dynamo.frontend.models import ServedModel
from dynamo.frontend.routing import AllWorkersBusy, NoWorkers
from dynamo.llm.errors import service_unavailable, too_many_requests
from dynamo.llm.protocols import PreprocessedRequest
from dynamo.llm.token_ids import as_token_ids
from dynamo.runtime import InstanceUnreachable, RemoteError, StreamBroken
from dynamo.runtime.request_plane import RequestPlaneClient
from dynamo.runtime.runtime import handler_name

log = logging.getLogger(__name__)


class Generation:
    """One request's journey through workers; iterate ``batches()`` for lists of raw outputs."""

    def __init__(
        self,
        client: RequestPlaneClient,
        model: ServedModel,
        request: PreprocessedRequest,
        *,
        pinned: int | None = None,
        migration_limit: int = 0,
        on_migration: Callable[[str], None] | None = None,
    ) -> None:
        self.client = client
        self.model = model
        self.request = request
        self.pinned = pinned
        self.migrations_left = migration_limit
        self.on_migration = on_migration
        self.instance_id: int | None = None
        self.overlap_blocks = 0
        self.produced: list[int] = []

    async def batches(self) -> AsyncGenerator[list[dict[str, Any]], None]:
        """Batches of engine outputs (msgpack-decoded ``EngineOutput`` maps) until the last."""
        router = self.model.router
        request = self.request
        rid = request.request_id
        tried: set[int] = set()
        while True:
            stream = await self._open(request, tried)
            received = False  # on this instance
            try:
                while True:
                    batch = stream.drain_ready()
                    if not batch:
                        try:
                            item = await stream.__anext__()
                        except StopAsyncIteration:
                            return
                        batch = [item, *stream.drain_ready()]
                    if not received:
                        # This instance's prefill is done (after a migration too: the continuation
                        # prefilled the prompt and the tokens produced so far where it landed).
                        received = True
                        router.on_first_token(rid)
                    for out in batch:
                        ids = out.get("token_ids")
                        if ids:
                            self.produced.extend(ids)
                    yield batch
                    if batch[-1].get("finish_reason") is not None:
                        return
            except RemoteError as exc:
                if exc.retryable and not received and not self.produced:
                    log.info(
                        "instance %x refused request %s (%s); trying another", self.instance_id, rid, exc.code
                    )
                    tried.add(self.instance_id or 0)
                    router.on_finished(rid)
                    continue
                raise service_unavailable(f"worker error: {exc}") from exc
            except StreamBroken as exc:
                if self.migrations_left <= 0:
                    raise service_unavailable(f"the worker serving this request failed: {exc}") from exc
                self.migrations_left -= 1
                tried.add(self.instance_id or 0)
                router.on_finished(rid)
                if self.on_migration is not None:
                    self.on_migration("stream_broken")
                request = self._continuation()
                log.warning(
                    "request %s: stream from instance %x broke (%s); migrating with %d tokens produced",
                    rid,
                    self.instance_id,
                    exc,
                    len(self.produced),
                )
            finally:
                if not stream.finished:
                    await stream.aclose()
                router.on_finished(rid)

    def _continuation(self) -> PreprocessedRequest:
        stop = self.request.stop
        max_tokens = None if stop.max_tokens is None else max(1, stop.max_tokens - len(self.produced))
        min_tokens = max(0, stop.min_tokens - len(self.produced))
        # A continuation prefills its tokens where it lands: transferred KV (disaggregation) was the
        # first worker's, and a remote prefill named for it (decode_first) covered the prompt only.
        return msgspec.structs.replace(
            self.request,
            token_ids=self.request.token_ids + as_token_ids(self.produced),
            stop=msgspec.structs.replace(stop, max_tokens=max_tokens, min_tokens=min_tokens),
            kv_transfer_params=None,
            remote_prefill=None,
        )

    async def _open(self, request: PreprocessedRequest, tried: set[int]):  # type: ignore[no-untyped-def]
        router = self.model.router
        while True:
            try:
                choice = router.select(
                    request.token_ids, request.request_id, exclude=tried, pinned=self.pinned
                )
            except NoWorkers:
                if self.pinned is not None:
                    raise service_unavailable(
                        f"instance {self.pinned:x} (nvext.backend_instance_id) is not a live worker of "
                        f"model '{self.model.name}'"
                    ) from None
                if tried:
                    raise service_unavailable(
                        f"no reachable worker serves model '{self.model.name}'"
                    ) from None
                raise service_unavailable(f"no worker serves model '{self.model.name}' right now") from None
            except AllWorkersBusy:
                raise too_many_requests("every worker of this model is busy; retry shortly") from None
            record = self.model.records.get(choice.instance_id)
            if record is None:
                tried.add(choice.instance_id)
                router.on_finished(request.request_id)
                continue
            self.instance_id = choice.instance_id
            self.overlap_blocks = choice.overlap_blocks
            try:
                return await self.client.stream(
                    record.address,
                    handler_name(record.endpoint_id),
                    request,
                    {"request_id": request.request_id},
                )
            except InstanceUnreachable as exc:
                log.warning("instance %x unreachable (%s); trying another", choice.instance_id, exc)
                router.mark_unreachable(choice.instance_id)
                router.on_finished(request.request_id)
                tried.add(choice.instance_id)
                if self.pinned is not None:
                    raise service_unavailable(f"pinned instance {self.pinned:x} is unreachable") from exc
