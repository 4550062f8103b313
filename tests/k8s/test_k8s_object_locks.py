"""The operator's per-object locks (``dynamo.operator.handlers.ObjectLocks``): handlers of one object
run one at a time, and no lock outlives the handlers that hold or wait for it. No cluster needed."""

from __future__ import annotations

import asyncio

import pytest

from dynamo.operator.handlers import ObjectLocks


async def test_handlers_of_one_object_take_turns_and_leave_no_lock_behind() -> None:
    locks = ObjectLocks()
    order: list[str] = []
    first_in = asyncio.Event()
    release_first = asyncio.Event()

    async def first() -> None:
        async with locks.of("graph", "ns", "g"):
            order.append("first in")
            first_in.set()
            await release_first.wait()
            order.append("first out")

    async def second() -> None:
        await first_in.wait()
        async with locks.of("graph", "ns", "g"):
            order.append("second in")

    tasks = [asyncio.create_task(first()), asyncio.create_task(second())]
    await first_in.wait()
    await asyncio.sleep(0.01)
    assert order == ["first in"], "the second handler ran while the first held the lock"
    assert len(locks) == 1
    release_first.set()
    await asyncio.gather(*tasks)
    assert order == ["first in", "first out", "second in"]
    assert len(locks) == 0


async def test_other_objects_do_not_wait() -> None:
    locks = ObjectLocks()
    async with locks.of("graph", "ns", "a"):
        async with asyncio.timeout(1):
            async with locks.of("graph", "ns", "b"), locks.of("request", "ns", "a"):
                assert len(locks) == 3
    assert len(locks) == 0


async def test_a_failed_or_cancelled_handler_leaves_no_lock_behind() -> None:
    locks = ObjectLocks()
    with pytest.raises(RuntimeError):
        async with locks.of("graph", "ns", "g"):
            raise RuntimeError("reconcile failed")
    assert len(locks) == 0

    holding = asyncio.Event()
    release = asyncio.Event()

    async def holder() -> None:
        async with locks.of("graph", "ns", "g"):
            holding.set()
            await release.wait()

    async def waiter() -> None:
        async with locks.of("graph", "ns", "g"):
            pytest.fail("a cancelled waiter got the lock")

    held = asyncio.create_task(holder())
    await holding.wait()
    waiting = asyncio.create_task(waiter())
    await asyncio.sleep(0.01)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert len(locks) == 1  # the holder's
    release.set()
    await held
    assert len(locks) == 0
