"""A worker's status server on ``DYN_SYSTEM_PORT``: ``/health``, ``/live``, ``/metrics``.

``/health`` is 200 only once the engine is initialised and its endpoints are registered, and 503
before that and while draining; ``/live`` is 200 while the process runs; ``/metrics`` serves the
process's Prometheus registry. Runs on aiohttp so it never touches the process's signal handlers.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)


class StatusServer:
    """Health, liveness and metrics over HTTP for one process."""

    def __init__(self, port: int, registry: CollectorRegistry, host: str = "0.0.0.0") -> None:
        self.host = host
        self.port = port
        self.registry = registry
        self.ready = False
        self.draining = False
        self.details: Callable[[], dict[str, Any]] = dict
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_get("/live", self._live)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise OSError(
                exc.errno, f"cannot serve /health on port {self.port} (DYN_SYSTEM_PORT): {exc.strerror}"
            ) from None
        server = getattr(site, "_server", None)
        if self.port == 0 and server is not None and server.sockets:
            self.port = server.sockets[0].getsockname()[1]
        log.info("status server on http://%s:%d (/health, /live, /metrics)", self.host, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _health(self, _request: web.Request) -> web.Response:
        healthy = self.ready and not self.draining
        body = {"status": "healthy" if healthy else ("draining" if self.draining else "starting")}
        body.update(self.details())
        return web.Response(
            status=200 if healthy else 503, text=json.dumps(body), content_type="application/json"
        )

    async def _live(self, _request: web.Request) -> web.Response:
        return web.Response(text=json.dumps({"status": "live"}), content_type="application/json")

    async def _metrics(self, _request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )
