"""The DynamoGraphDeployment (DGD) as typed Python: one parser and one set of defaults shared by the
Kubernetes operator (``dynamo.operator``) and the local runner (``python3 -m dynamo.deploy run``),
so a manifest means the same thing on a cluster and on a laptop.

Only what both consumers interpret is typed here; the rest of a service (``extraPodSpec`` beyond
``mainContainer``, probes' details) stays as plain dicts, exactly as written in the manifest.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

GROUP = "nvidia.com"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
DGD_KIND = "DynamoGraphDeployment"
DGD_PLURAL = "dynamographdeployments"
DGDR_KIND = "DynamoGraphDeploymentRequest"
DGDR_PLURAL = "dynamographdeploymentrequests"

COMPONENT_TYPES = ("frontend", "worker", "planner")
# Services that run an engine worker (the reference's prefill/decode roles are ``subComponentType``s).
WORKER_COMPONENT_TYPES = ("worker",)
SUB_COMPONENT_TYPES = ("prefill", "decode")

FRONTEND_PORT = 8000
FRONTEND_PORT_NAME = "http"
SYSTEM_PORT = 9090
SYSTEM_PORT_NAME = "system"
DEFAULT_SHARED_MEMORY = "8Gi"
# Comma-separated Dynamo namespaces a frontend discovers workers in (its ``--all-namespaces`` overrides).
DISCOVERY_NAMESPACES_ENV = "DYN_DISCOVERY_NAMESPACES"

ANNOTATION_DISABLE_PULL_SECRET_DISCOVERY = "nvidia.com/disable-image-pull-secret-discovery"

_DNS_LABEL = re.compile(r"[^a-z0-9-]+")


class SpecError(ValueError):
    """A manifest that cannot be deployed; the message says what to fix, in words."""


def dns_label(text: str) -> str:
    """Lower-case ``text`` into a DNS-1123 label fragment (``VllmDecodeWorker`` -> ``vllmdecodeworker``)."""
    return _DNS_LABEL.sub("-", text.lower()).strip("-")


def derive_dynamo_namespace(k8s_namespace: str, graph_name: str) -> str:
    """The Dynamo namespace used when a service does not set ``dynamoNamespace``."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", f"{k8s_namespace}-{graph_name}")


def default_probes(component_type: str) -> dict[str, dict[str, Any]]:
    """Probes a service gets unless its manifest sets its own (keys: readiness, liveness, startup)."""
    if component_type == "frontend":
        port: str = FRONTEND_PORT_NAME
        return {
            "readiness": {
                "httpGet": {"path": "/health", "port": port},
                "periodSeconds": 10,
                "timeoutSeconds": 3,
                "failureThreshold": 3,
            },
            "liveness": {
                "httpGet": {"path": "/live", "port": port},
                "periodSeconds": 10,
                "timeoutSeconds": 3,
                "failureThreshold": 3,
            },
        }
    port = SYSTEM_PORT_NAME
    return {
        "readiness": {
            "httpGet": {"path": "/health", "port": port},
            "periodSeconds": 10,
            "timeoutSeconds": 3,
            "failureThreshold": 3,
        },
        "liveness": {
            "httpGet": {"path": "/live", "port": port},
            "periodSeconds": 10,
            "timeoutSeconds": 3,
            "failureThreshold": 3,
        },
        # Model loading is slow: give it up to 30 minutes before liveness starts counting.
        "startup": {
            "httpGet": {"path": "/live", "port": port},
            "periodSeconds": 10,
            "timeoutSeconds": 3,
            "failureThreshold": 180,
        },
    }


@dataclass(frozen=True)
class EnvVar:
    """One ``{name, value}`` (or ``valueFrom``) entry of ``envs``."""

    name: str
    value: str | None = None
    value_from: dict[str, Any] | None = None

    def to_k8s(self) -> dict[str, Any]:
        if self.value_from is not None:
            return {"name": self.name, "valueFrom": copy.deepcopy(self.value_from)}
        return {"name": self.name, "value": self.value if self.value is not None else ""}


@dataclass(frozen=True)
class MainContainer:
    """``extraPodSpec.mainContainer``: the process a service runs."""

    image: str | None
    command: list[str]
    args: list[str]
    working_dir: str | None
    raw: dict[str, Any]


