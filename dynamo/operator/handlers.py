"""The kopf handlers of the Dynamo operator, registered on a registry built per configuration.

- graph created / changed / operator restarted -> ``reconcile_graph`` and write its status;
- no timers or delete handlers, hence no finalizers: a graph deletes even with the operator gone
  (owner references let the garbage collector remove its children);
- a child Deployment changed -> roll its status up into the graph (deleted by hand -> recreate);
- a child Service (frontend or worker) deleted by hand -> recreate;
- a docker-config secret appeared -> reconcile the graphs of its namespace (pull secret discovery);
- request (DGDR) created / changed, or its profiling Job or generated graph changed -> its next
  step (``dynamo.operator.dgdr.advance``: Job, results, graph, status).

kopf runs the handlers of different objects at once, so a graph's reconcile and its children's
events may overlap: every handler that writes a graph's (or a request's) status holds that object's
lock (``ObjectLocks``) from its reads to its write, so a verdict computed from older children can
never land after, and over, one computed from newer ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import kopf

from dynamo.deploy.request import V1BETA1 as DGDR_API_VERSION
from dynamo.deploy.spec import DGD_PLURAL, DGDR_PLURAL, GROUP, VERSION
from dynamo.operator.apply import status_patch
from dynamo.operator.config import OperatorConfig
from dynamo.operator.dgdr import LABEL_REQUEST, advance
from dynamo.operator.images import DOCKER_CONFIG_TYPES
from dynamo.operator.kube import KubeClient, resource_path
from dynamo.operator.reconcile import graph_path, reconcile_graph, refresh_status
from dynamo.operator.render import LABEL_GRAPH, LABEL_MANAGED_BY, MANAGED_BY

LWS_GROUP = "leaderworkerset.x-k8s.io"
DGDR_VERSION = DGDR_API_VERSION.split("/")[1]

log = logging.getLogger(__name__)

STORAGE_PREFIX = "dynamo.nvidia.com"


def login(config: OperatorConfig, settings: kopf.OperatorSettings, logger: Any) -> kopf.ConnectionInfo:
    """Credentials: ``--api-server`` (dev/tests), else the pod's service account, else kubeconfig."""
    if config.api_server:
        return kopf.ConnectionInfo(
            server=config.api_server, insecure=True, default_namespace=config.namespace
        )
    info = kopf.login_with_service_account(settings=settings)
    if info is None:
        try:
            info = kopf.login_via_client(logger=logger, settings=settings)
        except ImportError:
            info = None
    if info is None:
        info = kopf.login_with_kubeconfig(settings=settings)
    if info is None:
        raise kopf.LoginError("no credentials: not in a pod, no kubeconfig, and no --api-server given")
    return info


@dataclass
class _HeldLock:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0  # handlers holding or waiting for it


class ObjectLocks:
    """One ``asyncio.Lock`` per object (kind, namespace, name) whose status handlers write.

    A lock lives while a handler holds or waits for it: an operator that sees many objects come and
    go over months keeps none for objects nobody is handling.
    """

    def __init__(self) -> None:
        self._locks: dict[tuple[str, str, str], _HeldLock] = {}

    @contextlib.asynccontextmanager
    async def of(self, kind: str, namespace: str, name: str) -> AsyncIterator[None]:
        key = (kind, namespace, name)
        held = self._locks.get(key)
        if held is None:
            held = self._locks[key] = _HeldLock()
        held.users += 1
        try:
            async with held.lock:
                yield
        finally:
            held.users -= 1
            if held.users == 0:
                del self._locks[key]

    def __len__(self) -> int:
        return len(self._locks)


def _is_docker_config(body: kopf.Body, **_: Any) -> bool:
    return body.get("type") in DOCKER_CONFIG_TYPES


def configure(settings: kopf.OperatorSettings) -> None:
    """Keep kopf's bookkeeping in annotations (our CRDs' status schema has no room for it)."""
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=STORAGE_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=STORAGE_PREFIX, key="last-handled-configuration"
    )
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330


def build_registry(config: OperatorConfig) -> kopf.OperatorRegistry:
    """A registry with every handler of the operator, bound to ``config``."""
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def _login(settings: kopf.OperatorSettings, logger: Any, **_: Any) -> kopf.ConnectionInfo:
        return login(config, settings, logger)

    @kopf.on.startup(registry=registry)
    async def _startup(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: Any, **_: Any) -> None:
        configure(settings)
        memo["client"] = KubeClient(
            login(config, settings, logger), relogin=lambda: login(config, settings, logger)
        )
        memo["locks"] = ObjectLocks()
        scope = f"namespace {config.namespace}" if config.namespace_restricted else "all namespaces"
        logger.info("dynamo operator watching %s", scope)

    @kopf.on.cleanup(registry=registry)
    async def _cleanup(memo: kopf.Memo, **_: Any) -> None:
        client = memo.get("client")
        if client is not None:
            await client.close()

    @kopf.on.resume(GROUP, VERSION, DGD_PLURAL, registry=registry)
    @kopf.on.create(GROUP, VERSION, DGD_PLURAL, registry=registry)
    @kopf.on.update(GROUP, VERSION, DGD_PLURAL, registry=registry)
    async def graph_changed(body: kopf.Body, memo: kopf.Memo, logger: Any, **_: Any) -> None:
        """Reconcile a graph whose spec changed (or that we have not seen since start-up)."""
        meta = body["metadata"]
        async with memo["locks"].of("graph", meta["namespace"], meta["name"]):
            status = await reconcile_graph(body, memo["client"], config, logger)
            await _write_status(memo["client"], meta["namespace"], meta["name"], status)

    async def _write_status(client: KubeClient, namespace: str, name: str, status: dict[str, Any]) -> None:
        """Write a graph's status (under its lock), replacing what is stored now."""
        graph = await client.get(graph_path(namespace, name))
        if graph is None or (graph.get("metadata") or {}).get("deletionTimestamp"):
            return
        patch = status_patch(dict(graph.get("status") or {}), status)
        await client.merge_patch(graph_path(namespace, name, "status"), {"status": patch})

    async def _reconcile(client: KubeClient, graph: dict[str, Any], memo: kopf.Memo, logger: Any) -> None:
        """Reconcile a graph read from the cluster and write its status, under its lock."""
        namespace, name = graph["metadata"]["namespace"], graph["metadata"]["name"]
        async with memo["locks"].of("graph", namespace, name):
            await _write_status(client, namespace, name, await reconcile_graph(graph, client, config, logger))

    @kopf.on.event("apps", "v1", "deployments", labels={LABEL_MANAGED_BY: MANAGED_BY}, registry=registry)
    @kopf.on.event(
        LWS_GROUP, "v1", "leaderworkersets", labels={LABEL_MANAGED_BY: MANAGED_BY}, registry=registry
    )
    async def child_event(
        type: str | None, body: kopf.Body, namespace: str | None, memo: kopf.Memo, logger: Any, **_: Any
    ) -> None:
        """A child workload changed: update the graph's status; recreate it if it was deleted."""
        graph_name = (body.get("metadata", {}).get("labels") or {}).get(LABEL_GRAPH)
        if not graph_name or not namespace:
            return
        client: KubeClient = memo["client"]
        if type == "DELETED":
            graph = await client.get(graph_path(namespace, graph_name))
            if graph is not None and not graph["metadata"].get("deletionTimestamp"):
                logger.info("a workload of graph %s was deleted; reconciling", graph_name)
                await _reconcile(client, graph, memo, logger)
                return
        async with memo["locks"].of("graph", namespace, graph_name):
            await refresh_status(client, namespace, graph_name, logger)

    @kopf.on.event("", "v1", "services", labels={LABEL_MANAGED_BY: MANAGED_BY}, registry=registry)
    async def child_service_event(
        type: str | None, body: kopf.Body, namespace: str | None, memo: kopf.Memo, logger: Any, **_: Any
    ) -> None:
        """A frontend or worker Service was deleted while its graph lives on: recreate it."""
        graph_name = (body.get("metadata", {}).get("labels") or {}).get(LABEL_GRAPH)
        if type != "DELETED" or not graph_name or not namespace:
            return
        client: KubeClient = memo["client"]
        graph = await client.get(graph_path(namespace, graph_name))
        if graph is not None and not graph["metadata"].get("deletionTimestamp"):
            logger.info("a Service of graph %s was deleted; reconciling", graph_name)
            await _reconcile(client, graph, memo, logger)

    @kopf.on.event("", "v1", "secrets", when=_is_docker_config, registry=registry)
    async def pull_secret_event(
        type: str | None, namespace: str | None, memo: kopf.Memo, logger: Any, **_: Any
    ) -> None:
        """A docker-config secret appeared or changed: graphs in its namespace may need it."""
        if type not in ("ADDED", "MODIFIED") or not namespace:
            return
        client: KubeClient = memo["client"]
        for graph in await client.list(resource_path(f"{GROUP}/{VERSION}", DGD_PLURAL, namespace)):
            if graph["metadata"].get("deletionTimestamp"):
                continue
            graph.setdefault("apiVersion", f"{GROUP}/{VERSION}")
            graph.setdefault("kind", "DynamoGraphDeployment")
            await _reconcile(client, graph, memo, logger)

    async def advance_request(
        client: KubeClient, namespace: str, name: str, memo: kopf.Memo, logger: Any
    ) -> None:
        """Read the request afresh, take its next step, write its status if it changed (under the
        request's lock: its own handler and its Job's and graph's events may overlap)."""
        path = resource_path(DGDR_API_VERSION, DGDR_PLURAL, namespace, name)
        async with memo["locks"].of("request", namespace, name):
            obj = await client.get(path)
            if obj is None or obj["metadata"].get("deletionTimestamp"):
                return
            obj.setdefault("apiVersion", DGDR_API_VERSION)
            previous = dict(obj.get("status") or {})
            status = await advance(obj, client, config, logger)
            if status != previous:
                await client.merge_patch(path + "/status", {"status": status_patch(previous, status)})

    # Requests are watched in the storage version: an API server serves those written as v1alpha1
    # there too (the two versions' schemas hold the same fields, so none is pruned on the way).
    @kopf.on.resume(GROUP, DGDR_VERSION, DGDR_PLURAL, registry=registry)
    @kopf.on.create(GROUP, DGDR_VERSION, DGDR_PLURAL, registry=registry)
    @kopf.on.update(GROUP, DGDR_VERSION, DGDR_PLURAL, registry=registry)
    async def request_changed(
        name: str | None, namespace: str | None, memo: kopf.Memo, logger: Any, **_: Any
    ) -> None:
        """A DynamoGraphDeploymentRequest was created or changed: profile it (again)."""
        if name and namespace:
            await advance_request(memo["client"], namespace, name, memo, logger)

    @kopf.on.event("batch", "v1", "jobs", labels={LABEL_REQUEST: kopf.PRESENT}, registry=registry)
    @kopf.on.event(GROUP, VERSION, DGD_PLURAL, labels={LABEL_REQUEST: kopf.PRESENT}, registry=registry)
    async def request_child_event(
        body: kopf.Body, namespace: str | None, memo: kopf.Memo, logger: Any, **_: Any
    ) -> None:
        """A request's profiling Job or generated graph changed: take the request's next step."""
        request = (body.get("metadata", {}).get("labels") or {}).get(LABEL_REQUEST)
        if request and namespace:
            await advance_request(memo["client"], namespace, request, memo, logger)

    return registry
