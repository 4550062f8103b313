"""Helpers engine adapters share while they start: a free port, the engine built off the loop.

Journey: used before the **engine** stage serves anything (``WorkerEngine.start``): ports an
engine binds for itself (KV event publishers, bootstrap and side-channel servers), the engine's
package imported and its blocking constructor run off the event loop, and the one line a user
sees when either fails (``EngineStartError``).
"""

from __future__ import annotations

import asyncio
import importlib.util
import random
import socket
from collections.abc import Callable
from typing import Any, TypeVar

from dynamo.worker.engine import EngineNotInstalledError, EngineStartError

T = TypeVar("T")


LOWEST_CHOSEN_PORT = 10000
_EPHEMERAL_RANGE = "/proc/sys/net/ipv4/ip_local_port_range"


def free_port() -> int:
    """A TCP port free on every interface right now, for the engine to bind soon after.

    Chosen below the kernel's ephemeral range: a port the kernel hands to some other ``bind(0)``
    (vLLM's own ZMQ sockets, another worker starting beside this one) cannot be this one between
    our choice and the engine's bind. Falls back to an ephemeral port when none is found.
    """
    try:
        with open(_EPHEMERAL_RANGE) as f:
            ephemeral_low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768
    rng = random.SystemRandom()
    for _ in range(64):
        port = rng.randrange(LOWEST_CHOSEN_PORT, max(LOWEST_CHOSEN_PORT + 1, ephemeral_low))
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("", port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])


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
