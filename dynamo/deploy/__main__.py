"""``python3 -m dynamo.deploy``: run a DynamoGraphDeployment on this machine, no cluster needed.

    python3 -m dynamo.deploy run deploy/examples/cpu/agg.yaml
    python3 -m dynamo.deploy plan deploy/examples/vllm/agg_router.yaml   # show, start nothing
    python3 -m dynamo.deploy run deploy/examples/planner/dgdr/mocker.yaml

Ctrl-C or SIGTERM stops the whole graph. A planner in the graph (``componentType: planner``) steers
its worker services: the runner applies its decisions (see ``dynamo.deploy.runner``).

A DynamoGraphDeploymentRequest (either version) is what the operator does with one, on this
machine: profile (``python3 -m dynamo.profiler``: the mocker, or the request's backend on this
machine's device), write the results and the generated graph under ``<run dir>/profile``, then run
that graph (its planner reads the profile from there). ``plan`` on a request says what profiling
would measure and starts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shlex
import signal
import sys
import tempfile
from pathlib import Path

from dynamo.deploy import probes
from dynamo.deploy.plan import Plan, load_env_file, plan_graph
from dynamo.deploy.request import DeploymentRequest, is_request_file, load_request_file
from dynamo.deploy.runner import GraphRunner
from dynamo.deploy.spec import FRONTEND_PORT, Graph, SpecError, dns_label, load_graph_file, parse_graph


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python3 -m dynamo.deploy", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name, text in (("run", "start the graph and supervise it"), ("plan", "print what run would start")):
        c = sub.add_parser(name, help=text)
        c.add_argument(
            "file",
            type=Path,
            help="a YAML file with one DynamoGraphDeployment or DynamoGraphDeploymentRequest",
        )
        c.add_argument(
            "--port", type=int, default=FRONTEND_PORT, help="the first frontend's HTTP port (default 8000)"
        )
        c.add_argument("--env-file", type=Path, help="KEY=VALUE file standing in for envFromSecret secrets")
        c.add_argument(
            "--namespace", default="default", help="Kubernetes namespace to pretend (derives DYN_NAMESPACE)"
        )
        c.add_argument(
            "--run-dir", type=Path, help="where logs and per-replica tmp dirs go (default: a new temp dir)"
        )
        if name == "run":
            c.add_argument("--grace", type=float, default=10.0, help="seconds between SIGTERM and SIGKILL")
            c.add_argument(
                "--ready-timeout",
                type=float,
                help="fail if not every replica is ready within this many seconds",
            )
    return p


def make_plan(args: argparse.Namespace, graph: Graph | None = None) -> Plan:
    graph = graph or load_graph_file(args.file)
    if args.run_dir is not None:
        run_dir = args.run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
    elif args.command == "run":
        run_dir = Path(tempfile.mkdtemp(prefix=f"dynamo-{dns_label(graph.name)}-"))
    else:
        run_dir = Path(tempfile.gettempdir()) / f"dynamo-{dns_label(graph.name)}-RUN"
    secret_env = load_env_file(args.env_file) if args.env_file else None
    return plan_graph(
        graph,
        run_dir.resolve(),
        k8s_namespace=args.namespace,
        http_port=args.port,
        secret_env=secret_env,
    )


def print_plan(plan: Plan) -> None:
    print(f"graph {plan.graph.name}: {len(plan.processes)} processes; run dir {plan.run_dir}")
    for warning in plan.warnings:
        print(f"warning: {warning}")
    for pools in plan.scaled:
        scaled = ", ".join(f"{pool} -> {service}" for pool, service in sorted(pools.services.items()))
        print(f"{pools.planner} (namespace {pools.namespace}) scales: {scaled or 'no worker service'}")
    for p in plan.processes:
        print(f"\n{p.name}  port {p.port}  cwd {p.cwd}")
        print(f"  command:   {shlex.join(p.argv)}")
        print(f"  readiness: {probes.describe(p.readiness)}")
        print(f"  log:       {p.log_path}")
        keys = sorted(k for k in p.env if k.startswith(("DYN_", "POD_", "ETCD_", "NATS_")))
        print("  env:       " + " ".join(f"{k}={p.env[k]}" for k in keys))
        for warning in p.warnings:
            print(f"  warning: {warning}")


async def _run(plan: Plan, grace: float, ready_timeout: float | None) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        return await GraphRunner(plan, grace=grace).run(stop, ready_timeout=ready_timeout)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def describe_profiling(request: DeploymentRequest) -> None:
    from dynamo.profiler.engines import engine
    from dynamo.profiler.sweep import sweep_plan

    eng = engine(request)
    points = sweep_plan(request)
    print(
        f"request {request.name}: profile {request.model} on {eng.backend} ({eng.device}), then run the graph"
    )
    print(f"  batch sizes: {', '.join(c.label for c in eng.candidates(request.search_strategy))}")
    print(f"  prefill ISLs: {list(points.isls)}; decode contexts: {list(points.contexts)}")
    print(
        f"  SLA: TTFT <= {request.ttft_ms:g} ms, ITL <= {request.itl_ms:g} ms at ISL {request.isl} / OSL "
        f"{request.osl}; planner: {'yes' if request.planner is not None else 'no'}"
    )


def profile_request(args: argparse.Namespace, request: DeploymentRequest) -> Graph:
    """Profile ``request`` into ``<run dir>/profile`` and return the generated graph."""
    from dynamo.profiler.engines import engine
    from dynamo.profiler.main import ProfilingFailed, profile

    if args.run_dir is None:
        args.run_dir = Path(tempfile.mkdtemp(prefix=f"dynamo-{dns_label(request.name)}-"))
    out = (args.run_dir / "profile").resolve()
    print(f"profiling {request.model} for request {request.name}; results in {out}", flush=True)
    logging.getLogger("dynamo.profiler").setLevel(logging.INFO)
    try:
        selection, graph = asyncio.run(profile(request, engine(request), out))
    except ProfilingFailed as exc:
        raise SpecError(f"profiling failed: {exc}") from None
    print(f"selected: {selection.reason}\ngenerated graph: {out / 'dgd.yaml'}", flush=True)
    return parse_graph(graph)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        graph = None
        if is_request_file(args.file):
            request = load_request_file(args.file)
            if args.command == "plan":
                describe_profiling(request)
                return 0
            graph = profile_request(args, request)
        plan = make_plan(args, graph)
    except (SpecError, OSError) as exc:
        print(f"dynamo.deploy: {exc}", file=sys.stderr)
        return 2
    if args.command == "plan":
        print_plan(plan)
        return 0
    return asyncio.run(_run(plan, args.grace, args.ready_timeout))


if __name__ == "__main__":
    sys.exit(main())
