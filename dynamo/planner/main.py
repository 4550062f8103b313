"""``python3 -m dynamo.planner --config FILE|JSON``: the planner component's process.

Like the other components it joins the graph's runtime (``DYN_NAMESPACE``, discovery), serves
``/health``, ``/live`` and ``/metrics`` on ``DYN_SYSTEM_PORT`` (or ``metric_reporting_prometheus_port``),
registers ``dyn://<namespace>.planner.status`` (answers the last decision), and on SIGTERM/SIGINT
finishes the step under way and exits 0. Traffic comes from ``metric_pulling_prometheus_endpoint``
when set, else from scraping the frontends' ``/metrics`` URLs in ``DYN_PLANNER_FRONTEND_METRICS``
(comma separated; the local runner sets it). Exit 2: bad configuration, profile or settings.

Journey: start-up, then the loop of ``dynamo.planner.planner``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import AsyncGenerator
from typing import Any

import msgspec

from dynamo.planner.config import ConfigError, PlannerConfig, load_config
from dynamo.planner.connector import create_connector
from dynamo.planner.metrics import PlannerMetrics
from dynamo.planner.planner import Planner, Policy
from dynamo.planner.policy import SlaPolicy, ThresholdPolicy
from dynamo.planner.profile import ProfileError, load_profile
from dynamo.planner.traffic import PrometheusSource, ScrapeSource, TrafficSource
from dynamo.planner.workers import WorkerView
from dynamo.runtime import DistributedRuntime, EndpointId, RequestContext, RuntimeConfig, add_runtime_args
from dynamo.runtime.logging import configure_logging

log = logging.getLogger("dynamo.planner")

FRONTEND_METRICS_ENV = "DYN_PLANNER_FRONTEND_METRICS"
PLANNER_COMPONENT = "planner"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python3 -m dynamo.planner", description="Scale a graph's workers to its load."
    )
    p.add_argument("--config", required=True, help="PlannerConfig as a JSON/YAML file or inline JSON")
    add_runtime_args(p, namespace=False)
    return p


def traffic_source(config: PlannerConfig, environ: dict[str, str] | os._Environ[str]) -> TrafficSource | None:
    """Prometheus when configured, else the frontends' URLs from the environment, else none."""
    if config.metric_pulling_prometheus_endpoint:
        return PrometheusSource(
            config.metric_pulling_prometheus_endpoint,
            config.model_name,
            token=config.metric_pulling_prometheus_token,
            verify_ssl=config.metric_pulling_prometheus_ssl_verify,
            extra_params=config.metric_pulling_prometheus_extra_query_params,
        )
    urls = [u.strip() for u in environ.get(FRONTEND_METRICS_ENV, "").split(",") if u.strip()]
    return ScrapeSource(urls, config.model_name) if urls else None


def make_policy(config: PlannerConfig) -> Policy:
    if config.predictive:
        return SlaPolicy(config, load_profile(config.profile_path()))
    return ThresholdPolicy(config)


async def amain(config: PlannerConfig, args: argparse.Namespace) -> int:
    policy = make_policy(config)  # a bad profile fails before anything starts
    traffic = traffic_source(config, os.environ)
    if traffic is None:
        if config.predictive:
            raise ConfigError(
                "optimization_target 'sla' needs client traffic: set metric_pulling_prometheus_endpoint "
                f"(or PROMETHEUS_ENDPOINT), or {FRONTEND_METRICS_ENV} to the frontends' /metrics URLs"
            )
        log.warning(
            "no traffic source (%s unset, no Prometheus): deciding from worker load reports only",
            FRONTEND_METRICS_ENV,
        )
    runtime_config = RuntimeConfig.from_args(args).with_(namespace=config.namespace)
    if config.metric_reporting_prometheus_port:
        runtime_config = runtime_config.with_(system_port=config.metric_reporting_prometheus_port)
    runtime = await DistributedRuntime.create(runtime_config)
    try:
        workers = WorkerView(runtime, config.namespace)
        workers.start()
        connector = create_connector(config, runtime.store)
        planner = Planner(config, policy, workers, traffic, connector, PlannerMetrics(runtime.metrics))

        async def status(_request: Any, _ctx: RequestContext) -> AsyncGenerator[dict[str, Any], None]:
            yield msgspec.to_builtins(planner.last) if planner.last is not None else {}

        await runtime.serve_endpoint(EndpointId(config.namespace, PLANNER_COMPONENT, "status"), status)
        runtime.install_signal_handlers()
        runtime.set_ready()
        log.info(
            "planner for namespace %s: target %s, mode %s, %s pools %s, every %gs, GPU budget %d, min %d%s",
            config.namespace,
            config.optimization_target,
            config.mode,
            config.environment,
            "/".join(config.roles),
            config.interval,
            config.max_gpu_budget,
            config.min_endpoint,
            " (advisory)" if config.advisory else "",
        )
        stop = asyncio.Event()
        loop_task = asyncio.create_task(planner.run(stop))
        await runtime.wait_for_shutdown()
        stop.set()
        await loop_task
        await connector.close()
    finally:
        if traffic is not None:
            await traffic.close()
        await runtime.shutdown()
    return 0


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    configure_logging()
    try:
        config = load_config(args.config)
        code = asyncio.run(amain(config, args))
    except (ConfigError, ProfileError, ValueError, OSError) as exc:
        log.error("%s", exc)
        code = 2
    sys.exit(code)
