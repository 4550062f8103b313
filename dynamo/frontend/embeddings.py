"""``POST /v1/embeddings``: vectors from the embedding workers of a model.

Journey: HTTP -> **parse (``dynamo.llm.openai_embeddings``) -> admit (a model whose card lists the
``embeddings`` type; 404 otherwise) -> tokenize with the card's tokenizer -> route to one worker
with the model's routing policy -> its ``/embed`` handler (``EmbedRequest``: token ids) -> one
``EmbedOutput`` per input -> the OpenAI response, in input order** -> client.

The frontend stays engine-agnostic: it tokenizes (special tokens added, as vLLM's server does for
embeddings, unless ``add_special_tokens`` is false), enforces the limits (inputs within the
model's context length, ``MAX_TOKENS_PER_REQUEST`` in all; 400 ``context_length_exceeded`` /
``max_tokens_per_request``), and the worker runs the engine's own pooling and normalisation. A
request goes to one worker whole (the engine batches its inputs). An unreachable, draining or
failed worker is replaced by another before anything reached the client (embedding is
idempotent); none left is a 503. The engine's refusals are 400s naming the field (``dimensions``
on a model without Matryoshka support, ``input[i]``), its failures 500s.
"""

from __future__ import annotations

import base64
import logging
import sys
import time
from array import array
from collections.abc import Callable
from typing import Any

import msgspec
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from dynamo.frontend.metrics import RequestMetrics
from dynamo.frontend.models import EMBEDDINGS, ServedModel
from dynamo.frontend.off_loop import maybe_off_loop
from dynamo.frontend.openapi import error_responses, request_body
from dynamo.frontend.responses import error_response
from dynamo.frontend.routing import AllWorkersBusy, NoWorkers
from dynamo.frontend.service import FrontendService
from dynamo.frontend.stages.parse import LARGE_BODY, read_body
from dynamo.frontend.stages.preprocess import admit
from dynamo.llm.endpoints import EmbedOutput, EmbedRequest, embed_endpoint_name
from dynamo.llm.errors import (
    RequestError,
    bad_request,
    internal_error,
    service_unavailable,
    too_many_requests,
)
from dynamo.llm.openai_embeddings import (
    MAX_TOKENS_PER_REQUEST,
    EmbeddingRequest,
    EmbeddingResponse,
    parse_embedding_request,
)
from dynamo.runtime import InstanceRecord, InstanceUnreachable, RemoteError, StreamBroken
from dynamo.runtime.names import new_request_id
from dynamo.runtime.request_plane import RequestPlaneClient

log = logging.getLogger(__name__)

EMBEDDINGS_PATH = "/v1/embeddings"
LABEL = "embeddings"  # the endpoint label of dynamo_frontend_requests
LARGE_RESPONSE = 256 * 1024  # floats; encode responses above this off the event loop

_json = msgspec.json.Encoder()


def add_embeddings_route(app: FastAPI, service: Callable[[], FrontendService]) -> None:
    """Serve ``POST /v1/embeddings`` on ``app`` (``service()``: the running ``FrontendService``)."""

    @app.post(
        EMBEDDINGS_PATH,
        response_model=EmbeddingResponse,
        operation_id="create_embedding",
        summary="Create embeddings",
        responses=error_responses(400, 404, 413, 429, 500, 503),
        openapi_extra=request_body(EmbeddingRequest),
    )
    async def create_embedding(request: Request) -> Response:
        return await handle_embeddings(service(), request)


async def handle_embeddings(service: FrontendService, request: Request) -> Response:
    """parse -> admit -> tokenize -> route -> ``/embed`` -> the response."""
    started = time.monotonic()
    config = service.config
    name: str | None = None
    try:
        body = await read_body(request, config.max_body_size)
        offload = len(body) > LARGE_BODY
        req = await maybe_off_loop(offload, parse_embedding_request, body)
        name = req.model
        served = service.models.get(name)
        if served is not None:
            served.require(EMBEDDINGS)
        model = admit(service.models, name, config.max_inflight_requests)
        with model.hold_slot():
            inputs = await maybe_off_loop(offload, tokenize, model, req)
    except RequestError as exc:
        # Labelled by model only when it is served: client-chosen names must not add series.
        label = name if name is not None and name in service.models.models else "unknown"
        service.metrics.rejected(label, LABEL, exc.status)
        return error_response(exc)

    request_id = request.headers.get("x-request-id") or new_request_id()
    embed = EmbedRequest(request_id=request_id, inputs=inputs, dimensions=req.dimensions)
    prompt_tokens = sum(len(ids) for ids in inputs)
    record = RequestMetrics(service.metrics.model(model.name), model, LABEL, False, started, prompt_tokens)
    status = "499"  # unless it ends otherwise (the client left: the task was cancelled)
    try:
        outputs = await embed_on_worker(service.runtime.request_client, model, embed, req.is_batch)
        record.first_output()
        big = len(outputs) * len(outputs[0].embedding) // 4 > LARGE_RESPONSE
        content = await maybe_off_loop(big, response_body, req, model.name, outputs)
        status = "200"
        return Response(content, media_type="application/json")
    except RequestError as exc:
        status = str(exc.status)
        return error_response(exc)
    except Exception:
        status = "500"
        raise
    finally:
        record.finish(status, 0, None)


