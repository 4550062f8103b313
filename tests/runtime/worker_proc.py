"""A minimal serving process for runtime tests: ``python -m tests.runtime.worker_proc``.

Serves ``dyn://<ns>.worker.generate``: the request ``{"n": N, "delay": s}`` streams N items
``{"i": k}``, sleeping ``delay`` between them. Logs ``READY <instance:x>`` once registered, and
shuts down gracefully on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import AsyncGenerator
from typing import Any

from dynamo.runtime import DistributedRuntime, RequestContext, RuntimeConfig, add_runtime_args
from dynamo.runtime.logging import configure_logging

log = logging.getLogger("worker_proc")


async def generate(request: Any, ctx: RequestContext) -> AsyncGenerator[dict[str, int], None]:
    delay = float(request.get("delay", 0))
    try:
        for i in range(int(request.get("n", 1))):
            if delay:
                await asyncio.sleep(delay)
            yield {"i": i}
    except asyncio.CancelledError:
        log.info("CANCELLED %s", ctx.request_id)
        raise
    log.info("COMPLETED %s", ctx.request_id)


async def main() -> None:
    parser = argparse.ArgumentParser()
    add_runtime_args(parser)
    parser.add_argument("--etcd", default=None)
    parser.add_argument("--ttl", type=float, default=None)
    parser.add_argument("--publish", default=None, help="publish a counter on this subject every 0.1 s")
    args = parser.parse_args()
    configure_logging()
    overrides: dict[str, Any] = {}
    if args.etcd:
        overrides["etcd_endpoints"] = (args.etcd,)
    if args.ttl:
        overrides["discovery_ttl"] = args.ttl
    runtime = await DistributedRuntime.create(RuntimeConfig.from_args(args, **overrides))
    runtime.install_signal_handlers()
    await runtime.serve_endpoint(f"{runtime.namespace}.worker.generate", generate)
    runtime.set_ready()
    if args.publish:
        events = await runtime.event_plane()

        async def publish_forever() -> None:
            k = 0
            while True:
                await events.publish(args.publish, f"{runtime.instance_id:x}:{k}".encode())
                k += 1
                await asyncio.sleep(0.1)

        runtime.spawn(publish_forever(), "publish")
    log.info("READY %x", runtime.instance_id)
    await runtime.wait_for_shutdown()
    await runtime.shutdown()
    log.info("EXITED cleanly")


if __name__ == "__main__":
    asyncio.run(main())
