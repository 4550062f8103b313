"""The frontend's ASGI application (journey: **HTTP** -> parse -> preprocess -> route -> ...).

``FrontendApp`` sends ``POST /v1/chat/completions`` and ``POST /v1/completions`` straight to
``FrontendService.handle``: no FastAPI routing, dependency solving or middleware on the hot path.
Every other request, and the lifespan (runtime, model watcher), goes to the FastAPI app of
``api``. Every error is answered in the OpenAI shape ``{"error": {"message", "type", "param",
"code"}}`` with its status (400, 404, 405, 413, 429, 500, 503).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from dynamo.frontend.api import build_api
from dynamo.frontend.args import FrontendConfig
from dynamo.frontend.endpoints import ENDPOINTS
from dynamo.frontend.responses import error_response
from dynamo.frontend.service import FrontendService
from dynamo.llm.errors import RequestError, internal_error
from dynamo.runtime import DistributedRuntime

log = logging.getLogger(__name__)


class FrontendApp:
    """The ASGI entry point: the completion routes to the service, everything else to ``api``."""

    def __init__(self, api: FastAPI, service: Callable[[], FrontendService]) -> None:
        self.api = api
        self._service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = ENDPOINTS.get(scope["path"]) if scope["type"] == "http" else None
        if endpoint is None:
            await self.api(scope, receive, send)
            return
        if scope["method"] != "POST":
            err = RequestError(405, "Method Not Allowed", code="method_not_allowed")
            response = error_response(err)
            response.headers["allow"] = "POST"
        else:
            try:
                response = await self._service().handle(Request(scope, receive), endpoint)
            except Exception:
                log.exception("unexpected error")
                response = error_response(internal_error())
        await response(scope, receive, send)


def create_app(config: FrontendConfig, runtime: DistributedRuntime | None = None) -> FrontendApp:
    """The application; the runtime is created in its lifespan unless given."""
    holder: dict[str, FrontendService] = {}

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        rt = runtime or await DistributedRuntime.create(config.runtime)
        service = FrontendService(config, rt)
        await service.models.start()
        service.loop_lag.start()
        holder["service"] = service
        log.info(
            "frontend ready: router mode %s, namespace %s",
            config.router_mode,
            config.namespace_filter or "(all)",
        )
        try:
            yield
        finally:
            await service.loop_lag.stop()
            await rt.shutdown()

    def service() -> FrontendService:
        return holder["service"]

    return FrontendApp(build_api(service, lifespan), service)
