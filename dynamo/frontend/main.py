"""``python3 -m dynamo.frontend``: the process entry point (journey: **start-up**, then HTTP -> ...).

One process serves the port with uvicorn (uvloop + httptools) and the ASGI app of ``app``.
``--http-workers N`` forks N such processes that share the port through ``SO_REUSEPORT`` (the kernel
spreads connections among them); the parent only supervises: it forwards SIGTERM/SIGINT and, when
one worker dies, stops the others and exits with its status. Exit status 1 when the port cannot be
bound, 2 for bad flags.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import signal
import socket
import sys

import uvicorn

from dynamo.frontend.app import create_app
from dynamo.frontend.args import FrontendConfig, build_parser
from dynamo.runtime.logging import configure_logging

log = logging.getLogger("dynamo.frontend")

# Allocations between young-generation collections (CPython's default: 700): a streamed request's
# objects die by reference counting before they are promoted (why: docs/frontend.md, "Garbage
# collection").
GC_YOUNG_THRESHOLD = 50_000
_PR_SET_PDEATHSIG = 1


def tune_gc() -> None:
    """Freeze the start-up heap and enlarge the young generation (see ``GC_YOUNG_THRESHOLD``)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 10)


def listen_socket(host: str, port: int, reuse_port: bool) -> socket.socket:
    """A bound TCP socket for uvicorn (``SO_REUSEPORT`` so that several processes share the port)."""
    family, kind, proto, _, addr = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(addr)
    sock.set_inheritable(True)
    return sock


def serve(config: FrontendConfig, sock: socket.socket | None = None) -> int:
    """Run one frontend process until it is told to stop; the exit status."""
    app = create_app(config)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=config.http_host,
            port=config.http_port,
            loop="uvloop",
            http="httptools",
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=int(config.runtime.drain_timeout),
            log_config=None,
        )
    )
    tune_gc()
    try:
        server.run(sockets=[sock] if sock is not None else None)
    except (ConnectionError, OSError) as exc:
        log.error("%s", exc)
        return 1
    return 0


def supervise(config: FrontendConfig) -> int:
    """Fork ``config.http_workers`` frontend processes on one shared port and wait for them."""
    try:  # bind once here: a port in use fails fast, before any worker starts
        listen_socket(config.http_host, config.http_port, reuse_port=True).close()
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", config.http_host, config.http_port, exc)
        return 1
    children: dict[int, int] = {}  # pid -> worker index
    for index in range(config.http_workers):
        pid = os.fork()
        if pid == 0:  # a worker: die with the parent; signals come from it only
            code = 1
            try:
                os.setpgid(0, 0)
                with contextlib.suppress(OSError, AttributeError):
                    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
                sock = listen_socket(config.http_host, config.http_port, reuse_port=True)
                code = serve(config, sock)
            except BaseException:
                log.exception("frontend process %d failed", index)
            finally:
                os._exit(code)
        children[pid] = index
    log.info(
        "OpenAI-compatible frontend on http://%s:%d (%d processes sharing the port)",
        config.http_host,
        config.http_port,
        config.http_workers,
    )
    stopping = 0  # the signal the workers were asked to stop with

    def forward(sig: int, _frame: object) -> None:
        nonlocal stopping
        stopping = stopping or sig
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    status = 0
    while children:
        try:
            pid, raw = os.wait()
        except ChildProcessError:
            break
        index = children.pop(pid, -1)
        code = os.waitstatus_to_exitcode(raw)
        if not stopping:
            log.error("frontend process %s exited with %d; stopping the others", index, code)
            status = code or 1
            forward(signal.SIGTERM, None)
        elif code not in (0, -stopping) and not status:
            status = code
    if stopping and not status:
        # Like a single process (uvicorn re-raises the signal it stopped on): end by that signal.
        signal.signal(stopping, signal.SIG_DFL)
        os.kill(os.getpid(), stopping)
    return status


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    configure_logging()
    try:
        config = FrontendConfig.from_args(args)
    except ValueError as exc:
        log.error("%s", exc)
        sys.exit(2)
    if config.http_workers > 1:
        sys.exit(supervise(config))
    log.info("OpenAI-compatible frontend on http://%s:%d", config.http_host, config.http_port)
    sys.exit(serve(config))
