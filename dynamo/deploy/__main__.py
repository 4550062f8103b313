"""``python3 -m dynamo.deploy``: run a DynamoGraphDeployment on this machine, no cluster needed.

    python3 -m dynamo.deploy run deploy/examples/cpu/agg.yaml
    python3 -m dynamo.deploy plan deploy/examples/vllm/agg_router.yaml   # show, start nothing

Ctrl-C or SIGTERM stops the whole graph. A planner in the graph (``componentType: planner``) steers
its worker services: the runner applies its decisions (see ``dynamo.deploy.runner``).
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
from dynamo.deploy.runner import GraphRunner
from dynamo.deploy.spec import FRONTEND_PORT, SpecError, dns_label, load_graph_file


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python3 -m dynamo.deploy", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name, text in (("run", "start the graph and supervise it"), ("plan", "print what run would start")):
        c = sub.add_parser(name, help=text)
        c.add_argument("file", type=Path, help="a YAML file with one DynamoGraphDeployment")
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


def make_plan(args: argparse.Namespace) -> Plan:
    graph = load_graph_file(args.file)
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        plan = make_plan(args)
    except (SpecError, OSError) as exc:
        print(f"dynamo.deploy: {exc}", file=sys.stderr)
        return 2
    if args.command == "plan":
        print_plan(plan)
        return 0
    return asyncio.run(_run(plan, args.grace, args.ready_timeout))


if __name__ == "__main__":
    sys.exit(main())
