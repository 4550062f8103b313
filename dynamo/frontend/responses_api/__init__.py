"""The OpenAI Responses API: ``POST /v1/responses`` (streamed or not, ``previous_response_id``
continuing a stored response on any frontend), ``GET`` and ``DELETE /v1/responses/{id}``.

Journey: HTTP -> FastAPI (``api``) -> **here**: ``handler`` runs a response through the chat path's
stages, ``output`` shapes the choice's deltas into output items and events, ``conversations``
keeps responses in the graph's key-value store for ``--response-ttl`` seconds. The protocol types
are ``dynamo.llm.openai_responses``; docs/responses.md lists every field.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from dynamo.frontend.openapi import error_responses, event_stream, request_body
from dynamo.frontend.responses_api.handler import create_response, delete_response, retrieve_response
from dynamo.frontend.service import FrontendService
from dynamo.llm.openai_responses import (
    DeletedResponse,
    ResponseObject,
    ResponsesRequest,
    ResponseStreamEvent,
)

RESPONSES_PATH = "/v1/responses"


def add_responses_routes(app: FastAPI, service: Callable[[], FrontendService]) -> None:
    """Serve the Responses API on ``app`` (``service()``: the running ``FrontendService``)."""

    @app.post(
        RESPONSES_PATH,
        response_model=ResponseObject,
        operation_id="create_response",
        summary="Create a model response (the Responses API)",
        description=(
            'The Response object (`"stream": false`), or server-sent events (`"stream": true`): '
            "each an `event:` line naming the type and a `data:` line with the event, numbered by "
            "`sequence_number`, from `response.created` to `response.completed` "
            "(`response.incomplete` at `max_output_tokens`; `error` then `response.failed` on a "
            "failure midway)."
        ),
        responses={
            200: {"content": event_stream(ResponseStreamEvent)},
            **error_responses(400, 404, 413, 429, 500, 503),
        },
        openapi_extra=request_body(ResponsesRequest),
    )
    async def create(request: Request) -> Response:
        return await create_response(service(), request)

    @app.get(
        RESPONSES_PATH + "/{response_id}",
        response_model=ResponseObject,
        operation_id="get_response",
        summary="Retrieve a stored response",
        responses=error_responses(404, 503),
    )
    async def retrieve(response_id: str) -> Response:
        return await retrieve_response(service(), response_id)

    @app.delete(
        RESPONSES_PATH + "/{response_id}",
        response_model=DeletedResponse,
        operation_id="delete_response",
        summary="Delete a stored response",
        responses=error_responses(404, 503),
    )
    async def delete(response_id: str) -> Response:
        return await delete_response(service(), response_id)


__all__ = ["RESPONSES_PATH", "add_responses_routes"]
