"""The OpenAI-compatible HTTP service (journey: **HTTP** -> preprocess -> route -> ... -> SSE).

Every error is answered in the OpenAI shape ``{"error": {"message", "type", "param", "code"}}``
with its proper status (400 validation, 404 unknown model or path, 405 method, 413 body size,
429 overload, 503 no worker); nothing invalid reaches a worker.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import cached_property
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from dynamo.frontend.args import FrontendConfig
from dynamo.frontend.disagg import PrefillRouter
from dynamo.frontend.metrics import FrontendMetrics
from dynamo.frontend.models import ModelManager, ServedModel
from dynamo.frontend.responses import DONE, ResponseBuilder, sse
from dynamo.frontend.sse import SSEResponse
from dynamo.llm.errors import (
    RequestError,
    model_not_found,
    payload_too_large,
    service_unavailable,
    too_many_requests,
)
from dynamo.llm.openai import parse_chat_request, parse_completion_request
from dynamo.llm.preprocessor import PreprocessedOutput
from dynamo.runtime import DistributedRuntime

log = logging.getLogger(__name__)

LARGE_BODY = 64 * 1024  # preprocess bodies above this off the event loop
# The hot routes, served without FastAPI's routing, dependency solving and middleware (FrontendApp).
COMPLETION_PATHS = {"/v1/chat/completions": "chat", "/v1/completions": "completion"}


def error_response(exc: RequestError) -> Response:
    return Response(
        exc.to_body(), status_code=exc.status, media_type="application/json", headers=exc.headers()
    )


class _ModelMetrics:
    """One model's metric children, each looked up on first use (as ``labels()`` would create it)
    and then kept, instead of ``labels()`` on every request."""

    def __init__(self, m: FrontendMetrics, name: str) -> None:
        self.name = name
        self._m = m
        self._by_status: dict[tuple[str, str, str], Counter] = {}

    @cached_property
    def inflight(self) -> Gauge:
        return self._m.inflight.labels(self.name)

    @cached_property
    def isl(self) -> Histogram:
        return self._m.isl.labels(self.name)

    @cached_property
    def osl(self) -> Histogram:
        return self._m.osl.labels(self.name)

    @cached_property
    def ttft(self) -> Histogram:
        return self._m.ttft.labels(self.name)

    @cached_property
    def itl(self) -> Histogram:
        return self._m.itl.labels(self.name)

    @cached_property
    def duration(self) -> Histogram:
        return self._m.duration.labels(self.name)

    @cached_property
    def cached(self) -> Counter:
        return self._m.cached.labels(self.name)

    @cached_property
    def kv_hit_rate(self) -> Gauge:
        return self._m.kv_hit_rate.labels(self.name)

    def requests(self, endpoint: str, request_type: str, status: str) -> Counter:
        key = (endpoint, request_type, status)
        child = self._by_status.get(key)
        if child is None:
            child = self._by_status[key] = self._m.requests.labels(self.name, *key)
        return child


class FrontendService:
    """State shared by the HTTP handlers."""

    def __init__(self, config: FrontendConfig, runtime: DistributedRuntime) -> None:
        self.config = config
        self.runtime = runtime
        self.models = ModelManager(runtime, config)
        self.metrics = FrontendMetrics(runtime.metrics)
        self.prefill = PrefillRouter(config, self.metrics, runtime.metrics)
        self._model_metrics: dict[str, _ModelMetrics] = {}

    def model_metrics(self, name: str) -> _ModelMetrics:
        mm = self._model_metrics.get(name)
        if mm is None:
            mm = self._model_metrics[name] = _ModelMetrics(self.metrics, name)
        return mm

    async def read_body(self, request: Request) -> bytes:
        limit = self.config.max_body_size
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise payload_too_large(limit)
        chunks = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise payload_too_large(limit)
            chunks.append(chunk)
        return b"".join(chunks)

    def admit(self, name: str) -> ServedModel:
        model = self.models.get(name)
        if model is None:
            raise model_not_found(name)
        if not model.has_workers:
            raise service_unavailable(f"no worker serves model '{name}' right now")
        if model.inflight >= self.config.max_inflight_requests:
            raise too_many_requests(f"model '{name}' has {model.inflight} requests in flight; retry shortly")
        return model

    async def handle(self, request: Request, kind: str) -> Response:
        endpoint = "chat_completions" if kind == "chat" else "completions"
        started = time.monotonic()
        model_name = "unknown"
        try:
            body = await self.read_body(request)
            parsed = (
                await asyncio.to_thread(_parse, kind, body) if len(body) > LARGE_BODY else _parse(kind, body)
            )
            model_name = parsed.model
            model = self.admit(parsed.model)
            request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
            prep = model.preprocessor
            if kind == "chat":
                args = (parsed, request_id)
                pre = (
                    await asyncio.to_thread(prep.preprocess_chat, *args)
                    if len(body) > LARGE_BODY
                    else prep.preprocess_chat(*args)
                )  # type: ignore[arg-type]
            else:
                args = (parsed, request_id)
                pre = (
                    await asyncio.to_thread(prep.preprocess_completion, *args)
                    if len(body) > LARGE_BODY
                    else prep.preprocess_completion(*args)
                )  # type: ignore[arg-type]
        except RequestError as exc:
            self.metrics.requests.labels(model_name, endpoint, "unary", str(exc.status)).inc()
            return error_response(exc)
        prefix = "chatcmpl-" if kind == "chat" else "cmpl-"
        builder = ResponseBuilder(
            kind, prefix + request_id, model.name, pre, model.preprocessor, include_usage=parsed.include_usage
        )
        return await self._serve(request, model, pre, builder, bool(parsed.stream), endpoint, started)

    async def _serve(
        self,
        request: Request,
        model: ServedModel,
        pre: PreprocessedOutput,
        builder: ResponseBuilder,
        stream: bool,
        endpoint: str,
        started: float,
    ) -> Response:
        m = self.metrics
        name = model.name
        mm = self.model_metrics(name)
        migration = self.config.migration_limit
        if migration is None:
            migration = model.card.migration_limit
        gen = self.prefill.generation(  # disaggregated when the model has prefill workers
            self.runtime.request_client,
            model,
            pre.request,
            pinned=pre.backend_instance_id,
            migration_limit=migration,
            on_migration=lambda reason: m.migrations.labels(name, reason).inc(),
        )
        request_type = "stream" if stream else "unary"
        model.inflight += 1
        mm.inflight.inc()
        mm.isl.observe(pre.prompt_len)
        batches = gen.batches()
        finished = False

        def done(status: str) -> None:
            nonlocal finished
            if finished:
                return
            finished = True
            model.inflight -= 1
            mm.inflight.dec()
            mm.requests(endpoint, request_type, status).inc()
            mm.duration.observe(time.monotonic() - started)
            mm.osl.observe(builder.completion_tokens)
            if builder.cached_tokens:
                mm.cached.inc(builder.cached_tokens)
            if model.router.kv is not None:
                mm.kv_hit_rate.set(model.router.kv.counters.hit_rate)

        try:
            first = await batches.__anext__()  # errors before the first output get a proper status
        except RequestError as exc:
            await batches.aclose()
            done(str(exc.status))
            return error_response(exc)
        except StopAsyncIteration:
            done("503")
            return error_response(service_unavailable("the worker ended the stream without output"))
        ttft = time.monotonic() - started
        mm.ttft.observe(ttft)
        headers = {}
        if request.headers.get("x-dynamo-routing-debug") and gen.instance_id is not None:
            headers["x-dynamo-instance"] = f"{gen.instance_id:x}; overlap_blocks={gen.overlap_blocks}"

        if not stream:
            try:
                text, lps = builder.consume(first)
                builder.add_to_full(text, lps)
                async for batch in batches:
                    text, lps = builder.consume(batch)
                    builder.add_to_full(text, lps)
                    if builder.done:
                        break
            except RequestError as exc:
                done(str(exc.status))
                return error_response(exc)
            except RuntimeError as exc:
                done("500")
                return error_response(RequestError(500, str(exc), type="internal_error", code="engine_error"))
            finally:
                await batches.aclose()
            if builder.completion_tokens > 1:
                mm.itl.observe((time.monotonic() - started - ttft) / (builder.completion_tokens - 1))
            done("200")
            return JSONResponse(builder.full_response(), headers=headers)

        async def events() -> AsyncGenerator[bytes, None]:
            # The last event(s) and [DONE] go out together, in the write that ends the body.
            last = time.monotonic()
            itl = mm.itl
            batch: list[dict[str, Any]] = first
            final = DONE
            try:
                while True:
                    before = builder.completion_tokens
                    text, lps = builder.consume(batch)
                    out = builder.chunk(text, lps)
                    if builder.done:
                        final = out + DONE
                    elif out:
                        yield out
                    now = time.monotonic()
                    n = builder.completion_tokens - before
                    if n and before:
                        itl.observe((now - last) / n)
                    last = now
                    if builder.done:
                        break
                    batch = await batches.__anext__()
            except StopAsyncIteration:
                if not builder.done:
                    builder.finish_reason = "stop"
                    final = builder.chunk("", None) + DONE
            except (RequestError, RuntimeError) as exc:
                err = (
                    exc
                    if isinstance(exc, RequestError)
                    else RequestError(500, str(exc), type="internal_error", code="engine_error")
                )
                final = sse(err.to_dict()) + DONE
            finally:
                await batches.aclose()
            yield final

        return SSEResponse(
            events(), lambda disconnected: done("499" if disconnected else "200"), headers, last_event=DONE
        )


def _parse(kind: str, body: bytes) -> Any:
    return parse_chat_request(body) if kind == "chat" else parse_completion_request(body)


class FrontendApp:
    """The ASGI entry point. ``POST /v1/chat/completions`` and ``POST /v1/completions`` go straight
    to the service: no FastAPI routing, dependency solving or middleware on the hot path (errors
    keep the OpenAI shape). Everything else, the lifespan included, is the FastAPI app ``api``."""

    def __init__(self, api: FastAPI, service: Callable[[], FrontendService]) -> None:
        self.api = api
        self._service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            kind = COMPLETION_PATHS.get(scope["path"])
            if kind is not None:
                try:
                    response = await self._service().handle(Request(scope, receive), kind)
                except Exception:
                    log.exception("unexpected error")
                    response = error_response(
                        RequestError(500, "internal server error", type="internal_error")
                    )
                await response(scope, receive, send)
                return
        await self.api(scope, receive, send)


def create_app(config: FrontendConfig, runtime: DistributedRuntime | None = None) -> FrontendApp:
    """The application; the runtime is created in its lifespan unless given."""
    holder: dict[str, FrontendService] = {}

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        rt = runtime or await DistributedRuntime.create(config.runtime)
        service = FrontendService(config, rt)
        await service.models.start()
        holder["service"] = service
        log.info(
            "frontend ready: router mode %s, namespace %s",
            config.router_mode,
            config.namespace_filter or "(all)",
        )
        try:
            yield
        finally:
            await rt.shutdown()

    app = FastAPI(title="dynamo frontend", lifespan=lifespan)

    def svc() -> FrontendService:
        return holder["service"]

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        err = RequestError(exc.status_code, str(exc.detail), code=code)
        return Response(
            err.to_body(),
            status_code=exc.status_code,
            media_type="application/json",
            headers=dict(exc.headers or {}),
        )

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, exc: Exception) -> Response:
        log.exception("unexpected error")
        return error_response(RequestError(500, "internal server error", type="internal_error"))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await svc().handle(request, "chat")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await svc().handle(request, "completion")

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {"id": m.name, "object": "model", "created": 0, "owned_by": "dynamo"}
                for m in svc().models.models.values()
                if m.has_workers
            ],
        }

    @app.get("/v1/models/{model:path}/ready")
    async def model_ready(model: str) -> Response:
        served = svc().models.get(model)
        if served is None:
            return error_response(model_not_found(model))
        ready = served.has_workers
        return JSONResponse({"model": model, "ready": ready}, status_code=200 if ready else 503)

    @app.get("/health")
    async def health() -> Response:
        models = svc().models.models.values()
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
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/live")
    async def live() -> dict[str, str]:
        return {"status": "live"}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(svc().runtime.metrics), media_type=CONTENT_TYPE_LATEST)

    return FrontendApp(app, svc)
