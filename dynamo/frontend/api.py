"""The frontend's FastAPI app: every route but the two completion routes, and the lifespan.

Journey: HTTP -> ``app.FrontendApp`` -> **here** for ``/v1/models``, ``/v1/models/{model}/ready``,
``/v1/embeddings`` (served by ``embeddings``), ``/v1/responses`` and ``/v1/responses/{id}`` (served
by ``responses_api``), ``/health``, ``/live``, ``/metrics`` and the API description
(``/openapi.json``, ``/docs``). Errors keep the OpenAI shape (404 unknown path, 405 wrong method
with ``Allow`` naming every method the path serves, 500); the probes' 503 carries ``Retry-After``.
Each route declares its response types, from which ``openapi`` writes the document.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import Scope

from dynamo.frontend.embeddings import add_embeddings_route
from dynamo.frontend.openapi import RETRY_AFTER, build_openapi, error_responses
from dynamo.frontend.protocol import Health, Live, ModelReadiness
from dynamo.frontend.responses import error_response
from dynamo.frontend.responses_api import add_responses_routes
from dynamo.frontend.service import FrontendService
from dynamo.llm.errors import RequestError, internal_error, model_not_found
from dynamo.llm.openai import ModelList

log = logging.getLogger(__name__)
RETRY = {"Retry-After": "1"}  # on 503 of the probes: workers come and go within seconds


def build_api(
    service: Callable[[], FrontendService],
    lifespan: Callable[[FastAPI], AbstractAsyncContextManager[None]],
) -> FastAPI:
    """The FastAPI app; ``service()`` is the running ``FrontendService`` (made in ``lifespan``)."""
    app = FastAPI(title="dynamo frontend", version="1", lifespan=lifespan)
    app.openapi = lambda: build_openapi(app)  # type: ignore[method-assign]

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        err = RequestError(exc.status_code, str(exc.detail), code=code)
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            # Starlette names the methods of the first route with this path only.
            headers["Allow"] = ", ".join(allowed_methods(app, request.scope))
        return Response(
            err.to_body(),
            status_code=exc.status_code,
            media_type="application/json",
            headers=headers,
        )

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, exc: Exception) -> Response:
        log.exception("unexpected error")
        return error_response(internal_error())

    add_embeddings_route(app, service)
    add_responses_routes(app, service)

    @app.get(
        "/v1/models", response_model=ModelList, operation_id="list_models", summary="List the served models"
    )
    async def list_models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {"id": m.name, "object": "model", "created": m.created, "owned_by": "dynamo"}
                for m in service().models.models.values()
                if m.has_workers
            ],
        }

    @app.get(
        "/v1/models/{model:path}/ready",
        response_model=ModelReadiness,
        operation_id="model_ready",
        summary="Whether a model has a live worker",
        responses={
            503: {"model": ModelReadiness, "description": "no live worker", "headers": RETRY_AFTER},
            **error_responses(404),
        },
    )
    async def model_ready(model: str) -> Response:
        served = service().models.get(model)
        if served is None:
            return error_response(model_not_found(model))
        ready = served.has_workers
        if ready:
            return JSONResponse({"model": model, "ready": ready})
        return JSONResponse({"model": model, "ready": ready}, status_code=503, headers=RETRY)

    @app.get(
        "/health",
        response_model=Health,
        operation_id="health",
        summary="Served models and their live instances",
        responses={
            503: {"model": Health, "description": "no model has a live worker", "headers": RETRY_AFTER}
        },
    )
    async def health() -> Response:
        models = service().models.models.values()
        ready = any(m.has_workers for m in models)
        body = {
            "status": "healthy" if ready else "unhealthy",
            "models": [m.name for m in models if m.has_workers],
            "instances": [
                {
                    "model": m.name,
                    "instance_id": f"{iid:x}",
                    "endpoint": str(r.endpoint_id),
                    "address": r.address,
                }
                for m in models
                for iid, r in m.records.items()
            ],
        }
        return JSONResponse(body, status_code=200) if ready else JSONResponse(body, 503, headers=RETRY)

    @app.get("/live", response_model=Live, operation_id="live", summary="The process is up")
    async def live() -> dict[str, str]:
        return {"status": "live"}

    @app.get(
        "/metrics",
        operation_id="metrics",
        summary="Prometheus metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "OK"}},
    )
    async def metrics() -> Response:
        return Response(generate_latest(service().runtime.metrics), media_type=CONTENT_TYPE_LATEST)

    return app


def allowed_methods(app: FastAPI, scope: Scope) -> list[str]:
    """The methods of every route whose path matches ``scope``'s (for a 405's ``Allow``)."""
    methods: set[str] = set()
    for route in app.router.routes:
        match, _ = route.matches(scope)
        if match != Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return sorted(methods)
