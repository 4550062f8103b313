"""The way back's turn budget: outputs that arrive together are handled over several loop turns,
in arrival order, none lost (a cancelled stream included), and the budget stops stamping turns
when the streams are quiet (no loop kept busy by it)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from dynamo.frontend import turn_budget
from dynamo.frontend.turn_budget import TurnBudget
from tests.frontend.loop_turns import burn, burst


async def _outputs(budget: TurnBudget, n: int, cost: float) -> tuple[list[int], list[int]]:
    """``n`` streams whose outputs arrive in one turn; the order they were handled and each one's turn."""

    async def stream(handled: Callable[[], None]) -> None:
        await budget.pace()
        handled()
        burn(cost)

    return await burst(n, stream)


def test_outputs_of_one_step_are_spread_over_turns_in_order() -> None:
    budget = TurnBudget(0.004)
    handled, turn_of = asyncio.run(_outputs(budget, 16, 0.001))
    assert handled == list(range(16))
    per_turn = [turn_of.count(t) for t in sorted(set(turn_of))]
    assert max(per_turn) <= 5, per_turn  # ~4 ms a turn of 1 ms outputs (the last may pass it)
    assert len(per_turn) >= 4, per_turn
    assert budget.deferred > 0


class FakeClock:
    """``time.perf_counter`` for the budget, moved only by the outputs' work: a test of the release
    schedule that the machine's other jobs (preempting the loop mid-turn) cannot disturb."""

    def __init__(self) -> None:
        self.now = 1000.0

    def perf_counter(self) -> float:
        return self.now


def test_a_waiting_output_wakes_about_once_not_once_a_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each stamp releases about a budget's worth of the waiting streams (by the measured cost of
    an output); the others sleep on, instead of every waiting stream waking each turn to find the
    turn spent (which made a turn of 128 waiting streams mostly wake-ups)."""
    clock = FakeClock()
    monkeypatch.setattr(turn_budget, "time", clock)
    budget = TurnBudget(0.002)

    async def stream(handled: Callable[[], None]) -> None:
        await budget.pace()
        handled()
        clock.now += 0.0002  # an output's work

    handled, turn_of = asyncio.run(burst(80, stream))
    assert handled == list(range(80))
    assert len(set(turn_of)) >= 6, turn_of  # ~10 outputs of 0.2 ms a 2 ms turn
    assert budget.rewaits <= 20, budget.rewaits  # every waiting stream waking each turn: ~300
    assert 0.0001 < budget.mean_cost < 0.002, budget.mean_cost


def test_without_a_budget_every_output_is_handled_in_one_turn() -> None:
    handled, turn_of = asyncio.run(_outputs(TurnBudget(0.0), 16, 0.001))
    assert handled == list(range(16)) and len(set(turn_of)) == 1


def _start_streams(budget: TurnBudget, n: int, cost: float) -> tuple[list[asyncio.Task[None]], list[int]]:
    """``n`` stream tasks (on the running loop), each pacing one output of ``cost`` seconds; the
    list their indices are appended to as they finish."""
    done: list[int] = []

    async def stream(i: int) -> None:
        await budget.pace()
        burn(cost)
        done.append(i)

    return [asyncio.create_task(stream(i)) for i in range(n)], done


def test_a_stream_cancelled_while_it_waits_holds_nobody_back() -> None:
    async def scenario() -> list[int]:
        tasks, done = _start_streams(TurnBudget(0.002), 6, 0.002)
        await asyncio.sleep(0)
        tasks[2].cancel()
        results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
        assert isinstance(results[2], asyncio.CancelledError)
        return done

    assert asyncio.run(scenario()) == [0, 1, 3, 4, 5]


def test_a_stream_cancelled_after_its_release_holds_nobody_back() -> None:
    """A released stream whose task is cancelled before it runs still counts as awake: the batch
    after it is released (the next batch is released by the last of a batch to wake)."""

    async def scenario() -> list[int]:
        budget = TurnBudget(0.002)
        tasks, done = _start_streams(budget, 8, 0.001)
        for _ in range(100):  # until a stamp released a batch that has not run yet
            await asyncio.sleep(0)
            if budget._released:
                break
        assert budget._released
        first_in_line = next(i for i in range(8) if i not in done)
        tasks[first_in_line].cancel()
        results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
        assert isinstance(results[first_in_line], asyncio.CancelledError)
        assert budget._released == 0
        assert first_in_line not in done
        return done

    done = asyncio.run(scenario())
    assert done == sorted(done) and len(done) == 7


def test_quiet_streams_leave_the_loop_idle() -> None:
    """The stamp re-schedules itself only while outputs come: a quiet frontend's loop sleeps."""

    async def scenario() -> bool:
        budget = TurnBudget(0.004)
        await asyncio.gather(*(budget.pace() for _ in range(3)))
        for _ in range(5):
            await asyncio.sleep(0)
        return budget._stamp_pending

    assert asyncio.run(scenario()) is False
