"""``/openapi.json``: the frontend's HTTP API, written from its protocol types.

Journey: a client, SDK generator or fuzzer reads **this document** before calling the frontend.
The FastAPI routes (``api``) are described by FastAPI from the response types they declare; the two
completion routes, which are served before FastAPI (``app.FrontendApp``), are added from
``endpoints.ENDPOINTS``: the request body's schema from the request type (``dynamo.llm.openai``),
a JSON response (``stream: false``) or an event stream (``stream: true``) whose ``data:`` events
follow ``x-itemSchema`` (a chunk, or an error midway; then ``[DONE]``), and each error status with
the OpenAI error body. ``x-itemSchema`` is OpenAPI 3.2's ``itemSchema``, as an extension of this
3.1 document; an event stream's ``schema`` describes one event as a parsed ``text/event-stream``
event (``event``, ``data``: ``[DONE]`` or JSON text whose ``contentSchema`` is ``x-itemSchema``),
the convention tools for 3.1 documents follow (schemathesis validates each event with it).
FastAPI routes that read their JSON body themselves (``/v1/embeddings``, ``/v1/responses``) name
its type with ``request_body``, and the events of a route that may stream (``/v1/responses``) with
``event_stream``. Every 429 and 503 documents its ``Retry-After`` header.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from dynamo.frontend.endpoints import ENDPOINTS, CompletionEndpoint
from dynamo.llm.openai import ErrorResponse

REF = "#/components/schemas/{model}"
ERRORS = {
    400: "invalid request: the body or a field (named in error.param) is not acceptable",
    404: "no such model",
    413: "request body too large",
    429: "too many requests in flight for the model, or every worker busy; see Retry-After",
    500: "the engine or the frontend failed",
    503: "no live or reachable worker for the model right now; see Retry-After",
}


_BODY_TYPES: list[type[BaseModel]] = []  # request types of FastAPI routes, see request_body


def request_body(model: type[BaseModel]) -> dict[str, Any]:
    """FastAPI ``openapi_extra=`` for a route that parses its own JSON body: ``model`` describes it."""
    if model not in _BODY_TYPES:
        _BODY_TYPES.append(model)
    schema = {"$ref": REF.format(model=model.__name__)}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


_EVENT_TYPES: list[type[BaseModel]] = []  # event types of FastAPI routes' streams, see event_stream


def event_stream(model: type[BaseModel]) -> dict[str, Any]:
    """FastAPI ``responses=`` content of a 200 that may be server-sent events: each ``data:`` is a
    ``model`` (``x-itemSchema``)."""
    if model not in _EVENT_TYPES:
        _EVENT_TYPES.append(model)
    schema = {"$ref": REF.format(model=model.__name__)}
    return {"text/event-stream": {"schema": sse_event(schema), "x-itemSchema": schema}}


def sse_event(data: dict[str, Any]) -> dict[str, Any]:
    """The schema of one server-sent event whose ``data`` is ``[DONE]`` or JSON matching ``data``."""
    json_data = {"type": "string", "contentMediaType": "application/json", "contentSchema": data}
    return {
        "type": "object",
        "required": ["data"],
        "properties": {
            "event": {"type": "string"},
            "data": {"anyOf": [{"const": "[DONE]"}, json_data]},
            "id": {"type": "string"},
            "retry": {"type": "integer"},
        },
    }


RETRY_AFTER = {
    "Retry-After": {
        "description": "seconds to wait before retrying",
        "required": True,
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    }
}
RETRY_STATUSES = (429, 503)  # answered with Retry-After, always


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """FastAPI ``responses=`` entries: the OpenAI error body for each status (and ``Retry-After``)."""
    entries: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        entries[status] = {"model": ErrorResponse, "description": ERRORS[status]}
        if status in RETRY_STATUSES:
            entries[status]["headers"] = RETRY_AFTER
    return entries


def build_openapi(app: FastAPI) -> dict[str, Any]:
    """The document for ``app`` and the completion endpoints (built once)."""
    if app.openapi_schema:
        return app.openapi_schema
    doc = get_openapi(
        title=app.title,
        version=app.version,
        description=(
            "OpenAI-compatible LLM serving: chat and text completions and the Responses API, "
            "streamed or not, and embeddings."
        ),
        routes=app.routes,
    )
    _drop_unreachable_validation_errors(doc)
    schemas: dict[str, Any] = doc.setdefault("components", {}).setdefault("schemas", {})
    types: list[tuple[type[BaseModel], JsonSchemaMode]] = [(ErrorResponse, "serialization")]
    types += [(body, "validation") for body in _BODY_TYPES]
    types += [(event, "serialization") for event in _EVENT_TYPES]
    for e in ENDPOINTS.values():
        types += [
            (e.request_type, "validation"),
            (e.response_type, "serialization"),
            (e.chunk_type, "serialization"),
        ]
    refs, defs = models_json_schema(types, ref_template=REF)
    for name, schema in defs.get("$defs", {}).items():
        if name in schemas and schemas[name] != schema:
            raise RuntimeError(f"two different schemas are both named {name!r}")
        schemas[name] = schema
    for body in _BODY_TYPES:
        if body.__name__ not in schemas:
            raise RuntimeError(f"the request body {body.__name__} has no schema of that name")
    paths = doc.setdefault("paths", {})
    for e in ENDPOINTS.values():
        paths[e.path] = {"post": _completion_operation(e, refs)}
    app.openapi_schema = doc
    return doc


def _completion_operation(
    e: CompletionEndpoint, refs: Mapping[tuple[Any, JsonSchemaMode], Any]
) -> dict[str, Any]:
    error_ref = refs[(ErrorResponse, "serialization")]
    item = {"oneOf": [refs[(e.chunk_type, "serialization")], error_ref]}
    responses: dict[str, Any] = {
        "200": {
            "description": (
                'the response (`"stream": false`), or server-sent events (`"stream": true`): each '
                "`data:` line one JSON event as `x-itemSchema` describes, the last `data: [DONE]`"
            ),
            "content": {
                "application/json": {"schema": refs[(e.response_type, "serialization")]},
                "text/event-stream": {
                    "schema": sse_event(item),
                    "x-itemSchema": item,
                },
            },
        }
    }
    for status, description in ERRORS.items():
        responses[str(status)] = {
            "description": description,
            "content": {"application/json": {"schema": error_ref}},
        }
        if status in RETRY_STATUSES:
            responses[str(status)]["headers"] = RETRY_AFTER
    return {
        "summary": e.summary,
        "operationId": e.operation_id,
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": refs[(e.request_type, "validation")]}},
        },
        "responses": responses,
    }


def _drop_unreachable_validation_errors(doc: dict[str, Any]) -> None:
    """FastAPI lists a 422 for every route with a parameter; ours are plain strings that always
    validate (and errors are never answered in FastAPI's 422 shape), so the 422s go."""
    for item in doc.get("paths", {}).values():
        for operation in item.values():
            operation.get("responses", {}).pop("422", None)
    schemas = doc.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
