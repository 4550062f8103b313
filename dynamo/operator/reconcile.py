"""One reconcile pass of a DynamoGraphDeployment: render its children, apply them, delete the ones
it no longer has, and roll their status up into the graph's. Idempotent: safe to run any time."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from dynamo.deploy.spec import DGD_PLURAL, GROUP, VERSION, Graph, SpecError, parse_graph
from dynamo.operator.apply import apply, status_patch
from dynamo.operator.config import OperatorConfig
from dynamo.operator.images import DOCKER_CONFIG_TYPES, registry_index
from dynamo.operator.kube import PLURALS, ApiError, KubeClient, resource_path
from dynamo.operator.render import LABEL_GRAPH, RenderContext, child_name, render_graph
from dynamo.operator.status import failed_status, rollup

log = logging.getLogger(__name__)

# Kinds the operator creates, pruned when a graph stops needing them.
CHILD_KINDS = (
    ("apps/v1", "Deployment"),
    ("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet"),
    ("v1", "Service"),
    ("v1", "ServiceAccount"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"),
)
WORKLOAD_KINDS = ("Deployment", "LeaderWorkerSet")
# Ready-condition reasons set by a reconcile that could not deploy the spec as written.
BLOCKING_REASONS = {"InvalidSpec", "ApplyFailed"}


def graph_path(namespace: str, name: str, subresource: str | None = None) -> str:
    return resource_path(f"{GROUP}/{VERSION}", DGD_PLURAL, namespace, name, subresource)


async def pull_secret_index(
    client: KubeClient, namespace: str, logger: logging.Logger
) -> dict[str, list[str]]:
    """Registry host -> docker-config secret names in ``namespace`` (empty if we may not list secrets)."""
    try:
        secrets = await client.list(resource_path("v1", "secrets", namespace))
    except ApiError as exc:
        logger.warning("image pull secret discovery is off: cannot list secrets (%s)", exc)
        return {}
    return registry_index(s for s in secrets if s.get("type") in DOCKER_CONFIG_TYPES)


def _owned_by(obj: Mapping[str, Any], uid: str) -> bool:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(ref.get("uid") == uid for ref in refs)


async def list_children(
    client: KubeClient, namespace: str, graph_name: str, uid: str
) -> list[dict[str, Any]]:
    """Every object of the kinds we create that carries this graph's label and owner reference."""
    children: list[dict[str, Any]] = []
    for api_version, kind in CHILD_KINDS:
        path = resource_path(api_version, PLURALS[(api_version, kind)], namespace)
        try:
            items = await client.list(path, f"{LABEL_GRAPH}={graph_name}")
        except ApiError as exc:
            if exc.status == 404:  # e.g. LeaderWorkerSet not installed
                continue
            raise
        for item in items:
            item.setdefault("apiVersion", api_version)
            item.setdefault("kind", kind)
            if _owned_by(item, uid):
                children.append(item)
    return children


async def reconcile_graph(
    body: Mapping[str, Any], client: KubeClient, config: OperatorConfig, logger: logging.Logger
) -> dict[str, Any]:
    """Bring the cluster in line with the graph ``body``; returns the graph's new ``status``."""
    meta = body.get("metadata") or {}
    namespace, uid = str(meta.get("namespace") or "default"), str(meta.get("uid") or "")
    previous = body.get("status") or {}
    try:
        graph = parse_graph(body)
        needs_secrets = any(s.pull_secret_discovery for s in graph.services.values())
        index = await pull_secret_index(client, namespace, logger) if needs_secrets else {}
        ctx = RenderContext(
            namespace=namespace,
            graph_uid=uid,
            etcd_endpoints=config.etcd_endpoints,
            nats_server=config.nats_server,
            pull_secrets=index,
            planner_role=config.planner_role,
        )
        desired = render_graph(graph, ctx)
    except SpecError as exc:
        logger.error("cannot deploy this graph: %s", exc)
        return failed_status("InvalidSpec", str(exc), previous)

    workloads: dict[str, dict[str, Any] | None] = {}
    by_name = {child_name(graph, service): svc for svc, service in graph.services.items()}
    for obj in desired:
        try:
            action, live = await apply(client, obj)
        except ApiError as exc:
            if exc.status >= 500 or exc.status in (409, 429):
                raise  # temporary: kopf retries the handler with backoff
            message = f"{obj['kind']} {obj['metadata']['name']}: {exc}"
            if obj["kind"] == "LeaderWorkerSet" and exc.status == 404:
                message = (
                    f"service {by_name.get(obj['metadata']['name'])} uses multinode, which needs LeaderWorkerSet "
                    "(leaderworkerset.x-k8s.io) installed in the cluster; it is not"
                )
            logger.error("cannot apply %s", message)
            return failed_status("ApplyFailed", message, previous)
        if action != "unchanged":
            logger.info("%s %s %s", action, obj["kind"], obj["metadata"]["name"])
        if obj["kind"] in WORKLOAD_KINDS:
            workloads[by_name[obj["metadata"]["name"]]] = live

    await prune(client, graph, namespace, uid, desired, logger)
    return rollup(graph, workloads, previous, meta.get("generation"))


