"""Event-loop lag: how late the frontend's event loop runs a timer that was due.

Journey: beside every stage (HTTP -> parse -> preprocess -> route -> stream): every stream of a
frontend process shares its one event loop, so anything that holds the loop (a prompt tokenized or
a template rendered on it, a big JSON body parsed on it) delays all of them. ``LoopLagMonitor`` is a
task, owned by the frontend's lifespan, that sleeps ``interval`` seconds again and again and
observes how much later than due it woke, in ``dynamo_frontend_event_loop_lag_seconds`` (a
histogram; ``max_seconds`` keeps the largest since start). Cost: one timer wake-up per interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from prometheus_client import Histogram

DEFAULT_INTERVAL = 0.02  # seconds between wake-ups


class LoopLagMonitor:
    """Observes the running loop's lag into ``histogram`` from ``start()`` until ``stop()``."""

    def __init__(self, histogram: Histogram, interval: float = DEFAULT_INTERVAL) -> None:
        self.histogram = histogram
        self.interval = interval
        self.max_seconds = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start sampling on the running loop (once)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="event-loop-lag")

    async def stop(self) -> None:
        """Stop sampling and wait for the task to end."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        interval = self.interval
        observe = self.histogram.observe
        clock = time.monotonic  # uvloop's loop.time() has a 1 ms resolution and is cached per iteration
        while True:
            due = clock() + interval
            await asyncio.sleep(interval)
            lag = max(0.0, clock() - due)
            observe(lag)
            if lag > self.max_seconds:
                self.max_seconds = lag
