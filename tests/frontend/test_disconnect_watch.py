"""DisconnectWatch: a client's departure cancels the request's task once, and only that becomes
ClientGone; a server's own cancellation still propagates; a stopped watch cancels nothing."""

from __future__ import annotations

import asyncio

import pytest

from dynamo.frontend.disconnect import ClientGone, DisconnectWatch


class Channel:
    """An ASGI ``receive`` whose next message is sent by the test."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[dict[str, str]] = asyncio.Queue()

    async def receive(self) -> dict[str, str]:
        return await self.queue.get()

    def hang_up(self) -> None:
        self.queue.put_nowait({"type": "http.disconnect"})


async def test_a_disconnect_during_the_work_is_client_gone_and_the_task_goes_on() -> None:
    channel = Channel()
    closed = asyncio.Event()

    async def work() -> None:
        try:
            await asyncio.sleep(30)
        finally:
            closed.set()  # what the engine streams do: close on cancellation

    async def handler() -> str:
        watch = DisconnectWatch(channel.receive)
        try:
            await watch.run(work())
        except ClientGone:
            await asyncio.sleep(0)  # the task is not left cancelled: it may still await
            return "499"
        finally:
            watch.stop()
        return "200"

    task = asyncio.create_task(handler())
    await asyncio.sleep(0.01)
    channel.hang_up()
    assert await asyncio.wait_for(task, 5) == "499"
    assert closed.is_set()
    assert task.cancelling() == 0


async def test_the_servers_cancellation_is_not_taken_for_a_departure() -> None:
    channel = Channel()

    async def handler() -> None:
        watch = DisconnectWatch(channel.receive)
        try:
            await watch.run(asyncio.sleep(30))
        finally:
            watch.stop()

    task = asyncio.create_task(handler())
    await asyncio.sleep(0.01)
    task.cancel()
    channel.hang_up()  # both at once: the shutdown still wins
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)


async def test_work_that_finishes_first_returns_its_result() -> None:
    channel = Channel()

    async def handler() -> int:
        watch = DisconnectWatch(channel.receive)
        try:
            return await watch.run(asyncio.sleep(0.01, result=7))
        finally:
            watch.stop()

    assert await asyncio.wait_for(handler(), 5) == 7


async def test_a_stopped_watch_cancels_nothing() -> None:
    channel = Channel()

    async def handler() -> str:
        watch = DisconnectWatch(channel.receive)
        watch.stop()
        channel.hang_up()  # what the server reports for every receive once a response is complete
        await asyncio.sleep(0.05)
        return "done"

    assert await asyncio.wait_for(handler(), 5) == "done"
