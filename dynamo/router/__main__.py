"""``python3 -m dynamo.router --endpoint dyn://NS.COMPONENT.ENDPOINT``: the standalone KV router.

Serves ``dyn://NS.router.{generate,best_worker_id,overlap_scores}`` for the workers registered at
``--endpoint`` (see ``dynamo.router.service``). The KV flags are the frontend's.
"""

from __future__ import annotations

import argparse
import logging
import sys

from dynamo.router.approx import DEFAULT_TTL_S
from dynamo.router.kv_router import KvRouterConfig
from dynamo.router.service import ROUTER_COMPONENT, StandaloneRouter
from dynamo.runtime import DistributedRuntime, EndpointId, RuntimeConfig, add_runtime_args
from dynamo.runtime.logging import configure_logging

log = logging.getLogger("dynamo.router")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python3 -m dynamo.router",
        description="Standalone KV-aware router: picks the worker for a token sequence, or forwards to it.",
    )
    p.add_argument(
        "--endpoint",
        required=True,
        help="the workers to route to, dyn://<namespace>.<component>.<endpoint> (e.g. dyn://dynamo.prefill.generate)",
    )
    p.add_argument(
        "--router-component",
        default=ROUTER_COMPONENT,
        help="component this service registers under, in the workers' namespace (default router)",
    )
    p.add_argument(
        "--kv-cache-block-size",
        type=int,
        default=None,
        help="tokens per KV block (default: the model card's)",
    )
    p.add_argument(
        "--kv-overlap-score-weight",
        type=float,
        default=1.0,
        help="weight of prefill cost against decode load",
    )
    p.add_argument(
        "--router-temperature", type=float, default=0.0, help="0 picks the best worker; >0 samples a softmax"
    )
    p.add_argument(
        "--no-kv-events",
        dest="use_kv_events",
        action="store_false",
        help="predict cache contents from routing decisions instead of KV events",
    )
    p.add_argument(
        "--router-ttl",
        type=float,
        default=DEFAULT_TTL_S,
        help="--no-kv-events: seconds a routed prefix is assumed cached",
    )
    p.add_argument(
        "--active-decode-blocks-threshold",
        type=float,
        default=None,
        help="refuse a worker whose active KV blocks exceed this fraction of its total",
    )
    p.add_argument(
        "--active-prefill-tokens-threshold",
        type=int,
        default=None,
        help="refuse a worker with more queued prefill tokens than this",
    )
    p.add_argument(
        "--router-replica-sync",
        action="store_true",
        help="share active-load predictions with the other routers of these workers",
    )
    add_runtime_args(p, namespace=False)
    p.set_defaults(use_kv_events=True)
    return p


async def run(args: argparse.Namespace) -> int:
    workers = EndpointId.parse(args.endpoint)
    config = KvRouterConfig(
        block_size=args.kv_cache_block_size or 16,
        overlap_weight=args.kv_overlap_score_weight,
        temperature=args.router_temperature,
        active_decode_blocks_threshold=args.active_decode_blocks_threshold,
        active_prefill_tokens_threshold=args.active_prefill_tokens_threshold,
        use_kv_events=args.use_kv_events,
        ttl_s=args.router_ttl,
    )
    runtime = await DistributedRuntime.create(
        RuntimeConfig.from_args(args).with_(namespace=workers.namespace)
    )
    service = StandaloneRouter(
        runtime,
        workers,
        config,
        block_size_given=args.kv_cache_block_size is not None,
        replica_sync=args.router_replica_sync,
    )
    runtime.install_signal_handlers()
    try:
        await service.start(args.router_component)
        await runtime.wait_for_shutdown()
    finally:
        await runtime.shutdown()
    return 0


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    configure_logging()
    try:
        import uvloop

        code = uvloop.run(run(args))
    except (ValueError, ConnectionError) as exc:
        log.error("%s", exc)
        code = 2
    sys.exit(code)


if __name__ == "__main__":
    main()