@dataclass(frozen=True)
class Service:
    """One entry of ``spec.services``."""

    name: str
    component_type: str
    sub_component_type: str | None
    dynamo_namespace: str | None
    replicas: int
    envs: list[EnvVar]
    env_from_secret: str | None
    annotations: dict[str, str]
    requests: dict[str, str]
    limits: dict[str, str]
    readiness_probe: dict[str, Any] | None
    liveness_probe: dict[str, Any] | None
    main: MainContainer
    extra_pod_spec: dict[str, Any]
    extra_pod_metadata: dict[str, Any]
    volume_mounts: list[dict[str, Any]]
    node_count: int
    shared_memory: dict[str, Any]
    raw: dict[str, Any] = field(repr=False)

    @property
    def is_frontend(self) -> bool:
        return self.component_type == "frontend"

    @property
    def is_worker(self) -> bool:
        """Runs an engine worker (prefill, decode or aggregated), with a status server on ``system``."""
        return self.component_type in WORKER_COMPONENT_TYPES

    @property
    def gpus(self) -> str | None:
        """GPUs per pod: ``limits.gpu``, else ``requests.gpu`` (extended resources are never over-committed)."""
        return self.limits.get("gpu") or self.requests.get("gpu")

    @property
    def pull_secret_discovery(self) -> bool:
        value = self.annotations.get(ANNOTATION_DISABLE_PULL_SECRET_DISCOVERY, "false")
        return str(value).strip().lower() != "true"

    def dynamo_namespace_in(self, k8s_namespace: str, graph_name: str) -> str:
        """``dynamoNamespace`` if set, else derived from the Kubernetes namespace and the graph name."""
        return self.dynamo_namespace or derive_dynamo_namespace(k8s_namespace, graph_name)

    def probes(self) -> dict[str, dict[str, Any]]:
        """The probes this service runs with: its own where given, the defaults elsewhere
        (a worker keeps its startup probe on ``/live``, which answers as soon as the process is up)."""
        probes = default_probes(self.component_type)
        if self.readiness_probe is not None:
            probes["readiness"] = copy.deepcopy(self.readiness_probe)
        if self.liveness_probe is not None:
            probes["liveness"] = copy.deepcopy(self.liveness_probe)
        return probes


@dataclass(frozen=True)
class Graph:
    """A parsed DynamoGraphDeployment."""

    name: str
    namespace: str | None
    services: dict[str, Service]
    envs: list[EnvVar]
    pvcs: list[dict[str, Any]]
    backend_framework: str | None
    raw: dict[str, Any] = field(repr=False)

    def frontends(self) -> list[Service]:
        return [s for s in self.services.values() if s.is_frontend]

    def workers(self) -> list[Service]:
        return [s for s in self.services.values() if s.is_worker]

    def discovery_namespaces(self, k8s_namespace: str) -> list[str] | None:
        """The Dynamo namespaces this graph's frontends discover: every namespace its services use
        (sorted, once each), since a graph may put its frontend and its workers in different ones.
        ``None`` for a graph without workers: a frontend on its own serves whatever registers
        (a shared frontend), so it is not scoped."""
        if not self.workers():
            return None
        return sorted({s.dynamo_namespace_in(k8s_namespace, self.name) for s in self.services.values()})

    def frontend_env(self, k8s_namespace: str) -> list[EnvVar]:
        """What the operator and the local runner set on this graph's frontends, before the
        manifest's own ``envs`` (so a ``DYN_DISCOVERY_NAMESPACES`` written in the graph wins)."""
        namespaces = self.discovery_namespaces(k8s_namespace)
        if namespaces is None:
            return []
        return [EnvVar(DISCOVERY_NAMESPACES_ENV, ",".join(namespaces))]


def _str_map(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SpecError(f"{where} must be a map, got {type(value).__name__}")
    return {str(k): str(v) for k, v in value.items()}


def _envs(value: Any, where: str) -> list[EnvVar]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise SpecError(f"{where} must be a list of {{name, value}}")
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, Mapping) or not item.get("name"):
            raise SpecError(f"{where}[{i}] needs a name")
        raw_value = item.get("value")
        out.append(
            EnvVar(
                name=str(item["name"]),
                value=None if raw_value is None else str(raw_value),
                value_from=dict(item["valueFrom"]) if item.get("valueFrom") else None,
            )
        )
    return out


def _str_list(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str) or not isinstance(value, list):
        raise SpecError(f"{where} must be a list of strings")
    return [str(v) for v in value]


