"""Stage 4b, collect (``"stream": false``): engine output batches -> one JSON response.

Journey: route -> **collect** -> client. The outputs are accumulated by the ``ResponseBuilder``
until every choice finished (several choices are read concurrently, one task each); an engine
failure of any choice before then is an error response with its status, and ends the others.
"""

from __future__ import annotations

import asyncio
import time

from starlette.responses import JSONResponse, Response

from dynamo.frontend.metrics import RequestMetrics
from dynamo.frontend.responses import ResponseBuilder, error_response
from dynamo.frontend.stages.route import Routed
from dynamo.llm.errors import RequestError


async def collect(
    routed: list[Routed], builder: ResponseBuilder, record: RequestMetrics, headers: dict[str, str]
) -> Response:
    """The whole response, once the engines finished; the request's metrics with it."""
    status = "500"  # unless it ends otherwise
    try:
        if len(routed) == 1:
            await _collect_choice(0, routed[0], builder, record)
        else:
            tasks = [
                asyncio.ensure_future(_collect_choice(i, r, builder, record)) for i, r in enumerate(routed)
            ]
            try:
                await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
                for task in tasks:
                    if task.done() and not task.cancelled() and task.exception() is not None:
                        raise task.exception()  # type: ignore[misc]
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        status = "200"
        return JSONResponse(builder.full_response(), headers=headers)
    except asyncio.CancelledError:
        status = "499"  # the client left (``dynamo.frontend.disconnect``); its streams are closed
        raise
    except RequestError as exc:
        status = str(exc.status)
        return error_response(exc)
    finally:
        record.finish(status, builder.completion_tokens, builder.cached_tokens)


async def _collect_choice(i: int, routed: Routed, builder: ResponseBuilder, record: RequestMetrics) -> None:
    """Choice ``i``'s outputs into the builder, until it finished; its stream closed either way."""
    batches = routed.batches
    choice = builder.choices[i]
    try:
        builder.collect(i, routed.first)
        while not choice.done:
            try:
                batch = await batches.__anext__()
            except StopAsyncIteration:
                builder.collect_end(i)
                break
            builder.collect(i, batch)
        if choice.completion_tokens > 1:
            itl = (time.monotonic() - record.first_at) / (choice.completion_tokens - 1)
            record.mm.itl.observe(itl)
    finally:
        await batches.aclose()
