"""Stage 4b, collect (``"stream": false``): engine output batches -> one JSON response.

Journey: route -> **collect** -> client. The outputs are accumulated by the ``ResponseBuilder``
until the finish; an engine failure before then is an error response with its status.
"""

from __future__ import annotations

import time

from starlette.responses import JSONResponse, Response

from dynamo.frontend.metrics import RequestMetrics
from dynamo.frontend.responses import ResponseBuilder, error_response
from dynamo.frontend.stages.route import Routed
from dynamo.llm.errors import RequestError


async def collect(
    routed: Routed, builder: ResponseBuilder, record: RequestMetrics, headers: dict[str, str]
) -> Response:
    """The whole response, once the engine finished; the request's metrics with it."""
    batches = routed.batches
    status = "500"  # unless it ends otherwise
    try:
        text, lps = builder.consume(routed.first)
        builder.add_to_full(text, lps)
        async for batch in batches:
            text, lps = builder.consume(batch)
            builder.add_to_full(text, lps)
            if builder.done:
                break
        if builder.completion_tokens > 1:
            itl = (time.monotonic() - record.first_at) / (builder.completion_tokens - 1)
            record.mm.itl.observe(itl)
        status = "200"
        return JSONResponse(builder.full_response(), headers=headers)
    except RequestError as exc:
        status = str(exc.status)
        return error_response(exc)
    finally:
        await batches.aclose()
        record.finish(status, builder.completion_tokens, builder.cached_tokens)
