"""Helpers engine adapters share while they start: the engine built off the loop, clear failures.

Journey: used before the **engine** stage serves anything (``WorkerEngine.start``): the engine's
package imported and its blocking constructor run off the event loop, and the one line a user
sees when either fails (``EngineStartError``). Ports an engine binds for itself come from
``dynamo.runtime.ports``.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable
from typing import Any, TypeVar

from dynamo.worker.engine import EngineNotInstalledError, EngineStartError

T = TypeVar("T")


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when the message is empty)."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def module_installed(name: str) -> bool:
    """Whether the package ``name`` can be found (it is not imported)."""
    return importlib.util.find_spec(name) is not None


async def import_engine(load: Callable[[], T]) -> T:
    """``load()`` -- an engine package's (slow) import -- off the event loop; a missing package
    (``EngineNotInstalledError``) becomes an ``EngineStartError`` with the same line."""
    try:
        return await asyncio.to_thread(load)
    except EngineNotInstalledError as exc:
        raise EngineStartError(str(exc)) from exc


async def construct_engine(engine: str, model: str, build: Callable[..., T], /, **kwargs: Any) -> T:
    """``build(**kwargs)`` -- an engine's blocking constructor -- off the event loop; whatever it
    raises becomes an ``EngineStartError`` naming the engine, the model and the first line of why."""
    try:
        return await asyncio.to_thread(build, **kwargs)
    except Exception as exc:
        raise EngineStartError(
            f"{engine} engine for {model!r} failed to start: {type(exc).__name__}: {first_line(exc)}"
        ) from exc
