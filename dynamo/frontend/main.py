"""``python3 -m dynamo.frontend``: the process entry point (journey: **start-up**, then HTTP -> ...).

One process serves the port with uvicorn (uvloop + httptools) and the ASGI app of ``app``.
``--http-workers N`` forks N such processes that share the port through ``SO_REUSEPORT`` (the kernel
spreads connections among them). Each of them also listens on a private loopback port, where it
answers for itself alone; ``GET /metrics`` on the shared port answers for all of them (the private
``/metrics`` of each, merged with an ``http_worker`` label: ``SharedPortMetrics``), so a scraper such
as the planner sees the whole frontend at one URL. The parent only supervises: it forwards SIGTERM/SIGINT and, when
one worker dies, stops the others and exits with its status. Exit status 1 when the port cannot be
bound, 2 for bad flags.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import math
import os
import signal
import socket
import ssl
import sys

import aiohttp
import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.types import ASGIApp, Receive, Scope, Send

from dynamo.frontend.app import create_app
from dynamo.frontend.args import FrontendConfig, build_parser
from dynamo.frontend.auth import ApiKeyAuth
from dynamo.frontend.http_limits import limited_protocol
from dynamo.frontend.metrics import merge_expositions
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


class SharedPortMetrics:
    """ASGI wrapper of one of the processes sharing the port: ``GET /metrics`` that came in on the
    shared port answers for every process (each one's ``/metrics`` fetched from its private loopback
    port, merged by ``merge_expositions``; 503 if one does not answer, as a partial sum would look
    like a counter reset); everything else, and whatever came in on the private port, goes to the
    app. Costs nothing per request but one dict lookup and a comparison."""

    def __init__(
        self,
        app: ASGIApp,
        private_port: int,
        all_private_ports: list[int],
        timeout: float = 5.0,
        https: bool = False,
    ) -> None:
        self.app = app
        self.private_port = private_port
        scheme = "https" if https else "http"
        self.urls = [f"{scheme}://127.0.0.1:{port}/metrics" for port in all_private_ports]
        self.timeout = timeout
        # Our own loopback ports, bound before the fork: no certificate check (it names the public host).
        self.verify_tls = not https

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["path"] != "/metrics"
            or scope["method"] != "GET"
            or (scope.get("server") or (None, None))[1] == self.private_port
        ):
            await self.app(scope, receive, send)
            return
        status, headers, body = 200, [(b"content-type", CONTENT_TYPE_LATEST.encode())], b""
        try:
            body = merge_expositions(await self._fetch_all())
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            log.warning("/metrics: a frontend process did not answer: %s", exc)
            status, headers = 503, [(b"content-type", b"text/plain; charset=utf-8"), (b"retry-after", b"1")]
            body = f"a frontend process did not answer its metrics: {exc}\n".encode()
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _fetch_all(self) -> list[str]:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout)) as session:

            async def one(url: str) -> str:
                async with session.get(url, ssl=self.verify_tls) as resp:
                    resp.raise_for_status()
                    return await resp.text()

            return list(await asyncio.gather(*(one(url) for url in self.urls)))


def serve(
    config: FrontendConfig,
    sock: socket.socket | None = None,
    private: socket.socket | None = None,
    all_private_ports: list[int] | None = None,
) -> int:
    """Run one frontend process until it is told to stop; the exit status. ``private``: this
    process's own loopback socket when it is one of several sharing ``sock`` (``all_private_ports``:
    every such process's, this one's included)."""
    app: ASGIApp = create_app(config)
    if config.api_keys:
        app = ApiKeyAuth(app, config.api_keys)
    sockets = [sock] if sock is not None else None
    if sock is not None and private is not None and all_private_ports:
        app = SharedPortMetrics(
            app, private.getsockname()[1], all_private_ports, https=config.tls_cert_path is not None
        )
        sockets = [sock, private]
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=config.http_host,
            port=config.http_port,
            loop="uvloop",
            http=limited_protocol(
                config.http_max_header_size,
                config.http_header_timeout,
                config.http_body_timeout,
                config.http_write_timeout,
            ),
            # An idle keep-alive connection is closed after --http-header-timeout (30 s), not
            # uvicorn's 5 s: longer than clients keep idle pooled connections (aiohttp 15 s, httpx
            # 5 s), so the client closes first and never sends on a connection being closed.
            timeout_keep_alive=max(1, math.ceil(config.http_header_timeout)),
            log_level="warning",
            access_log=False,
            # Nothing here reads the client's address or scheme: no X-Forwarded-* rewriting (it
            # cost ~2% of the CPU a streamed request takes).
            proxy_headers=False,
            timeout_graceful_shutdown=int(config.runtime.drain_timeout),
            log_config=None,
            # HTTPS with --tls-cert-path (uvicorn serves plain HTTP when no certificate is given)
            ssl_certfile=config.tls_cert_path,
            ssl_keyfile=config.tls_key_path,
            ssl_ca_certs=config.tls_client_ca_cert_path,
            ssl_cert_reqs=ssl.CERT_REQUIRED if config.tls_client_ca_cert_path else ssl.CERT_NONE,
        )
    )
    tune_gc()
    try:
        server.run(sockets=sockets)
    except (ConnectionError, OSError) as exc:
        log.error("%s", exc)
        return 1
    return 0


def url_scheme(config: FrontendConfig) -> str:
    return "https" if config.tls_cert_path else "http"


def supervise(config: FrontendConfig) -> int:
    """Fork ``config.http_workers`` frontend processes on one shared port and wait for them."""
    try:  # bind once here: a port in use fails fast, before any worker starts
        listen_socket(config.http_host, config.http_port, reuse_port=True).close()
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", config.http_host, config.http_port, exc)
        return 1
    # One private loopback socket per process, bound here so that every process knows all the ports.
    private = [listen_socket("127.0.0.1", 0, reuse_port=False) for _ in range(config.http_workers)]
    private_ports = [s.getsockname()[1] for s in private]
    children: dict[int, int] = {}  # pid -> worker index
    for index in range(config.http_workers):
        pid = os.fork()
        if pid == 0:  # a worker: die with the parent; signals come from it only
            code = 1
            try:
                os.setpgid(0, 0)
                with contextlib.suppress(OSError, AttributeError):
                    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
                for other in private[:index] + private[index + 1 :]:
                    other.close()
                sock = listen_socket(config.http_host, config.http_port, reuse_port=True)
                code = serve(config, sock, private[index], private_ports)
            except BaseException:
                log.exception("frontend process %d failed", index)
            finally:
                os._exit(code)
        children[pid] = index
    for s in private:
        s.close()
    log.info(
        "OpenAI-compatible frontend on %s://%s:%d (%d processes sharing the port; their own /metrics "
        "on 127.0.0.1 ports %s)",
        url_scheme(config),
        config.http_host,
        config.http_port,
        config.http_workers,
        ",".join(map(str, private_ports)),
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
    log.info(
        "OpenAI-compatible frontend on %s://%s:%d%s",
        url_scheme(config),
        config.http_host,
        config.http_port,
        " (API key required on /v1/*)" if config.api_keys else "",
    )
    sys.exit(serve(config))