async def prune(
    client: KubeClient,
    graph: Graph,
    namespace: str,
    uid: str,
    desired: list[dict[str, Any]],
    logger: logging.Logger,
) -> None:
    """Delete children of this graph that its spec no longer asks for (a removed service)."""
    wanted = {(o["kind"], o["metadata"]["name"]) for o in desired}
    for child in await list_children(client, namespace, graph.name, uid):
        key = (child["kind"], child["metadata"]["name"])
        if key in wanted:
            continue
        path = resource_path(
            child["apiVersion"], PLURALS[(child["apiVersion"], child["kind"])], namespace, key[1]
        )
        logger.info("deleting %s %s: the graph no longer has it", *key)
        await client.delete(path)


REFRESH_ATTEMPTS = 5  # reads of a graph whose status write lost a race (409) before giving up


async def refresh_status(
    client: KubeClient, namespace: str, graph_name: str, logger: logging.Logger
) -> dict[str, Any] | None:
    """Recompute a graph's status from its live workloads and patch it if it changed. The patch is
    conditional on the graph as read (kopf's own annotations, or a writer outside this process,
    may have changed it meanwhile); when it loses that race, the graph is read and the status
    computed again: the workload event that called this may be the last one, so dropping it
    would leave the status stale."""
    for _ in range(REFRESH_ATTEMPTS):
        body = await client.get(graph_path(namespace, graph_name))
        if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
            return None
        try:
            graph = parse_graph(body)
            names = {svc: child_name(graph, service) for svc, service in graph.services.items()}
        except SpecError:
            return None  # the reconcile handler reports this in the graph's condition
        uid = str(body["metadata"].get("uid") or "")
        children = await list_children(client, namespace, graph_name, uid)
        by_name = {c["metadata"]["name"]: c for c in children if c["kind"] in WORKLOAD_KINDS}
        workloads = {svc: by_name.get(name) for svc, name in names.items()}
        previous = body.get("status") or {}
        reasons = {c.get("reason") for c in previous.get("conditions") or [] if c.get("type") == "Ready"}
        if reasons & BLOCKING_REASONS:
            return None  # the last reconcile could not deploy the spec: keep saying why until it changes
        status = rollup(graph, workloads, previous, body["metadata"].get("generation"))
        if _same_status(previous, status):
            return status
        patch: dict[str, Any] = {"status": status_patch(previous, status)}
        if body["metadata"].get("resourceVersion"):
            patch["metadata"] = {"resourceVersion": body["metadata"]["resourceVersion"]}
        try:
            await client.merge_patch(graph_path(namespace, graph_name, "status"), patch)
        except ApiError as exc:
            if exc.status != 409:
                raise
            logger.debug("graph %s/%s changed while computing its status; again", namespace, graph_name)
            continue
        logger.debug("graph %s/%s status: %s", namespace, graph_name, status["state"])
        return status
    logger.warning(
        "graph %s/%s kept changing while its status was computed (%d times); the next workload event "
        "recomputes it",
        namespace,
        graph_name,
        REFRESH_ATTEMPTS,
    )
    return None


def _same_status(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    def strip(s: Mapping[str, Any]) -> Any:
        conds = [{k: v for k, v in c.items() if k != "lastTransitionTime"} for c in s.get("conditions") or []]
        return {**s, "conditions": conds}

    return bool(strip(old) == strip(new))
