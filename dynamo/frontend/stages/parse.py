"""Stage 1, parse: the HTTP request body -> a validated OpenAI request.

Journey: HTTP -> **parse** -> preprocess -> route -> stream | collect. ``read_body`` takes at most
``--max-body-size`` bytes (413 beyond; a larger Content-Length is refused before reading; a client
that leaves, or is cut off by ``--http-body-timeout``, before its body is complete is a 499 that nobody
reads, never an unexpected error);
``validate`` applies the endpoint's protocol type (``dynamo.llm.openai``; 400 in the OpenAI error
shape, naming the field). Bodies above ``LARGE_BODY`` (1 MiB) are validated off the event loop, so
one huge prompt does not hold it for milliseconds.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import ClientDisconnect, Request

from dynamo.frontend.endpoints import CompletionEndpoint
from dynamo.frontend.off_loop import maybe_off_loop
from dynamo.llm.errors import RequestError, payload_too_large

# Bytes; bodies above this are parsed and preprocessed in a thread. Parsing and templating hold the
# GIL wherever they run, so a thread gains no parallelism and makes the loop wait for the GIL in 5 ms
# slices: worth it only for a body that would hold the loop for milliseconds (a cached 130 kB chat
# body: ~80 us to parse, ~280 us to preprocess). Below, the admission pacer spreads a burst over
# loop turns, and a prompt the prefix cache does not hold still goes to a thread to be tokenized
# without the GIL (``preprocess``).
LARGE_BODY = 1024 * 1024
CLIENT_CLOSED = 499  # the client went away before its request was read (nginx's status for it)


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, or ``RequestError(413)`` once it exceeds ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise payload_too_large(limit)
    chunks = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise payload_too_large(limit)
            chunks.append(chunk)
    except ClientDisconnect:
        raise RequestError(
            CLIENT_CLOSED,
            "The client closed the connection before sending the whole body.",
            code="client_closed",
        ) from None
    return b"".join(chunks)


async def validate(endpoint: CompletionEndpoint, body: bytes, offload: bool) -> Any:
    """The endpoint's request type parsed from ``body`` (in a thread when ``offload``)."""
    return await maybe_off_loop(offload, endpoint.parse, body)