def tokenize(model: ServedModel, req: EmbeddingRequest) -> list[list[int]]:
    """Each input as token ids (text through the card's tokenizer), within the model's limits."""
    pre = model.preprocessor
    items = req.texts_or_ids()
    if isinstance(items[0], str):
        encodings = pre.tokenizer.encode_batch(items, add_special_tokens=req.add_special_tokens)
        inputs = [list(e.ids) for e in encodings]
    else:
        inputs = [list(ids) for ids in items if isinstance(ids, list)]
    context = model.card.context_length
    total = 0
    for i, ids in enumerate(inputs):
        param = f"input[{i}]" if req.is_batch else "input"
        if not ids:
            raise bad_request(f"'{param}' must not be empty.", param)
        bad = next((t for t in ids if t >= pre.vocab_size), None)
        if bad is not None:
            raise bad_request(f"Token id {bad} is out of range for a vocabulary of {pre.vocab_size}.", param)
        if len(ids) > context:
            raise RequestError(
                400,
                f"This model's maximum context length is {context} tokens. However, {param} has "
                f"{len(ids)} tokens. Please reduce the length of the input.",
                param=param,
                code="context_length_exceeded",
            )
        total += len(ids)
    if total > MAX_TOKENS_PER_REQUEST:
        raise RequestError(
            400,
            f"Requested {total} tokens, max {MAX_TOKENS_PER_REQUEST} tokens per request.",
            param="input",
            code="max_tokens_per_request",
        )
    return inputs


async def embed_on_worker(
    client: RequestPlaneClient, model: ServedModel, request: EmbedRequest, is_batch: bool
) -> list[EmbedOutput]:
    """Every input's ``EmbedOutput`` in input order, from one worker the model's policy picks;
    another one when a worker cannot be reached or fails before answering."""
    router = model.router
    rid = request.request_id
    tried: set[int] = set()
    while True:
        try:
            choice = router.select(request.inputs[0], rid, exclude=tried)
        except NoWorkers:
            raise service_unavailable(f"no reachable worker serves model '{model.name}' right now") from None
        except AllWorkersBusy:
            raise too_many_requests("every worker of this model is busy; retry shortly") from None
        iid = choice.instance_id
        record = model.records.get(iid)
        try:
            if record is None:
                tried.add(iid)
                continue
            return await _embed_on(client, record, request, is_batch)
        except InstanceUnreachable as exc:
            log.warning("instance %x unreachable (%s); trying another", iid, exc)
            router.mark_unreachable(iid)
            tried.add(iid)
        except RemoteError as exc:
            if not exc.retryable:
                raise service_unavailable(f"worker error: {exc}") from exc
            log.info("instance %x refused embedding request %s (%s); trying another", iid, rid, exc.code)
            tried.add(iid)
        except StreamBroken as exc:
            log.warning("instance %x failed during embedding request %s (%s); trying another", iid, rid, exc)
            tried.add(iid)
        finally:
            router.on_finished(rid)


async def _embed_on(
    client: RequestPlaneClient, record: InstanceRecord, request: EmbedRequest, is_batch: bool
) -> list[EmbedOutput]:
    stream = await client.stream(
        record.address, embed_endpoint_name(record.endpoint_id), request, {"request_id": request.request_id}
    )
    outputs: list[EmbedOutput | None] = [None] * len(request.inputs)
    try:
        async for item in stream:
            out = msgspec.convert(item, EmbedOutput)
            if out.error is not None:
                raise _engine_error(out, is_batch)
            outputs[out.index] = out
    finally:
        if not stream.finished:
            await stream.aclose()
    done = [o for o in outputs if o is not None]
    if len(done) != len(outputs):
        raise internal_error(f"the worker answered {len(done)} of {len(outputs)} inputs")
    return done


def _engine_error(out: EmbedOutput, is_batch: bool) -> RequestError:
    if out.error_kind != "invalid":
        log.error("embedding failed in the engine: %s", out.error)
        return internal_error(f"engine error: {out.error}")
    param = out.error_param
    if param == "input" and is_batch:
        param = f"input[{out.index}]"
    return bad_request(str(out.error), param)


def response_body(req: EmbeddingRequest, model: str, outputs: list[EmbedOutput]) -> bytes:
    """The JSON response: vectors as floats, or base64 of their float32 little-endian bytes."""
    data: list[dict[str, Any]] = []
    for i, out in enumerate(outputs):
        vector: list[float] | str
        if req.encoding_format == "base64":
            vector = base64.b64encode(out.embedding).decode()
        else:
            floats = array("f", out.embedding)
            if sys.byteorder != "little":
                floats.byteswap()
            vector = floats.tolist()
        data.append({"object": "embedding", "index": i, "embedding": vector})
    tokens = sum(o.prompt_tokens for o in outputs)
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return _json.encode({"object": "list", "data": data, "model": model, "usage": usage})
