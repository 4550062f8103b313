"""DynamoGraphDeployment -> the Kubernetes objects that run it (pure functions, no API calls).

Per service: a Deployment (or, with ``multinode.nodeCount >= 2``, a LeaderWorkerSet whose groups
span nodes); for a frontend also a ClusterIP Service on port 8000 named ``<graph>-frontend``; for a
worker a ClusterIP Service ``<graph>-<service>`` on its status port (``system``, 9090), so
``http://<worker-service>:9090/health`` answers as the guides say. Frontends of a graph with workers
get ``DYN_DISCOVERY_NAMESPACES``: they discover only the Dynamo namespaces their graph uses.
A planner service's pods get ``DYN_PARENT_DGD_K8S_NAME`` (the graph its Kubernetes connector
scales) and, when the operator knows the platform chart's planner role, a ServiceAccount
``<graph>-planner`` bound to it in the graph's namespace (may get and patch the graph).
Every object carries an owner reference to the graph, so deleting the graph deletes them.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dynamo.deploy.spec import (
    API_VERSION,
    DEFAULT_SHARED_MEMORY,
    DGD_KIND,
    FRONTEND_PORT,
    FRONTEND_PORT_NAME,
    SYSTEM_PORT,
    SYSTEM_PORT_NAME,
    EnvVar,
    Graph,
    Service,
    SpecError,
    dns_label,
    merge_envs,
)
from dynamo.operator.images import secrets_for_image

LABEL_GRAPH = "nvidia.com/dynamo-graph-deployment-name"
LABEL_COMPONENT = "nvidia.com/dynamo-component"
LABEL_COMPONENT_TYPE = "nvidia.com/dynamo-component-type"
LABEL_SUB_COMPONENT_TYPE = "nvidia.com/dynamo-sub-component-type"
LABEL_DYNAMO_NAMESPACE = "nvidia.com/dynamo-namespace"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "dynamo-operator"
MAIN_CONTAINER = "main"
GPU_RESOURCE = "nvidia.com/gpu"
LWS_API_VERSION = "leaderworkerset.x-k8s.io/v1"
MAX_NAME = 63
PARENT_DGD_ENV = "DYN_PARENT_DGD_K8S_NAME"
RBAC_API_VERSION = "rbac.authorization.k8s.io/v1"


@dataclass(frozen=True)
class RenderContext:
    """Facts about the cluster the graph lands in."""

    namespace: str
    graph_uid: str
    etcd_endpoints: str = ""
    nats_server: str = ""
    # registry host -> names of docker-config secrets for it (see dynamo.operator.images)
    pull_secrets: Mapping[str, list[str]] = field(default_factory=dict)
    # (kind, name) of the chart's planner role (ClusterRole or Role); None: planners get no account
    planner_role: tuple[str, str] | None = None


def child_name(graph: Graph, service: Service) -> str:
    """``<graph>-<service>`` in DNS-1123 form (``vllm-agg`` + ``VllmDecodeWorker`` -> ``vllm-agg-vllmdecodeworker``)."""
    name = f"{graph.name}-{dns_label(service.name)}"
    if len(name) > MAX_NAME:
        raise SpecError(
            f"the name {name!r} for service {service.name} is {len(name)} characters; Kubernetes allows "
            f"{MAX_NAME}: shorten the graph name or the service name"
        )
    return name


def frontend_service_name(graph: Graph, service: Service) -> str:
    """``<graph>-frontend`` for the graph's only frontend, else ``<graph>-<service>``."""
    if len(graph.frontends()) == 1:
        return f"{graph.name}-frontend"
    return child_name(graph, service)


def selector_labels(graph: Graph, service: Service) -> dict[str, str]:
    return {LABEL_GRAPH: graph.name, LABEL_COMPONENT: dns_label(service.name)}


