"""``POST /v1/responses`` on the chat path's stages, and ``GET`` / ``DELETE /v1/responses/{id}``.

Journey: HTTP -> parse (``dynamo.llm.openai_responses``; 413, 400) -> admit (a chat model; 404,
503, 429) -> the stored conversation of ``previous_response_id`` (``conversations``; 404) ->
translate into a chat completion request -> preprocess (400s name the Responses field) -> route
(503, 429) -> the choice's deltas (``dynamo.frontend.choices``) -> output items and events
(``output``) -> the Response object, or server-sent events ``event: <type>`` / ``data: <json>``
ending with ``response.completed`` (``response.incomplete`` at ``max_output_tokens``, ``error`` +
``response.failed`` on a failure midway) -> stored (``store``, default true) before the last event
goes out, so a follow-up sent the moment it arrives finds it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from dynamo.frontend.choices import ChoiceDelta, ChoiceStream
from dynamo.frontend.disconnect import ClientGone, DisconnectWatch
from dynamo.frontend.endpoints import CHAT
from dynamo.frontend.metrics import RequestMetrics
from dynamo.frontend.models import ServedModel
from dynamo.frontend.off_loop import maybe_off_loop
from dynamo.frontend.responses import error_response
from dynamo.frontend.responses_api.conversations import ResponseStore, StoredResponse
from dynamo.frontend.responses_api.output import Event, OutputBuilder, new_id, response_object
from dynamo.frontend.service import FrontendService
from dynamo.frontend.sse import SSEResponse
from dynamo.frontend.stages.parse import LARGE_BODY, read_body
from dynamo.frontend.stages.preprocess import admit, preprocess
from dynamo.frontend.stages.route import Routed, route
from dynamo.llm.errors import RequestError, internal_error, service_unavailable
from dynamo.llm.openai_responses import (
    ResponsesRequest,
    chat_request,
    input_messages,
    parse_responses_request,
    previous_response_not_found,
    response_not_found,
    to_responses_error,
)

log = logging.getLogger(__name__)

LABEL = "responses"  # the endpoint label of dynamo_frontend_requests
CHAT_MODEL = "chat"  # the card model type /v1/responses needs

_json = msgspec.json.Encoder()


def response_store(service: FrontendService) -> ResponseStore:
    """Where this frontend keeps responses: the graph's store, under its own namespace."""
    config = service.config
    return ResponseStore(
        service.runtime.store,
        service.runtime.namespace,
        config.response_ttl,
        config.max_stored_response_bytes,
    )


async def _load(store: ResponseStore, response_id: str) -> StoredResponse | None:
    try:
        return await store.load(response_id)
    except Exception as exc:  # the store's backend is unreachable
        log.error("loading stored response %s failed: %s", response_id, exc)
        raise service_unavailable("the response store is unreachable; retry shortly") from exc


# --- create -----------------------------------------------------------------------------------


async def create_response(service: FrontendService, request: Request) -> Response:
    """parse -> admit -> previous conversation -> translate -> preprocess -> route -> respond."""
    started = time.monotonic()
    config = service.config
    store = response_store(service)
    name: str | None = None
    try:
        body = await read_body(request, config.max_body_size)
        offload = len(body) > LARGE_BODY
        req = await maybe_off_loop(offload, parse_responses_request, body)
        name = req.model
        served = service.models.get(name)
        if served is not None:
            served.require(CHAT_MODEL)
        model = admit(service.models, name, config.max_inflight_requests)
        with model.hold_slot():
            history: list[dict[str, Any]] = []
            if req.previous_response_id is not None:
                previous = await _load(store, req.previous_response_id)
                if previous is None:
                    raise previous_response_not_found(req.previous_response_id)
                history = previous.messages
            chat = await maybe_off_loop(offload, chat_request, req, history)
            response_id = new_id("resp")
            request_id = request.headers.get("x-request-id") or response_id
            try:
                pre = (await preprocess(model, CHAT, chat, request_id, offload))[0]
                choice = ChoiceStream(pre, model.preprocessor)
            except RequestError as exc:
                raise to_responses_error(exc) from None
    except RequestError as exc:
        # Labelled by model only when it is served: client-chosen names must not add series.
        label = name if name is not None and name in service.models.models else "unknown"
        service.metrics.rejected(label, LABEL, exc.status)
        return error_response(exc)

    mm = service.metrics.model(model.name)
    record = RequestMetrics(mm, model, LABEL, bool(req.stream), started, pre.prompt_len)
    migration_limit = config.migration_limit
    if migration_limit is None:
        migration_limit = model.card.migration_limit
    run = ResponseRun(req, response_id, model, history, choice, store)
    watch = DisconnectWatch(request.receive)  # one watch for routing and the response
    handed_over = False  # to the stream's response, which stops the watch when it ends
    try:
        try:
            routed = await watch.run(
                route(
                    service.prefill, service.runtime.request_client, model, pre, migration_limit, mm.migrated
                )
            )
        except ClientGone:  # the client left while its request waited for a first output
            record.finish("499", 0, None)
            return Response(status_code=499)
        except RequestError as exc:  # no worker, all busy, or the engine refused the request
            record.finish(str(exc.status), 0, None)
            return error_response(to_responses_error(exc))
        except BaseException:
            record.finish("500", 0, None)
            raise
        record.first_output()
        headers = routed.debug_headers(request.headers)
        if req.stream:

            def on_done(disconnected: bool) -> None:
                record.finish(
                    "499" if disconnected else "200", choice.completion_tokens, choice.cached_tokens
                )

            handed_over = True
            return SSEResponse(run.events(routed), on_done, headers, watch=watch)
        status = "500"  # unless it ends otherwise
        try:
            body_out = await watch.run(run.collect(routed))
            status = "200"
            return JSONResponse(body_out, headers=headers)
        except ClientGone:  # the client left; its engine request was closed with the collection
            status = "499"
            return Response(status_code=499)
        except RequestError as exc:
            status = str(exc.status)
            return error_response(to_responses_error(exc))
        finally:
            record.finish(status, choice.completion_tokens, choice.cached_tokens)
    finally:
        if not handed_over:
            watch.stop()


