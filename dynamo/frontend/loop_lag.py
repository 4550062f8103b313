"""Event-loop lag: how late the frontend's event loop runs a timer that was due.

Journey: beside every stage (HTTP -> parse -> preprocess -> route -> stream): every stream of a
frontend process shares its one event loop, so anything that holds the loop (a prompt tokenized or
a template rendered on it, a big JSON body parsed on it) delays all of them. ``LoopLagMonitor`` is a
task, owned by the frontend's lifespan, that sleeps ``interval`` seconds again and again and
observes how much later than due it woke, in ``dynamo_frontend_event_loop_lag_seconds`` (a
histogram; ``max_seconds`` keeps the largest since start). Cost: one timer wake-up per interval.

``stall_dump`` (``DYN_LOOP_STALL_DUMP_MS``, off by default) is a diagnostic: at each wake-up the
monitor arms ``faulthandler``'s watchdog for its next one, so when a wake-up is ``stall_dump``
seconds late, every thread's Python stack is written to stderr *while the loop is still held*
(the watchdog is a C thread: it needs no GIL and no loop), showing what held it: one blocking
call, or ordinary request work in one long loop iteration.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import logging
import os
import sys
import time
from typing import TextIO

from prometheus_client import Histogram

log = logging.getLogger(__name__)

DEFAULT_INTERVAL = 0.02  # seconds between wake-ups
STALL_DUMP_ENV = "DYN_LOOP_STALL_DUMP_MS"


def stall_dump_from_env(environ: dict[str, str] | os._Environ[str] = os.environ) -> float | None:
    """``DYN_LOOP_STALL_DUMP_MS`` in seconds; ``None`` when unset or 0 (a clear error otherwise)."""
    raw = environ.get(STALL_DUMP_ENV, "").strip()
    if not raw:
        return None
    try:
        ms = float(raw)
    except ValueError:
        raise ValueError(f"{STALL_DUMP_ENV} must be a number of milliseconds, not {raw!r}") from None
    if ms < 0:
        raise ValueError(f"{STALL_DUMP_ENV} must not be negative, not {raw!r}")
    return ms / 1000 if ms else None


class LoopLagMonitor:
    """Observes the running loop's lag into ``histogram`` from ``start()`` until ``stop()``; with
    ``stall_dump`` seconds, also dumps every thread's stack when a wake-up is that late."""

    def __init__(
        self,
        histogram: Histogram,
        interval: float = DEFAULT_INTERVAL,
        stall_dump: float | None = None,
        stall_file: TextIO | None = None,
    ) -> None:
        self.histogram = histogram
        self.interval = interval
        self.stall_dump = stall_dump
        self.stall_file = stall_file  # where the stacks go (None: stderr); needs a file descriptor
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
        if self.stall_dump is not None:
            faulthandler.cancel_dump_traceback_later()

    async def _run(self) -> None:
        interval = self.interval
        observe = self.histogram.observe
        clock = time.monotonic  # uvloop's loop.time() has a 1 ms resolution and is cached per iteration
        stall = self.stall_dump
        out = self.stall_file or sys.stderr
        while True:
            due = clock() + interval
            if stall is not None:
                faulthandler.dump_traceback_later(interval + stall, file=out)
            await asyncio.sleep(interval)
            lag = max(0.0, clock() - due)
            observe(lag)
            if stall is not None and lag >= stall:
                log.warning("event loop held %.0f ms; every thread's stack was dumped to stderr", lag * 1000)
            if lag > self.max_seconds:
                self.max_seconds = lag