def common_labels(graph: Graph, service: Service, ctx: RenderContext) -> dict[str, str]:
    labels = selector_labels(graph, service)
    labels[LABEL_COMPONENT_TYPE] = service.component_type
    if service.sub_component_type:
        labels[LABEL_SUB_COMPONENT_TYPE] = service.sub_component_type
    labels[LABEL_DYNAMO_NAMESPACE] = service.dynamo_namespace_in(ctx.namespace, graph.name)
    labels[LABEL_MANAGED_BY] = MANAGED_BY
    return labels


def owner_reference(graph: Graph, uid: str) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": DGD_KIND,
        "name": graph.name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def injected_env(graph: Graph, service: Service, ctx: RenderContext) -> list[EnvVar]:
    """What the operator sets on every main container before the manifest's own ``envs``."""
    envs = [EnvVar("DYN_NAMESPACE", service.dynamo_namespace_in(ctx.namespace, graph.name))]
    if ctx.etcd_endpoints:
        envs.append(EnvVar("ETCD_ENDPOINTS", ctx.etcd_endpoints))
    if ctx.nats_server:
        envs.append(EnvVar("NATS_SERVER", ctx.nats_server))
    if service.is_frontend:
        envs.append(EnvVar("DYN_HTTP_PORT", str(FRONTEND_PORT)))
        envs += graph.frontend_env(ctx.namespace)
    else:
        envs.append(EnvVar("DYN_SYSTEM_PORT", str(SYSTEM_PORT)))
    if service.component_type == "planner":
        envs.append(EnvVar(PARENT_DGD_ENV, graph.name))
    envs.append(EnvVar("POD_IP", value_from={"fieldRef": {"fieldPath": "status.podIP"}}))
    envs.append(EnvVar("POD_NAME", value_from={"fieldRef": {"fieldPath": "metadata.name"}}))
    envs.append(EnvVar("POD_NAMESPACE", value_from={"fieldRef": {"fieldPath": "metadata.namespace"}}))
    return envs


