"""Operator settings, from flags and environment variables (the Helm chart sets the latter).

| setting | flag | env |
|---|---|---|
| restrict to one namespace | ``--namespace-restricted`` | ``DYNAMO_OPERATOR_NAMESPACE_RESTRICTED=true`` |
| that namespace | ``--namespace`` | ``DYNAMO_OPERATOR_NAMESPACE``, else ``POD_NAMESPACE``, else the service account's |
| etcd for the workloads | ``--etcd-endpoints`` | ``ETCD_ENDPOINTS`` |
| NATS for the workloads | ``--nats-server`` | ``NATS_SERVER`` |
| API server (tests, dev) | ``--api-server`` | ``DYNAMO_OPERATOR_API_SERVER`` |
| planners' role (``ClusterRole/NAME`` or ``Role/NAME``) | ``--planner-role`` | ``DYNAMO_OPERATOR_PLANNER_ROLE`` |
| profiling Jobs' role | ``--profiler-role`` | ``DYNAMO_OPERATOR_PROFILER_ROLE`` |
| profiling image when a request names none | ``--profiler-image`` | ``DYNAMO_OPERATOR_PROFILER_IMAGE`` |

The roles are the platform chart's; the operator binds them, per graph or request, to a
ServiceAccount it creates (a planner patches its graph's replicas; a profiling Job writes its
results into a ConfigMap). ``--profiler-image`` may contain ``{framework}`` (``vllm``, ``sglang``,
``tensorrtllm``), replaced by the request's backend.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def own_namespace() -> str | None:
    """The namespace this process runs in, when it runs in a pod."""
    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or None
    except OSError:
        return None


@dataclass(frozen=True)
class OperatorConfig:
    """What the operator needs besides the objects it watches."""

    namespace_restricted: bool = False
    namespace: str | None = None
    etcd_endpoints: str = ""
    nats_server: str = ""
    api_server: str | None = None
    planner_role: tuple[str, str] | None = None
    profiler_role: tuple[str, str] | None = None
    profiler_image: str = ""

    @property
    def watched_namespaces(self) -> list[str]:
        """Namespaces to watch: the operator's own when restricted, else none (cluster-wide)."""
        if not self.namespace_restricted:
            return []
        if not self.namespace:
            raise ValueError(
                "namespace restriction is on but the operator's namespace is unknown: "
                "pass --namespace or set POD_NAMESPACE"
            )
        return [self.namespace]


def parse_role(text: str | None, flag: str) -> tuple[str, str] | None:
    """``ClusterRole/NAME`` or ``Role/NAME`` -> (kind, name); empty -> None."""
    if not text:
        return None
    kind, sep, name = text.partition("/")
    if not sep or kind not in ("ClusterRole", "Role") or not name:
        raise ValueError(f"{flag} must be ClusterRole/NAME or Role/NAME, got {text!r}")
    return kind, name


def build_parser() -> argparse.ArgumentParser:
    """``python3 -m dynamo.operator`` flags."""
    env = os.environ
    p = argparse.ArgumentParser(
        prog="python3 -m dynamo.operator",
        description="Reconcile DynamoGraphDeployments into Deployments, Services and status.",
    )
    p.add_argument(
        "--namespace-restricted",
        action="store_true",
        default=_truthy(env.get("DYNAMO_OPERATOR_NAMESPACE_RESTRICTED")),
        help="watch only the operator's own namespace (shared clusters)",
    )
    p.add_argument(
        "--namespace",
        default=env.get("DYNAMO_OPERATOR_NAMESPACE") or None,
        help="the operator's namespace (default: POD_NAMESPACE or the service account's)",
    )
    p.add_argument(
        "--etcd-endpoints", default=env.get("ETCD_ENDPOINTS", ""), help="ETCD_ENDPOINTS for workloads"
    )
    p.add_argument("--nats-server", default=env.get("NATS_SERVER", ""), help="NATS_SERVER for workloads")
    p.add_argument(
        "--api-server",
        default=env.get("DYNAMO_OPERATOR_API_SERVER") or None,
        help="talk to this API server URL without credentials (development and tests only)",
    )
    p.add_argument(
        "--planner-role",
        default=env.get("DYNAMO_OPERATOR_PLANNER_ROLE", ""),
        help="ClusterRole/NAME or Role/NAME to bind planner services' accounts to (the chart sets it)",
    )
    p.add_argument(
        "--profiler-role",
        default=env.get("DYNAMO_OPERATOR_PROFILER_ROLE", ""),
        help="ClusterRole/NAME or Role/NAME to bind profiling Jobs' accounts to (the chart sets it)",
    )
    p.add_argument(
        "--profiler-image",
        default=env.get("DYNAMO_OPERATOR_PROFILER_IMAGE", ""),
        help="image of profiling Jobs when a request has no spec.image ({framework} is replaced)",
    )
    p.add_argument("--liveness-port", type=int, default=8080, help="serve /healthz here (0: off)")
    p.add_argument("--verbose", action="store_true", help="debug logging")
    return p


def config_from_args(args: argparse.Namespace) -> OperatorConfig:
    return OperatorConfig(
        namespace_restricted=bool(args.namespace_restricted),
        namespace=args.namespace or own_namespace(),
        etcd_endpoints=args.etcd_endpoints,
        nats_server=args.nats_server,
        api_server=args.api_server,
        planner_role=parse_role(args.planner_role, "--planner-role"),
        profiler_role=parse_role(args.profiler_role, "--profiler-role"),
        profiler_image=args.profiler_image,
    )