def parse_service(name: str, raw: Mapping[str, Any]) -> Service:
    """Parse one ``spec.services.<name>`` entry."""
    where = f"spec.services.{name}"
    if not isinstance(raw, Mapping):
        raise SpecError(f"{where} must be a map")
    component_type = raw.get("componentType")
    if component_type not in COMPONENT_TYPES:
        raise SpecError(
            f"{where}.componentType must be one of {', '.join(COMPONENT_TYPES)}, got {component_type!r}"
        )
    sub = raw.get("subComponentType")
    if sub is not None and sub not in SUB_COMPONENT_TYPES:
        raise SpecError(
            f"{where}.subComponentType must be one of {', '.join(SUB_COMPONENT_TYPES)}, got {sub!r}"
        )
    replicas = raw.get("replicas", 1)
    if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
        raise SpecError(f"{where}.replicas must be a whole number >= 0, got {replicas!r}")
    resources = raw.get("resources") or {}
    extra = dict(raw.get("extraPodSpec") or {})
    main_raw = dict(extra.pop("mainContainer", None) or {})
    main = MainContainer(
        image=main_raw.get("image"),
        command=_str_list(main_raw.get("command"), f"{where}.extraPodSpec.mainContainer.command"),
        args=_str_list(main_raw.get("args"), f"{where}.extraPodSpec.mainContainer.args"),
        working_dir=main_raw.get("workingDir"),
        raw=main_raw,
    )
    multinode = raw.get("multinode") or {}
    node_count = int(multinode.get("nodeCount", 1))
    if node_count < 1:
        raise SpecError(f"{where}.multinode.nodeCount must be >= 1")
    return Service(
        name=name,
        component_type=str(component_type),
        sub_component_type=sub,
        dynamo_namespace=raw.get("dynamoNamespace") or None,
        replicas=replicas,
        envs=_envs(raw.get("envs"), f"{where}.envs"),
        env_from_secret=raw.get("envFromSecret") or None,
        annotations=_str_map(raw.get("annotations"), f"{where}.annotations"),
        requests=_str_map(resources.get("requests"), f"{where}.resources.requests"),
        limits=_str_map(resources.get("limits"), f"{where}.resources.limits"),
        readiness_probe=raw.get("readinessProbe"),
        liveness_probe=raw.get("livenessProbe"),
        main=main,
        extra_pod_spec=extra,
        extra_pod_metadata=dict(raw.get("extraPodMetadata") or {}),
        volume_mounts=list(raw.get("volumeMounts") or []),
        node_count=node_count,
        shared_memory=dict(raw.get("sharedMemory") or {}),
        raw=dict(raw),
    )


def parse_graph(obj: Mapping[str, Any]) -> Graph:
    """Parse a DynamoGraphDeployment object (as loaded from YAML or received from the API)."""
    if obj.get("kind") not in (None, DGD_KIND):
        raise SpecError(f"expected kind {DGD_KIND}, got {obj.get('kind')!r}")
    meta = obj.get("metadata") or {}
    name = meta.get("name")
    if not name:
        raise SpecError("metadata.name is required")
    spec = obj.get("spec") or {}
    services_raw = spec.get("services") or {}
    if not isinstance(services_raw, Mapping) or not services_raw:
        raise SpecError("spec.services must name at least one service")
    services = {str(n): parse_service(str(n), s) for n, s in services_raw.items()}
    return Graph(
        name=str(name),
        namespace=meta.get("namespace"),
        services=services,
        envs=_envs(spec.get("envs"), "spec.envs"),
        pvcs=list(spec.get("pvcs") or []),
        backend_framework=spec.get("backendFramework"),
        raw=dict(obj),
    )


def load_graph_file(path: str | Path) -> Graph:
    """Load the one DynamoGraphDeployment in a YAML file (other documents in it are ignored)."""
    text = Path(path).read_text()
    docs = [d for d in yaml.safe_load_all(text) if d]
    graphs = [d for d in docs if isinstance(d, Mapping) and d.get("kind") == DGD_KIND]
    if not graphs:
        raise SpecError(f"{path}: no {DGD_KIND} in this file")
    if len(graphs) > 1:
        raise SpecError(f"{path}: {len(graphs)} {DGD_KIND} documents; give one per file")
    return parse_graph(graphs[0])


def merge_envs(*groups: list[EnvVar]) -> list[EnvVar]:
    """Concatenate env groups; a later group's variable replaces an earlier one of the same name
    (keeping the earlier one's position, so ``$(VAR)`` references keep resolving)."""
    merged: dict[str, EnvVar] = {}
    for group in groups:
        for env in group:
            merged[env.name] = env
    return list(merged.values())