def container_resources(service: Service, written: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``resources`` with ``gpu`` mapped to ``nvidia.com/gpu`` in limits and, equal, in requests."""
    out: dict[str, Any] = copy.deepcopy(dict(written or {}))
    requests: dict[str, Any] = dict(out.get("requests") or {})
    limits: dict[str, Any] = dict(out.get("limits") or {})
    requests.update({k: v for k, v in service.requests.items() if k != "gpu"})
    limits.update({k: v for k, v in service.limits.items() if k != "gpu"})
    gpus = service.gpus
    if gpus is not None and str(gpus) not in ("", "0"):
        limits[GPU_RESOURCE] = str(gpus)
        requests[GPU_RESOURCE] = str(gpus)
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def _ports(service: Service) -> list[dict[str, Any]]:
    if service.is_frontend:
        return [{"name": FRONTEND_PORT_NAME, "containerPort": FRONTEND_PORT, "protocol": "TCP"}]
    return [{"name": SYSTEM_PORT_NAME, "containerPort": SYSTEM_PORT, "protocol": "TCP"}]


def main_container(graph: Graph, service: Service, ctx: RenderContext) -> dict[str, Any]:
    """The service's main container: ``mainContainer`` as written, plus env, ports, probes, resources."""
    if not service.main.image:
        raise SpecError(f"service {service.name} has no extraPodSpec.mainContainer.image")
    c: dict[str, Any] = copy.deepcopy(service.main.raw)
    c.setdefault("name", MAIN_CONTAINER)
    written_env = [
        EnvVar(e["name"], e.get("value"), e.get("valueFrom")) for e in c.get("env") or [] if e.get("name")
    ]
    envs = merge_envs(injected_env(graph, service, ctx), graph.envs, service.envs, written_env)
    c["env"] = [e.to_k8s() for e in envs]
    if service.env_from_secret:
        env_from = list(c.get("envFrom") or [])
        env_from.append({"secretRef": {"name": service.env_from_secret}})
        c["envFrom"] = env_from
    ports = _ports(service)
    taken = {p.get("containerPort") for p in ports} | {p.get("name") for p in ports}
    ports += [
        p for p in c.get("ports") or [] if p.get("containerPort") not in taken and p.get("name") not in taken
    ]
    c["ports"] = ports
    probes = service.probes()
    for key, field_name in (
        ("readiness", "readinessProbe"),
        ("liveness", "livenessProbe"),
        ("startup", "startupProbe"),
    ):
        if key in probes and field_name not in c:
            c[field_name] = probes[key]
    resources = container_resources(service, c.get("resources"))
    if resources:
        c["resources"] = resources
    mounts = list(c.get("volumeMounts") or [])
    for vm in service.volume_mounts:
        mounts.append({"name": vm["name"], "mountPath": vm.get("mountPoint") or vm.get("mountPath")})
    if _shared_memory(service) is not None:
        mounts.append({"name": "shared-memory", "mountPath": "/dev/shm"})
    if mounts:
        c["volumeMounts"] = mounts
    return c


def _shared_memory(service: Service) -> str | None:
    if service.shared_memory.get("disabled"):
        return None
    return str(service.shared_memory.get("size") or DEFAULT_SHARED_MEMORY)


def pod_template(graph: Graph, service: Service, ctx: RenderContext) -> dict[str, Any]:
    """The pod template: ``extraPodSpec`` as written, around the main container."""
    extra = copy.deepcopy(service.extra_pod_spec)
    spec: dict[str, Any] = {
        "terminationGracePeriodSeconds": 60,
        "securityContext": {"fsGroup": 1000},
    }
    extra_containers = list(extra.pop("containers", None) or [])
    extra_volumes = list(extra.pop("volumes", None) or [])
    written_secrets = list(extra.pop("imagePullSecrets", None) or [])
    spec.update(extra)
    spec["containers"] = [main_container(graph, service, ctx), *extra_containers]
    if service.component_type == "planner" and ctx.planner_role is not None:
        spec.setdefault("serviceAccountName", planner_account_name(graph))

    volumes = extra_volumes
    pvc_names = {p.get("name") for p in graph.pvcs}
    for vm in service.volume_mounts:
        if vm.get("name") not in pvc_names:
            raise SpecError(
                f"service {service.name} mounts {vm.get('name')!r}, which spec.pvcs does not name"
            )
        volumes.append({"name": vm["name"], "persistentVolumeClaim": {"claimName": vm["name"]}})
    shm = _shared_memory(service)
    if shm is not None:
        volumes.append({"name": "shared-memory", "emptyDir": {"medium": "Memory", "sizeLimit": shm}})
    if volumes:
        spec["volumes"] = volumes

    secrets = list(written_secrets)
    if service.pull_secret_discovery:
        have = {s.get("name") for s in secrets}
        for name in secrets_for_image(service.main.image, ctx.pull_secrets):
            if name not in have:
                secrets.append({"name": name})
                have.add(name)
    if secrets:
        spec["imagePullSecrets"] = secrets

    meta_extra = service.extra_pod_metadata
    labels = {**dict(meta_extra.get("labels") or {}), **common_labels(graph, service, ctx)}
    annotations = {**service.annotations, **dict(meta_extra.get("annotations") or {})}
    metadata: dict[str, Any] = {"labels": labels}
    if annotations:
        metadata["annotations"] = annotations
    return {"metadata": metadata, "spec": spec}


def _meta(graph: Graph, service: Service, ctx: RenderContext, name: str) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": ctx.namespace,
        "labels": common_labels(graph, service, ctx),
        "ownerReferences": [owner_reference(graph, ctx.graph_uid)],
    }
    if service.annotations:
        meta["annotations"] = dict(service.annotations)
    return meta


def deployment(graph: Graph, service: Service, ctx: RenderContext) -> dict[str, Any]:
    name = child_name(graph, service)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(graph, service, ctx, name),
        "spec": {
            "replicas": service.replicas,
            "selector": {"matchLabels": selector_labels(graph, service)},
            "template": pod_template(graph, service, ctx),
        },
    }


