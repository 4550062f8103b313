"""Turn budget for the way back: how long one event-loop turn may spend on streams' outputs.

Journey: engine -> request plane -> **here** -> stream -> client. An engine step that ends for many
streams at once (a batch of 128) wakes all of them in one loop turn, and each one's output is
detokenized, formatted and written before the loop serves anything else: with 128 streams that
turn runs past 20 ms, and health probes, new requests and timers wait for it.

``TurnBudget.pace()`` is awaited by a stream before it handles an output: it returns at once while
the current turn has run less than ``budget`` seconds; past that the stream waits, in arrival
order, for a later turn. A turn's start is stamped by a callback that runs first in each turn
while streams are active (``call_soon`` from the turn before). The work is the same, only spread:
a stream deferred once is a turn late (about ``budget``), every other stream and probe is served
between the turns.
"""

from __future__ import annotations

import asyncio
import collections
import time

STREAM_TURN_BUDGET = 0.008  # seconds of a loop turn that streams' outputs may take


class TurnBudget:
    """``await pace()`` before handling one output of a stream."""

    def __init__(self, budget: float = STREAM_TURN_BUDGET) -> None:
        self.budget = budget
        self.deferred = 0  # outputs that waited for a later turn, since start
        self._start = 0.0  # when the current turn was stamped (perf_counter)
        self._stamp_pending = False
        self._active = False  # a stream handled an output since the last stamp
        self._queue: collections.deque[asyncio.Future[None]] = collections.deque()
        self._requeued = 0

    async def pace(self) -> None:
        if self.budget <= 0:
            return
        now = time.perf_counter()
        self._active = True
        if not self._stamp_pending:  # streams were quiet: this turn's start is unknown, take now
            self._start = now
            self._schedule_stamp()
        if not self._queue and now - self._start < self.budget:
            return
        self.deferred += 1
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._queue.append(fut)
        while True:
            await fut  # cancelled while waiting (the client left): the stamp skips it
            self._active = True
            if time.perf_counter() - self._start < self.budget:
                return
            fut = loop.create_future()  # this turn is spent too: first in line for the next
            self._queue.insert(self._requeued, fut)
            self._requeued += 1
            if not self._stamp_pending:
                self._schedule_stamp()

    def _schedule_stamp(self) -> None:
        self._stamp_pending = True
        asyncio.get_running_loop().call_soon(self._stamp)

    def _stamp(self) -> None:
        """Early in a turn: its start; the waiting streams are released to run in the next turn,
        after that turn's own stamp (scheduled first, so it runs before them)."""
        self._stamp_pending = False
        self._start = time.perf_counter()
        self._requeued = 0
        if self._active or self._queue:
            self._active = False
            self._schedule_stamp()
        queue = self._queue
        while queue:
            fut = queue.popleft()
            if not fut.done():
                fut.set_result(None)
