"""Event-loop lag: how late the frontend's event loop runs a timer that was due.

Journey: beside every stage (HTTP -> parse -> preprocess -> route -> stream): every stream of a
frontend process shares its one event loop, so anything that holds the loop (a prompt tokenized or
a template rendered on it, a big JSON body parsed on it) delays all of them. ``LoopLagMonitor`` is a
task, owned by the frontend's lifespan, that sleeps ``interval`` seconds again and again and
observes how much later than due it woke, in ``dynamo_frontend_event_loop_lag_seconds`` (a
histogram; ``max_seconds`` keeps the largest since start). Cost: one timer wake-up per interval.

With ``stall_watch`` (``dynamo.frontend.loop_stall``, ``DYN_LOOP_STALL_DUMP_MS``) each wake-up
is also a beat of that watch, which logs the loop thread's stack when the loop is held.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from prometheus_client import Histogram

from dynamo.frontend.loop_stall import StallWatch

DEFAULT_INTERVAL = 0.02  # seconds between wake-ups


class LoopLagMonitor:
    """Observes the running loop's lag into ``histogram`` from ``start()`` until ``stop()``; with
    ``stall_threshold`` seconds, also logs the loop thread's stack when it is held that long."""

    def __init__(
        self, histogram: Histogram, interval: float = DEFAULT_INTERVAL, stall_threshold: float | None = None
    ) -> None:
        self.histogram = histogram
        self.interval = interval
        self.stall_watch = StallWatch(stall_threshold, interval) if stall_threshold else None
        self.max_seconds = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start sampling on the running loop (once)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="event-loop-lag")
            if self.stall_watch is not None:
                self.stall_watch.start()

    async def stop(self) -> None:
        """Stop sampling and wait for the task (and the stall watch, first: no beat follows) to end."""
        if self.stall_watch is not None:
            await asyncio.to_thread(self.stall_watch.stop)
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        interval = self.interval
        observe = self.histogram.observe
        clock = time.monotonic  # uvloop's loop.time() has a 1 ms resolution and is cached per iteration
        beat = self.stall_watch.beat if self.stall_watch is not None else None
        while True:
            due = clock() + interval
            if beat is not None:
                beat()
            await asyncio.sleep(interval)
            lag = max(0.0, clock() - due)
            observe(lag)
            if lag > self.max_seconds:
                self.max_seconds = lag
