"""Helpers for the pacing tests (admission pacer, turn budget): count loop turns, hold the loop's
thread, and run a burst of tasks that arrive in one turn."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


class TurnCounter:
    """Counts loop turns: a callback that re-schedules itself runs once per turn."""

    def __init__(self) -> None:
        self.turn = 0
        self._handle: asyncio.Handle | None = None

    def start(self) -> None:
        self._handle = asyncio.get_running_loop().call_soon(self._tick)

    def _tick(self) -> None:
        self.turn += 1
        self._handle = asyncio.get_running_loop().call_soon(self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()


def burn(seconds: float) -> float:
    """Hold the loop's thread for ``seconds`` (a request's on-loop work); the time taken."""
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        pass
    return time.perf_counter() - start


async def burst(n: int, step: Callable[[Callable[[], None]], Awaitable[None]]) -> tuple[list[int], list[int]]:
    """``n`` tasks started in one turn, each running ``step(mark)``, which calls ``mark()`` as its
    work begins; the order they began and each one's turn."""
    turns = TurnCounter()
    turns.start()
    began: list[int] = []
    turn_of = [-1] * n

    async def one(i: int) -> None:
        def mark() -> None:
            began.append(i)
            turn_of[i] = turns.turn

        await step(mark)

    try:
        await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(n))), 10)
    finally:
        turns.stop()
    return began, turn_of