def leader_worker_set(graph: Graph, service: Service, ctx: RenderContext) -> dict[str, Any]:
    """A multi-node service: ``replicas`` groups of ``nodeCount`` pods (one leader, the rest workers)."""
    name = child_name(graph, service)
    template = pod_template(graph, service, ctx)
    return {
        "apiVersion": LWS_API_VERSION,
        "kind": "LeaderWorkerSet",
        "metadata": _meta(graph, service, ctx, name),
        "spec": {
            "replicas": service.replicas,
            "startupPolicy": "LeaderCreated",
            "leaderWorkerTemplate": {
                "size": service.node_count,
                "restartPolicy": "RecreateGroupOnPodRestart",
                "workerTemplate": template,
            },
        },
    }


def _cluster_ip_service(
    graph: Graph, service: Service, ctx: RenderContext, name: str, port_name: str, port: int
) -> dict[str, Any]:
    """A ClusterIP Service selecting ``service``'s pods, exposing their named port ``port_name``."""
    meta = _meta(graph, service, ctx, name)
    meta.pop("annotations", None)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta,
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(graph, service),
            "ports": [{"name": port_name, "port": port, "targetPort": port_name, "protocol": "TCP"}],
        },
    }


def frontend_service(graph: Graph, service: Service, ctx: RenderContext) -> dict[str, Any]:
    """A frontend's HTTP port."""
    return _cluster_ip_service(
        graph, service, ctx, frontend_service_name(graph, service), FRONTEND_PORT_NAME, FRONTEND_PORT
    )


def worker_service(graph: Graph, service: Service, ctx: RenderContext) -> dict[str, Any]:
    """A worker's status port as a Service named like its Deployment (``<graph>-<service>``)."""
    return _cluster_ip_service(graph, service, ctx, child_name(graph, service), SYSTEM_PORT_NAME, SYSTEM_PORT)


def workload(graph: Graph, service: Service, ctx: RenderContext) -> dict[str, Any]:
    """The object that runs a service's pods."""
    if service.node_count > 1:
        return leader_worker_set(graph, service, ctx)
    return deployment(graph, service, ctx)


def planner_account_name(graph: Graph) -> str:
    return f"{graph.name}-planner"


def planner_access(graph: Graph, ctx: RenderContext) -> list[dict[str, Any]]:
    """The planners' ServiceAccount and its RoleBinding to the chart's planner role (none without
    a planner service or a known role; a pod spec that names its own account keeps it)."""
    planners = [s for s in graph.services.values() if s.component_type == "planner"]
    if not planners or ctx.planner_role is None:
        return []
    kind, role = ctx.planner_role
    name = planner_account_name(graph)
    meta = _meta(graph, planners[0], ctx, name)
    meta.pop("annotations", None)
    meta["labels"] = {LABEL_GRAPH: graph.name, LABEL_MANAGED_BY: MANAGED_BY}
    account = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta}
    binding = {
        "apiVersion": RBAC_API_VERSION,
        "kind": "RoleBinding",
        "metadata": copy.deepcopy(meta),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": ctx.namespace}],
    }
    return [account, binding]


def render_graph(graph: Graph, ctx: RenderContext) -> list[dict[str, Any]]:
    """Every child object of ``graph``, in a stable order (workloads, frontend Services, worker
    Services, the planners' account and binding)."""
    objects = [workload(graph, s, ctx) for s in graph.services.values()]
    objects += [frontend_service(graph, s, ctx) for s in graph.services.values() if s.is_frontend]
    objects += [worker_service(graph, s, ctx) for s in graph.services.values() if s.is_worker]
    objects += planner_access(graph, ctx)
    names = [(o["kind"], o["metadata"]["name"]) for o in objects]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise SpecError(f"two services map to the same Kubernetes name: {sorted(d[1] for d in dupes)}")
    return objects
