"""The admission pacer spreads a burst of new requests' on-loop work over loop turns, in arrival
order, loses none (a cancelled waiter included), and is configured from the environment."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from dynamo.frontend.admission_pacer import DEFAULT_BUDGET, AdmissionPacer
from dynamo.frontend.args import budget_from_env
from tests.frontend.loop_turns import burn, burst


async def _burst(pacer: AdmissionPacer, n: int, cost: float) -> tuple[list[int], list[int]]:
    """``n`` requests that arrive in one turn; the order they began their work and each one's turn."""

    async def request(began: Callable[[], None]) -> None:
        admission = await pacer.enter()
        began()
        admission.done(burn(cost))

    return await burst(n, request)


def test_a_burst_is_spread_over_turns_in_arrival_order() -> None:
    pacer = AdmissionPacer(0.004)
    began, turn_of = asyncio.run(_burst(pacer, 12, 0.001))
    assert began == list(range(12))  # first come, first served
    per_turn = [turn_of.count(t) for t in sorted(set(turn_of))]
    # ~4 ms of work per turn: 1 ms requests, a few per turn (the last may pass the budget)
    assert max(per_turn) <= 5, per_turn
    assert len(per_turn) >= 3, per_turn
    assert pacer.deferred > 0
    assert pacer.waiting == 0


def test_without_a_budget_the_whole_burst_runs_in_one_turn() -> None:
    pacer = AdmissionPacer(0.0)
    began, turn_of = asyncio.run(_burst(pacer, 12, 0.001))
    assert began == list(range(12))
    assert len(set(turn_of)) == 1
    assert pacer.deferred == 0


def test_a_request_cancelled_while_it_waits_holds_nobody_back() -> None:
    async def scenario() -> list[int]:
        pacer = AdmissionPacer(0.002)
        done: list[int] = []

        async def request(i: int) -> None:
            admission = await pacer.enter()
            admission.done(burn(0.002))
            done.append(i)

        tasks = [asyncio.create_task(request(i)) for i in range(6)]
        await asyncio.sleep(0)  # all arrive; the first is admitted, the rest wait
        assert pacer.waiting >= 4
        tasks[3].cancel()
        results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
        assert isinstance(results[3], asyncio.CancelledError)
        assert pacer.waiting == 0
        return done

    assert asyncio.run(scenario()) == [0, 1, 2, 4, 5]


def test_one_slow_request_counts_at_most_the_budget() -> None:
    """A request whose preprocessing waited on a thread reports its wall time: capped, so the
    running mean stays near the loop's real costs and the next turns still admit work."""

    async def scenario() -> AdmissionPacer:
        pacer = AdmissionPacer(0.002)
        (await pacer.enter()).done(5.0)
        return pacer

    pacer = asyncio.run(scenario())
    assert pacer.mean_cost <= 0.002


def test_the_budget_comes_from_the_environment() -> None:
    assert budget_from_env({}) == DEFAULT_BUDGET
    assert budget_from_env({"DYN_ADMISSION_BUDGET_MS": "0"}) == 0.0
    assert budget_from_env({"DYN_ADMISSION_BUDGET_MS": "3.5"}) == 0.0035
    for bad in ("soon", "-1", "inf", "nan"):
        with pytest.raises(ValueError, match="DYN_ADMISSION_BUDGET_MS"):
            budget_from_env({"DYN_ADMISSION_BUDGET_MS": bad})


def test_the_frontend_config_carries_the_budget_and_refuses_a_bad_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from dynamo.frontend.args import FrontendConfig, build_parser

    def config() -> FrontendConfig:
        return FrontendConfig.from_args(build_parser().parse_args([]))

    monkeypatch.delenv("DYN_ADMISSION_BUDGET_MS", raising=False)
    assert config().admission_budget == DEFAULT_BUDGET
    monkeypatch.setenv("DYN_ADMISSION_BUDGET_MS", "0")
    assert config().admission_budget == 0.0
    monkeypatch.setenv("DYN_ADMISSION_BUDGET_MS", "fast")
    with pytest.raises(ValueError, match="DYN_ADMISSION_BUDGET_MS"):
        config()
