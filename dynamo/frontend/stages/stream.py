"""Stage 4a, stream (``"stream": true``): engine output batches -> server-sent events, as they come.

Journey: route -> **stream** -> client. Each batch becomes one SSE write (``ResponseBuilder``
formats it); the last events and ``data: [DONE]`` go out with the end of the body. Several choices
(``n``, a list of prompts) are read concurrently, one task each feeding a small queue, and their
events interleave as they come, each with its choice's index; a choice that finished stops being
read (its engine request is closed). A failure midway, of any choice, becomes an error event (the
status line is long gone) and ends the others. A client that leaves cancels the stream, which
cancels the work on the workers (``SSEResponse``); the request is then counted as 499.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator

from prometheus_client import Histogram
from starlette.responses import Response

from dynamo.frontend.disconnect import DisconnectWatch
from dynamo.frontend.metrics import RequestMetrics
from dynamo.frontend.responses import DONE, ResponseBuilder, error_response, sse
from dynamo.frontend.sse import SSEResponse
from dynamo.frontend.stages.route import Batch, Routed
from dynamo.frontend.turn_budget import TurnBudget
from dynamo.llm.errors import RequestError, internal_error

log = logging.getLogger(__name__)


async def stream_response(
    routed: list[Routed],
    builder: ResponseBuilder,
    record: RequestMetrics,
    headers: dict[str, str],
    turns: TurnBudget | None = None,
    watch: DisconnectWatch | None = None,
) -> Response:
    """The streaming HTTP response; the request's metrics are finished when it ends.

    The first outputs (already here: routing waited for them) are formatted before the status line
    goes out, so an engine that refused the request on its first output (a grammar it cannot
    compile) is still answered with a status (400, 500) rather than an error event. ``watch``, the
    request's disconnect watch, goes on watching the stream (``SSEResponse`` stops it). The first
    outputs wait for ``turns`` as the later ones do: an engine step that prefilled many requests
    at once brings all their first outputs in one loop turn."""
    if turns is not None:
        try:
            await turns.pace()
        except BaseException:  # cancelled while it waited: the streams opened for it are closed
            await _abandon(routed, watch)
            raise
    try:
        head = b"".join(builder.stream(i, r.first) for i, r in enumerate(routed))
    except RequestError as exc:
        await _abandon(routed, watch)
        record.finish(str(exc.status), builder.completion_tokens, builder.cached_tokens)
        return error_response(exc)

    def on_done(disconnected: bool) -> None:
        record.finish("499" if disconnected else "200", builder.completion_tokens, builder.cached_tokens)

    if len(routed) == 1:
        events = _events(head, routed[0].batches, builder, record.mm.itl, turns)
    else:
        events = _merged_events(head, routed, builder, record.mm.itl, turns)
    return SSEResponse(events, on_done, headers, last_event=DONE, watch=watch)


async def _abandon(routed: list[Routed], watch: DisconnectWatch | None) -> None:
    """No stream will be written: stop watching the client and close the engine streams."""
    if watch is not None:
        watch.stop()
    for r in routed:
        await r.batches.aclose()


async def _events(
    head: bytes,
    batches: AsyncGenerator[Batch, None],
    builder: ResponseBuilder,
    itl: Histogram,
    turns: TurnBudget | None,
) -> AsyncGenerator[bytes, None]:
    """One choice: its batches in order, no task in between (``head``: its first batch's events)."""
    choice = builder.choices[0]
    last = time.monotonic()
    final = DONE
    try:
        if head and not builder.done:
            yield head
            head = b""
        while not builder.done:
            batch = await batches.__anext__()
            if turns is not None:
                await turns.pace()
            before = choice.completion_tokens
            out = builder.stream(0, batch)
            if builder.done:
                head += out  # the events not written yet
            elif out:
                yield out
            now = time.monotonic()
            n = choice.completion_tokens - before
            if n and before:
                itl.observe((now - last) / n)
            last = now
        final = head + DONE  # the last events, written with the end of the body
    except StopAsyncIteration:
        if not builder.done:  # the engine ended without a finish reason
            final = builder.stream_end(0) + DONE
    except RequestError as exc:
        final = sse(exc.to_dict()) + DONE
    except Exception:
        log.exception("stream %s failed", builder.id)
        final = sse(internal_error().to_dict()) + DONE
    finally:
        await batches.aclose()
    yield final


_END = None  # a choice's stream ended (without a finish reason, unless it was cut short)


async def _pump(
    i: int, routed: Routed, queue: asyncio.Queue[tuple[int, Batch | BaseException | None]]
) -> None:
    """Feed choice ``i``'s batches into ``queue`` until the stream ends or this task is cancelled."""
    batches = routed.batches
    try:
        async for batch in batches:
            await queue.put((i, batch))
        await queue.put((i, _END))
    except Exception as exc:
        await queue.put((i, exc))
    finally:
        await batches.aclose()


async def _merged_events(
    head: bytes, routed: list[Routed], builder: ResponseBuilder, itl: Histogram, turns: TurnBudget | None
) -> AsyncGenerator[bytes, None]:
    """Several choices: their batches as they come, from one reading task per choice (``head``:
    the events of their first batches)."""
    queue: asyncio.Queue[tuple[int, Batch | BaseException | None]] = asyncio.Queue(maxsize=2 * len(routed))
    pumps = [
        asyncio.create_task(_pump(i, r, queue)) if not builder.choices[i].done else None
        for i, r in enumerate(routed)
    ]
    last = [time.monotonic()] * len(routed)
    final = DONE
    try:
        if builder.done:  # every choice finished on its first batch
            final = head + DONE
        elif head:
            yield head
        while not builder.done:
            i, item = await queue.get()
            if turns is not None:
                await turns.pace()
            choice = builder.choices[i]
            if choice.done:
                continue  # already answered; its reader is being cancelled
            if isinstance(item, BaseException):
                raise item
            before = choice.completion_tokens
            out = builder.stream(i, item) if item is not _END else builder.stream_end(i)
            pump = pumps[i]
            if choice.done and pump is not None:
                pump.cancel()  # stop reading it (closes its engine request)
            if builder.done:
                final = out + DONE
            elif out:
                yield out
            now = time.monotonic()
            n = choice.completion_tokens - before
            if n and before:
                itl.observe((now - last[i]) / n)
            last[i] = now
    except RequestError as exc:
        final = sse(exc.to_dict()) + DONE
    except Exception:
        log.exception("stream %s failed", builder.id)
        final = sse(internal_error().to_dict()) + DONE
    finally:
        running = [task for task in pumps if task is not None]
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        for r, maybe in zip(routed, pumps, strict=True):
            if maybe is None:  # finished on its first batch: never read further
                await r.batches.aclose()
    yield final
