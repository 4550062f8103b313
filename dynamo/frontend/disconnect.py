"""Stop a request's engine work when its client hangs up before the response starts.

Journey: HTTP -> parse -> preprocess -> **route -> collect** (while the client may leave) -> client.
``until_disconnect(receive, work)`` runs ``work`` as a task beside a watcher on the ASGI ``receive``
channel. The request body must have been read already, so the next message the server delivers is
``http.disconnect``; if it comes before ``work`` is done, ``work`` is cancelled (which closes its
engine streams: the workers abort the request and free its KV) and ``ClientGone`` is raised. Once a
streaming response starts, ``SSEResponse`` watches instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from starlette.types import Receive

T = TypeVar("T")


class ClientGone(Exception):
    """The client disconnected before its response started; its work was cancelled."""


async def until_disconnect(receive: Receive, work: Coroutine[Any, Any, T]) -> T:
    """``await work``, unless the client disconnects first (then ``ClientGone``)."""
    task = asyncio.ensure_future(work)
    gone = False

    async def watch() -> None:
        nonlocal gone
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                gone = True
                task.cancel()
                return

    watcher = asyncio.ensure_future(watch())
    try:
        return await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if gone and (current is None or not current.cancelling()):
            raise ClientGone from None
        raise
    finally:
        watcher.cancel()
