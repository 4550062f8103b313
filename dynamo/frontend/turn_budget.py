"""Turn budget for the way back: how long one event-loop turn may spend on streams' outputs.

Journey: engine -> request plane -> **here** -> stream -> client. An engine step that ends for many
streams at once (a batch of 128) wakes all of them in one loop turn, and each one's output is
detokenized, formatted and written before the loop serves anything else: with 128 streams that
turn runs past 20 ms, and health probes, new requests and timers wait for it.

``TurnBudget.pace()`` is awaited by a stream before it handles an output: it returns at once while
the current turn has run less than ``budget`` seconds; past that the stream waits, in arrival
order, for a later turn. A turn's start is stamped by a callback that runs first in each turn
while streams are active (``call_soon`` from the turn before). Waiting streams are released in
batches of about one budget's worth (by a running mean of the time between two outputs let through
in one turn), one batch a turn: a stamp releases the first, the last stream of a batch to run
releases the next; the others stay asleep, so a waiting stream wakes once, not once a turn. The
work is the same, only spread: a stream deferred once is a turn late (about ``budget``), every
other stream and probe is served between the turns.
"""

from __future__ import annotations

import asyncio
import collections
import time

STREAM_TURN_BUDGET = 0.005  # seconds of a loop turn that streams' outputs may take
_COST_WEIGHT = 0.1  # weight of the newest sample in the running mean of an output's cost
_FIRST_COST = 0.00005  # seconds: the mean's start, until outputs have been measured


class TurnBudget:
    """``await pace()`` before handling one output of a stream."""

    def __init__(self, budget: float = STREAM_TURN_BUDGET) -> None:
        self.budget = budget
        self.deferred = 0  # outputs that waited for a later turn, since start
        self.rewaits = 0  # released outputs that found their turn spent and waited again, since start
        self.mean_cost = _FIRST_COST  # seconds between two outputs let through in one turn
        self._start = 0.0  # when the current turn was stamped (perf_counter)
        self._last_through = 0.0  # when this turn last let an output through (0: none yet)
        self._stamp_pending = False
        self._active = False  # a stream handled an output since the last stamp
        self._queue: collections.deque[asyncio.Future[None]] = collections.deque()
        self._released = 0  # released from the queue and not yet awake
        self._requeued = 0

    async def pace(self) -> None:
        if self.budget <= 0:
            return
        now = time.perf_counter()
        self._active = True
        if not self._stamp_pending:  # streams were quiet: this turn's start is unknown, take now
            self._start = now
            self._schedule_stamp()
        if not self._queue and not self._released and now - self._start < self.budget:
            self._through(now)
            return
        self.deferred += 1
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._queue.append(fut)
        while True:
            try:
                await fut  # cancelled while waiting (the client left): the release skips it
            except BaseException:
                if fut.done() and not fut.cancelled():  # released, then cancelled before it ran
                    self._woke()
                raise
            self._active = True
            now = time.perf_counter()
            if now - self._start < self.budget:
                self._woke()
                self._through(now)
                return
            # The estimate was low: first in line again. Every later member of its batch finds
            # the turn spent too, so the next stamp (not this turn) releases them, still in order.
            self.rewaits += 1
            self._released -= 1
            fut = loop.create_future()
            self._queue.insert(self._requeued, fut)
            self._requeued += 1
            if not self._stamp_pending:
                self._schedule_stamp()

    def _through(self, now: float) -> None:
        """An output goes ahead at ``now``: the time since the turn's previous one is a sample of
        an output's cost (with whatever else ran between them: an estimate from above)."""
        if self._last_through:
            sample = min(now - self._last_through, self.budget)
            self.mean_cost += _COST_WEIGHT * (sample - self.mean_cost)
        self._last_through = now

    def _woke(self) -> None:
        """A released stream goes ahead (or was cancelled); the last of a batch releases the next
        one, which runs in the next turn: one batch a turn, in arrival order."""
        self._released -= 1
        if self._released == 0:
            self._release()

    def _release(self) -> None:
        """Wake about a budget's worth of the waiting streams, first in line first."""
        queue = self._queue
        room = self.budget
        while queue and room > 0:
            fut = queue.popleft()
            if not fut.done():  # a cancelled one (its client left) is dropped
                fut.set_result(None)
                self._released += 1
                room -= self.mean_cost

    def _schedule_stamp(self) -> None:
        self._stamp_pending = True
        asyncio.get_running_loop().call_soon(self._stamp)

    def _stamp(self) -> None:
        """Early in a turn: its start. With no batch released and not yet run, the first one is
        released here (it runs in the next turn, after that turn's own stamp: scheduled first)."""
        self._stamp_pending = False
        self._start = time.perf_counter()
        self._last_through = 0.0
        self._requeued = 0
        if self._active or self._queue:
            self._active = False
            self._schedule_stamp()
        if not self._released:
            self._release()
