"""A bare request-plane server process for liveness tests: ``python -m tests.runtime.plane_server_proc``.

Serves ``t.w.tick`` on 127.0.0.1: the request ``{"n": N, "delay": s}`` streams N items, sleeping
``delay`` between them. Logs ``PORT <port>`` once listening and ``CANCELLED`` when a stream's
handler is cancelled (its caller went away).
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncGenerator
from typing import Any

from dynamo.runtime.request_plane import RequestContext, RequestPlaneServer

log = logging.getLogger("plane_server_proc")


async def tick(request: Any, ctx: RequestContext) -> AsyncGenerator[int, None]:
    try:
        for i in range(int(request.get("n", 1))):
            await asyncio.sleep(float(request.get("delay", 0)))
            yield i
    except asyncio.CancelledError:
        log.info("CANCELLED %s", ctx.request_id)
        raise


async def main() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stdout)
    server = RequestPlaneServer("127.0.0.1", 0)
    server.register("t.w.tick", tick)
    await server.start()
    log.info("PORT %d", server.port)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
