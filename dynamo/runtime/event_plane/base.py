"""Event plane: fire-and-forget publish/subscribe of typed events between processes.

KV cache events and load metrics travel here (subjects in ``dynamo.llm.kv_events``). A subject
ending in ``.>`` subscribes to everything under that prefix. Delivery is at-most-once: consumers
that need every event detect gaps by event id and resynchronise, and can ask to be told when the
plane's connection came back (``on_reconnect``), after which events may have been lost unseen.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import AsyncIterator, Callable

log = logging.getLogger(__name__)


def subject_matches(pattern: str, subject: str) -> bool:
    """True if ``subject`` is ``pattern`` or lies under a ``prefix.>`` pattern."""
    if pattern.endswith(".>"):
        return subject.startswith(pattern[:-1])
    return subject == pattern


class EventPlane(abc.ABC):
    """Publish bytes on a subject; subscribe to a subject (or ``prefix.>``)."""

    def __init__(self) -> None:
        self._reconnect_callbacks: list[Callable[[], None]] = []

    def on_reconnect(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (on the event loop; it must not block) each time the connection to the
        plane is re-established: events published meanwhile may never arrive."""
        self._reconnect_callbacks.append(callback)

    def _reconnected(self) -> None:
        for callback in list(self._reconnect_callbacks):
            try:
                callback()
            except Exception:
                log.exception("event plane reconnect callback failed")

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def publish(self, subject: str, payload: bytes) -> None:
        """Send ``payload`` to every current subscriber of ``subject`` (never blocks for long)."""

    @abc.abstractmethod
    def subscribe(self, subject: str) -> AsyncIterator[tuple[str, bytes]]:
        """``(subject, payload)`` pairs as they arrive, until the iterator is closed."""
