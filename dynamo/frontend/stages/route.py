"""Stage 3, route: choose the worker(s), open the stream and wait for its first output.

Journey: preprocess -> **route** -> request plane -> engine. ``PrefillRouter`` decides where the
prompt is prefilled (here, or on a prefill worker first: ``dynamo.frontend.disagg``) and builds the
``Generation`` that picks the instance with the model's routing policy, fails over and migrates
(``dynamo.frontend.generation``). A failure before the first output is still an HTTP status (503
no reachable worker, 429 every worker busy); the first output is the time to first token.
``route_all`` routes every choice of a request (``n``, a list of prompts) at once: each its own
generation; if one fails before its first output, the others are cancelled and that failure is
the answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import Any

from starlette.datastructures import Headers

from dynamo.frontend.disagg import DisaggGeneration, PrefillRouter
from dynamo.frontend.generation import Generation
from dynamo.frontend.models import ServedModel
from dynamo.llm.errors import service_unavailable
from dynamo.llm.preprocessor import PreprocessedOutput
from dynamo.runtime.request_plane import RequestPlaneClient

Batch = list[dict[str, Any]]  # engine outputs (msgpack-decoded EngineOutput maps) that came together


class Routed:
    """A request on its way: the ``generation`` (which instance serves it), the rest of its output
    ``batches`` and the ``first`` batch."""

    __slots__ = ("batches", "first", "generation")

    def __init__(
        self, generation: Generation | DisaggGeneration, batches: AsyncGenerator[Batch, None], first: Batch
    ) -> None:
        self.generation = generation
        self.batches = batches
        self.first = first

    def debug_headers(self, request_headers: Headers) -> dict[str, str]:
        """``x-dynamo-instance`` (hex id and cached blocks) when the client sent ``x-dynamo-routing-debug``."""
        gen = self.generation
        if not request_headers.get("x-dynamo-routing-debug") or gen.instance_id is None:
            return {}
        return {"x-dynamo-instance": f"{gen.instance_id:x}; overlap_blocks={gen.overlap_blocks}"}


async def route(
    prefill: PrefillRouter,
    client: RequestPlaneClient,
    model: ServedModel,
    pre: PreprocessedOutput,
    migration_limit: int,
    on_migration: Callable[[str], None],
) -> Routed:
    """The request's stream, opened on the chosen worker, once its first output came back."""
    gen = prefill.generation(
        client,
        model,
        pre.request,
        pinned=pre.backend_instance_id,
        migration_limit=migration_limit,
        on_migration=on_migration,
    )
    batches = gen.batches()
    try:
        first = await batches.__anext__()
    except StopAsyncIteration:
        raise service_unavailable("the worker ended the stream without output") from None
    except BaseException:
        await batches.aclose()
        raise
    return Routed(gen, batches, first)


async def route_all(
    prefill: PrefillRouter,
    client: RequestPlaneClient,
    model: ServedModel,
    choices: Sequence[PreprocessedOutput],
    migration_limit: int,
    on_migration: Callable[[str], None],
) -> list[Routed]:
    """Every choice routed concurrently, in ``choices``' order, once each had its first output."""
    if len(choices) == 1:
        return [await route(prefill, client, model, choices[0], migration_limit, on_migration)]
    tasks = [
        asyncio.ensure_future(route(prefill, client, model, pre, migration_limit, on_migration))
        for pre in choices
    ]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        return [task.result() for task in tasks]
    except BaseException:
        await _close_all(tasks)
        raise


async def _close_all(tasks: Sequence[asyncio.Future[Routed]]) -> None:
    """Cancel the routings still running and close the streams the others opened."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is None:
            await task.result().batches.aclose()
