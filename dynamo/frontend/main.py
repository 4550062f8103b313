"""``python3 -m dynamo.frontend``: the OpenAI-compatible HTTP entry point."""

from __future__ import annotations

import logging
import sys

import uvicorn

from dynamo.frontend.app import create_app
from dynamo.frontend.args import FrontendConfig, build_parser
from dynamo.runtime.logging import configure_logging

log = logging.getLogger("dynamo.frontend")


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    configure_logging()
    try:
        config = FrontendConfig.from_args(args)
    except ValueError as exc:
        log.error("%s", exc)
        sys.exit(2)
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
    log.info("OpenAI-compatible frontend on http://%s:%d", config.http_host, config.http_port)
    try:
        server.run()
    except (ConnectionError, OSError) as exc:
        log.error("%s", exc)
        sys.exit(1)
