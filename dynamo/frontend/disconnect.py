"""Stop a request's engine work when its client hangs up (journey: HTTP -> parse -> preprocess ->
**route -> stream | collect**, while the client may leave -> client).

``DisconnectWatch(receive)``, made once a request's body has been read, is one task reading the
ASGI ``receive`` channel for the rest of the request: the next message the server delivers is
``http.disconnect``, and when it comes the request's own task is cancelled. Whatever it was
awaiting (routing, collecting, writing the stream) sees ``CancelledError`` and closes its engine
streams, so the workers abort the request and free its KV. ``run(work)`` turns that cancellation
into ``ClientGone``; ``SSEResponse`` asks ``left()`` itself. ``stop()`` ends the watch; it must
run by the time the response is complete, when the server starts answering every ``receive`` with
``http.disconnect``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from starlette.types import Receive

T = TypeVar("T")


class ClientGone(Exception):
    """The client disconnected before its response was ready; its work was cancelled."""


class DisconnectWatch:
    """Cancels the task that made it when the client disconnects (one watcher task per request)."""

    __slots__ = ("_task", "_watcher", "gone")

    def __init__(self, receive: Receive) -> None:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("DisconnectWatch needs a running task")
        self._task = task
        self.gone = False
        self._watcher: asyncio.Task[None] | None = asyncio.get_running_loop().create_task(
            self._watch(receive)
        )

    async def _watch(self, receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.gone = True
                self._task.cancel()
                return

    def stop(self) -> None:
        """Stop watching (idempotent)."""
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None

    def left(self) -> bool:
        """Called on a ``CancelledError`` in the request's task: whether the client's departure
        (and nothing else, such as a server shutting down) caused it; if so the cancellation is
        consumed and the task may go on to record the request."""
        return self.gone and self._task.uncancel() == 0

    async def run(self, work: Coroutine[Any, Any, T]) -> T:
        """``await work``, unless the client disconnects first (then ``ClientGone``)."""
        try:
            return await work
        except asyncio.CancelledError:
            if self.left():
                raise ClientGone from None
            raise
