"""Loop-turn tracer for a benchmarked frontend (``long_prompt_bench.py --trace-turns MS``): a
diagnostic, not part of dynamo.

Imported at start-up by a frontend whose ``PYTHONPATH`` starts with this folder, it does nothing
unless ``DYN_BENCH_TURN_TRACE_MS`` is set. Then the frontend runs on asyncio's own event loop instead
of uvloop (whose callbacks cannot be timed from Python; so the process is slower than in a normal
run), and every loop turn whose callbacks took ``MS`` ms or more is written to stderr (the
frontend's log) as one line: ``TURN <ms> <callbacks> | <what> x<count> <ms> | ...``, where a task's
"what" is the innermost coroutine it resumed in (``SSEResponse.__call__`` for a stream's output,
``read_body`` for a request body, ...). It tells a long turn made of many short callbacks (a burst
of streams) from one long callback.
"""

from __future__ import annotations

import os

_THRESHOLD_MS = os.environ.get("DYN_BENCH_TURN_TRACE_MS")


def _install(threshold: float) -> None:
    import asyncio
    import asyncio.base_events
    import asyncio.events
    import sys
    import time

    current: list[tuple[str, float]] | None = None

    def what(handle: asyncio.Handle) -> str:
        callback = handle._callback  # type: ignore[attr-defined]
        owner = getattr(callback, "__self__", None)
        if not isinstance(owner, asyncio.Task):
            return getattr(callback, "__qualname__", repr(callback))
        inner = owner.get_coro()
        while True:  # down the chain of awaits to the coroutine that was suspended
            nxt = getattr(inner, "cr_await", None) or getattr(inner, "ag_await", None)
            if nxt is None or not (hasattr(nxt, "cr_frame") or hasattr(nxt, "ag_frame")):
                break
            inner = nxt
        frame = getattr(inner, "cr_frame", None) or getattr(inner, "ag_frame", None)
        where = f" ({frame.f_code.co_filename.rsplit('/', 1)[-1]}:{frame.f_lineno})" if frame else ""
        return f"{getattr(inner, '__qualname__', '?')}{where}"

    run_handle = asyncio.events.Handle._run

    def timed_run(self: asyncio.Handle) -> None:
        name = what(self)
        start = time.perf_counter()
        run_handle(self)
        if current is not None:
            current.append((name, time.perf_counter() - start))

    run_once = asyncio.base_events.BaseEventLoop._run_once  # type: ignore[attr-defined]

    def traced_run_once(self: asyncio.AbstractEventLoop) -> None:
        nonlocal current
        current = []
        run_once(self)
        spent = sum(d for _, d in current)
        if spent * 1e3 >= threshold:
            by: dict[str, list[float]] = {}
            for name, d in current:
                entry = by.setdefault(name, [0, 0.0])
                entry[0] += 1
                entry[1] += d
            parts = sorted(by.items(), key=lambda kv: -kv[1][1])
            text = " | ".join(f"{name} x{int(n)} {t * 1e3:.2f}" for name, (n, t) in parts)
            sys.stderr.write(f"TURN {spent * 1e3:.2f} {len(current)} | {text}\n")
        current = None

    asyncio.events.Handle._run = timed_run  # type: ignore[method-assign]
    asyncio.base_events.BaseEventLoop._run_once = traced_run_once  # type: ignore[attr-defined]

    import uvicorn.config

    init = uvicorn.config.Config.__init__

    def config_init(self: object, *args: object, **kwargs: object) -> None:
        if kwargs.get("loop") == "uvloop":
            kwargs["loop"] = "asyncio"
        init(self, *args, **kwargs)  # type: ignore[arg-type]

    uvicorn.config.Config.__init__ = config_init  # type: ignore[method-assign]


if _THRESHOLD_MS:
    _install(float(_THRESHOLD_MS))
