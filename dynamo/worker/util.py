"""Small helpers engine adapters share while they start: a free port, an error in one line.

Journey: used before the **engine** stage serves anything (``WorkerEngine.start``): ports an
engine binds for itself (KV event publishers, bootstrap and side-channel servers) and the one line
a user sees when an engine fails to start (``EngineStartError``).
"""

from __future__ import annotations

import importlib.util
import socket

from dynamo.worker.engine import EngineStartError


def free_port() -> int:
    """A TCP port free on every interface right now (the engine binds it soon after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when the message is empty)."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def start_failure(engine: str, model: str, exc: BaseException) -> EngineStartError:
    """``EngineStartError`` for an engine constructor that raised ``exc`` while loading ``model``."""
    return EngineStartError(
        f"{engine} engine for {model!r} failed to start: {type(exc).__name__}: {first_line(exc)}"
    )


def module_installed(name: str) -> bool:
    """Whether the package ``name`` can be found (it is not imported)."""
    return importlib.util.find_spec(name) is not None
