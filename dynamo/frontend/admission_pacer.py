"""Admission pacing: how much new-request work a frontend's event loop starts in one turn.

Journey: HTTP -> **pace** -> parse -> preprocess -> route -> stream. Every stream of a frontend
process shares one event loop, and a loop turn runs every callback that was ready when it began.
Closed-loop clients whose requests ended together send their next ones together, so a burst of
arrivals is parsed, templated and tokenized in one turn: at 128 streams of 2k-token prompts that is
tens of milliseconds during which no token of any other stream is sent and no health probe or
timer is served.

``AdmissionPacer`` lets new requests begin their on-loop work (parse and preprocess) until
``budget`` seconds of it were spent in the current turn; later arrivals wait, in arrival order,
for the next turns, each of which releases about ``budget`` worth (by a running mean of recent
costs; a released request that finds its group already spent the budget waits again, first).
The work is the same, only spread: the turns stay short, streams in flight keep flowing between
them, and the first requests of a burst reach the workers sooner. A budget of 0 turns pacing off
(``DYN_ADMISSION_BUDGET_MS``, read with the frontend's flags in ``dynamo.frontend.args``).
"""

from __future__ import annotations

import asyncio
import collections

DEFAULT_BUDGET = 0.002  # seconds of new requests' on-loop work per loop turn
_COST_WEIGHT = 0.1  # weight of the newest request in the running mean of costs
_FIRST_COST = 0.0002  # seconds: the mean's start, until requests have been measured


class _Group:
    """Requests one turn released together; they all run in the turn after it, in order."""

    __slots__ = ("spent",)

    def __init__(self) -> None:
        self.spent = 0.0


class Admission:
    """One admitted request: ``done(seconds)`` reports its on-loop work."""

    __slots__ = ("_group", "_pacer")

    def __init__(self, pacer: AdmissionPacer, group: _Group | None) -> None:
        self._pacer = pacer
        self._group = group

    def done(self, seconds: float) -> None:
        """Report the request's on-loop work (counted at most ``budget``: one request that waited
        on a thread meanwhile must not hold back the turns after it)."""
        pacer = self._pacer
        seconds = min(seconds, pacer.budget)
        pacer.mean_cost += _COST_WEIGHT * (seconds - pacer.mean_cost)
        if self._group is not None:
            self._group.spent += seconds
        else:
            pacer.turn_spent += seconds
            pacer.next_turn()  # this turn's count ends with it


class AdmissionPacer:
    """``admission = await enter()`` before a request's on-loop work, ``admission.done(seconds)``
    after it."""

    def __init__(self, budget: float) -> None:
        self.budget = budget
        self.mean_cost = _FIRST_COST
        self.deferred = 0  # requests that waited for a later turn, since start
        self.turn_spent = 0.0  # this turn's on-loop work (estimated for the requests it released)
        self._queue: collections.deque[asyncio.Future[_Group]] = collections.deque()
        self._requeued = 0  # of a released group that found its turn spent: back at the queue's head
        self._turn_pending = False

    @property
    def waiting(self) -> int:
        return sum(1 for fut in self._queue if not fut.done())

    async def enter(self) -> Admission:
        """At once while this turn's budget lasts and nobody waits; else in a later turn."""
        if self.budget <= 0:
            return Admission(self, None)
        if self.turn_spent < self.budget and not self._queue:
            self.next_turn()
            return Admission(self, None)
        self.deferred += 1
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[_Group] = loop.create_future()
        self._queue.append(fut)
        self.next_turn()
        while True:
            group = await fut  # cancelled while waiting: the turn skips it
            if group.spent < self.budget:  # the work of its group's earlier members, this turn
                return Admission(self, group)
            # released on an estimate that proved low: first in line again, in arrival order
            fut = loop.create_future()
            self._queue.insert(self._requeued, fut)
            self._requeued += 1
            self.next_turn()

    def next_turn(self) -> None:
        if not self._turn_pending:
            self._turn_pending = True
            asyncio.get_running_loop().call_soon(self._turn)

    def _turn(self) -> None:
        """Runs once per loop turn while requests arrive: a new budget, spent first on the queue.

        The requests released here run in the next turn, so their estimated cost is charged to
        this turn's budget: arrivals later in this turn queue behind them instead of passing."""
        self._turn_pending = False
        self._requeued = 0
        self.turn_spent = 0.0
        queue = self._queue
        group = _Group()
        while queue and self.turn_spent < self.budget:
            fut = queue.popleft()
            if not fut.done():
                fut.set_result(group)
                self.turn_spent += self.mean_cost
        if queue:
            self.next_turn()
