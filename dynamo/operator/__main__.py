"""``python3 -m dynamo.operator``: run the Dynamo operator (see ``--help``)."""

from __future__ import annotations

import asyncio
import logging
import sys

import kopf

from dynamo.operator.config import OperatorConfig, build_parser, config_from_args
from dynamo.operator.handlers import build_registry, configure


async def run(
    config: OperatorConfig,
    stop_flag: asyncio.Event | None = None,
    ready_flag: asyncio.Event | None = None,
    liveness_endpoint: str | None = None,
) -> None:
    """Run the operator until ``stop_flag`` is set (or a signal arrives)."""
    settings = kopf.OperatorSettings()
    configure(settings)
    namespaces = config.watched_namespaces
    if namespaces:
        # A restricted operator has a Role: it may not list namespaces or CRDs cluster-wide, so it
        # serves its own namespace and the resources found at start-up (restart it after adding CRDs).
        settings.scanning.disabled = True
    await kopf.operator(
        registry=build_registry(config),
        settings=settings,
        standalone=True,
        clusterwide=not namespaces,
        namespaces=namespaces,
        stop_flag=stop_flag,
        ready_flag=ready_flag,
        liveness_endpoint=liveness_endpoint,
        memo=kopf.Memo(),
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        config = config_from_args(args)
        config.watched_namespaces  # noqa: B018  (fail early on an unknown namespace)
    except ValueError as exc:
        print(f"dynamo.operator: {exc}", file=sys.stderr)
        return 2
    liveness = f"http://0.0.0.0:{args.liveness_port}/healthz" if args.liveness_port else None
    asyncio.run(run(config, liveness_endpoint=liveness))
    return 0


if __name__ == "__main__":
    sys.exit(main())
