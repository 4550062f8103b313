"""Stage 4a, stream (``"stream": true``): engine output batches -> server-sent events, as they come.

Journey: route -> **stream** -> client. Each batch becomes one SSE write (``ResponseBuilder``
formats it); the last events and ``data: [DONE]`` go out with the end of the body. A failure midway
becomes an error event (the status line is long gone). A client that leaves cancels the stream,
which cancels the work on the worker (``SSEResponse``); the request is then counted as 499.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator

from prometheus_client import Histogram

from dynamo.frontend.metrics import RequestMetrics
from dynamo.frontend.responses import DONE, ResponseBuilder, sse
from dynamo.frontend.sse import SSEResponse
from dynamo.frontend.stages.route import Batch, Routed
from dynamo.llm.errors import RequestError, internal_error

log = logging.getLogger(__name__)


def stream_response(
    routed: Routed, builder: ResponseBuilder, record: RequestMetrics, headers: dict[str, str]
) -> SSEResponse:
    """The streaming HTTP response; the request's metrics are finished when it ends."""

    def on_done(disconnected: bool) -> None:
        record.finish("499" if disconnected else "200", builder.completion_tokens, builder.cached_tokens)

    events = _events(routed.first, routed.batches, builder, record.mm.itl)
    return SSEResponse(events, on_done, headers, last_event=DONE)


async def _events(
    batch: Batch, batches: AsyncGenerator[Batch, None], builder: ResponseBuilder, itl: Histogram
) -> AsyncGenerator[bytes, None]:
    last = time.monotonic()
    final = DONE
    try:
        while True:
            before = builder.completion_tokens
            text, lps = builder.consume(batch)
            out = builder.chunk(text, lps)
            if builder.done:
                final = out + DONE  # written with the end of the body
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
        if not builder.done:  # the engine ended without a finish reason
            builder.finish_reason = "stop"
            final = builder.chunk("", None) + DONE
    except RequestError as exc:
        final = sse(exc.to_dict()) + DONE
    except Exception:
        log.exception("stream %s failed", builder.id)
        final = sse(internal_error().to_dict()) + DONE
    finally:
        await batches.aclose()
    yield final