class ResponseRun:
    """One response being generated: its choice's deltas -> output items -> the Response object."""

    def __init__(
        self,
        req: ResponsesRequest,
        response_id: str,
        model: ServedModel,
        history: list[dict[str, Any]],
        choice: ChoiceStream,
        store: ResponseStore,
    ) -> None:
        self.req = req
        self.id = response_id
        self.model = model
        self.history = history
        self.choice = choice
        self.store = store
        self.created_at = int(time.time())
        top = (req.top_logprobs or 0) if req.wants_logprobs else None
        self.output = OutputBuilder(model.preprocessor.token_text, top)

    async def _deltas(self, routed: Routed) -> AsyncIterator[ChoiceDelta]:
        choice = self.choice
        batch = routed.first
        try:
            while True:
                yield choice.step(batch)
                if choice.done:
                    return
                try:
                    batch = await routed.batches.__anext__()
                except StopAsyncIteration:  # the engine ended without a finish reason
                    yield choice.end()
                    return
        finally:
            await routed.batches.aclose()

    async def collect(self, routed: Routed) -> dict[str, Any]:
        """The whole Response object (``stream: false``), stored when asked."""
        async for delta in self._deltas(routed):
            self.output.add(delta)
        self.output.close(self._item_status())
        return await self._finish()

    async def events(self, routed: Routed) -> AsyncGenerator[bytes, None]:
        """The server-sent events of the response (``stream: true``)."""
        out = self.output
        started = self.response("in_progress")
        yield _sse(
            [
                out.event("response.created", response=started),
                out.event("response.in_progress", response=started),
            ]
        )
        try:
            async for delta in self._deltas(routed):
                events = out.add(delta)
                if events:
                    yield _sse(events)
            events = out.close(self._item_status())
            final = await self._finish()
            kind = "response.incomplete" if final["status"] == "incomplete" else "response.completed"
            yield _sse([*events, out.event(kind, response=final)])
        except RequestError as exc:
            yield self._failed(to_responses_error(exc))
        except Exception:
            log.exception("response %s failed", self.id)
            yield self._failed(internal_error())

    def _item_status(self) -> str:
        return "incomplete" if self.choice.finish_reason == "length" else "completed"

    def _failed(self, exc: RequestError) -> bytes:
        out = self.output
        error = out.event("error", code=exc.code, message=exc.message, param=exc.param)
        failed = self.response("failed", error={"code": exc.code or "server_error", "message": exc.message})
        return _sse([error, out.event("response.failed", response=failed)])

    async def _finish(self) -> dict[str, Any]:
        incomplete = self.choice.finish_reason == "length"
        response = self.response("incomplete" if incomplete else "completed", usage=self._usage())
        response["completed_at"] = int(time.time())
        stored = False
        if self.req.store is not False:  # null is the default, true (as OpenAI)
            messages = [*self.history, *input_messages(self.req), *self.output.as_messages()]
            stored = await self.store.save(
                StoredResponse(response={**response, "store": True}, messages=messages)
            )
        response["store"] = stored
        return response

    def _usage(self) -> dict[str, Any]:
        choice = self.choice
        reasoning = self.output.reasoning_text
        reasoning_tokens = 0
        if reasoning:
            tokenizer = self.model.preprocessor.tokenizer
            reasoning_tokens = min(
                len(tokenizer.encode(reasoning, add_special_tokens=False).ids), choice.completion_tokens
            )
        return {
            "input_tokens": choice.prompt_tokens,
            "input_tokens_details": {"cached_tokens": choice.cached_tokens or 0, "cache_write_tokens": 0},
            "output_tokens": choice.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
            "total_tokens": choice.prompt_tokens + choice.completion_tokens,
        }

    def response(
        self, status: str, usage: dict[str, Any] | None = None, error: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """The Response object in ``status``, echoing the request's settings."""
        items = list(self.output.items) if status != "in_progress" else []
        return response_object(
            self.req, self.id, self.model.name, self.created_at, status, items, usage, error
        )


def _sse(events: list[Event]) -> bytes:
    """Events as server-sent events, each with its ``event:`` name (as OpenAI and vLLM send them)."""
    return b"".join(
        b"event: " + ev["type"].encode() + b"\ndata: " + _json.encode(ev) + b"\n\n" for ev in events
    )


# --- retrieve / delete ------------------------------------------------------------------------


async def retrieve_response(service: FrontendService, response_id: str) -> Response:
    """``GET /v1/responses/{id}``: the stored Response object (404 unknown, expired or not stored)."""
    try:
        record = await _load(response_store(service), response_id)
        if record is None:
            raise response_not_found(response_id)
    except RequestError as exc:
        return error_response(exc)
    return JSONResponse(record.response)


async def delete_response(service: FrontendService, response_id: str) -> Response:
    """``DELETE /v1/responses/{id}``: forget a stored response (404 unknown or expired)."""
    try:
        try:
            deleted = await response_store(service).delete(response_id)
        except Exception as exc:
            log.error("deleting stored response %s failed: %s", response_id, exc)
            raise service_unavailable("the response store is unreachable; retry shortly") from exc
        if not deleted:
            raise response_not_found(response_id)
    except RequestError as exc:
        return error_response(exc)
    return JSONResponse({"id": response_id, "object": "response", "deleted": True})
