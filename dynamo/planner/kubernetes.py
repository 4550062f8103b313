"""The Kubernetes scaling connector (``environment: kubernetes``): a decision becomes the
``replicas`` of services of the planner's own DynamoGraphDeployment; the operator reconciles them
into the services' Deployments (new pods; removed pods get SIGTERM, the workers' drain path).

Contract: the planner runs as a service of a DGD, so the operator gives its pod
``DYN_PARENT_DGD_K8S_NAME`` (the DGD) and ``POD_NAMESPACE``, and a service account that may get and
patch that DGD (the platform chart's planner role). Each ``apply`` reads the DGD, maps the
decision's pools to its services exactly as the local runner does (``dynamo.deploy.plan.scaled_pools``:
among the worker services in the planner's Dynamo namespace, ``subComponentType: prefill`` is the
prefill pool, any other the decode pool), and merge-patches only the replicas that differ, guarded
by the ``resourceVersion`` it read (a conflict is re-read and retried once). Errors say what is
missing: the DGD, a service for a pool, or the RBAC to patch it.

Journey: planner decides -> **connector** -> DGD spec -> operator -> Deployments -> pods.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from dynamo.deploy.plan import scaled_pools
from dynamo.deploy.spec import API_VERSION, DGD_PLURAL, SpecError, parse_graph
from dynamo.planner.config import ConfigError
from dynamo.planner.connector import ScalingConnector, ScalingDecision
from dynamo.planner.kube_api import KubeApi, KubeApiError, pod_namespace, resource_path

log = logging.getLogger(__name__)

PARENT_DGD_ENV = "DYN_PARENT_DGD_K8S_NAME"


class ConnectorError(RuntimeError):
    """A decision that could not be applied; the message says why, in words."""


class KubernetesConnector(ScalingConnector):
    """Patches ``spec.services.<name>.replicas`` of the DGD ``graph`` in ``namespace``."""

    def __init__(self, api: KubeApi, namespace: str, graph: str) -> None:
        self.api = api
        self.namespace = namespace
        self.graph = graph
        self.path = resource_path(API_VERSION, DGD_PLURAL, namespace, graph)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> KubernetesConnector:
        """The connector of a planner pod (``ConfigError`` naming what is missing)."""
        env = os.environ if environ is None else environ
        graph = env.get(PARENT_DGD_ENV)
        if not graph:
            raise ConfigError(
                f"environment 'kubernetes' needs {PARENT_DGD_ENV} (the DynamoGraphDeployment to scale; the "
                "operator sets it on a planner service's pods): it is not set"
            )
        namespace = pod_namespace(env)
        if not namespace:
            raise ConfigError("environment 'kubernetes' needs POD_NAMESPACE (the DGD's Kubernetes namespace)")
        try:
            api = KubeApi.from_environment(env)
        except ValueError as exc:
            raise ConfigError(f"environment 'kubernetes': {exc}") from None
        return cls(api, namespace, graph)

    async def apply(self, decision: ScalingDecision) -> None:
        for attempt in (1, 2):
            body = await self._read()
            changes = self._changes(body, decision)
            if not changes:
                return
            patch: dict[str, Any] = {
                "metadata": {"resourceVersion": body["metadata"].get("resourceVersion")},
                "spec": {"services": {name: {"replicas": new} for name, (_, new) in changes.items()}},
            }
            if not patch["metadata"]["resourceVersion"]:
                del patch["metadata"]
            try:
                await self.api.merge_patch(self.path, patch)
            except KubeApiError as exc:
                if exc.status == 409 and attempt == 1:
                    log.info("DGD %s/%s changed while patching; reading it again", self.namespace, self.graph)
                    continue
                raise ConnectorError(self._explain(exc, "patch")) from None
            for name, (old, new) in sorted(changes.items()):
                log.info(
                    "DGD %s/%s: %s replicas %d -> %d (decision %d)",
                    self.namespace,
                    self.graph,
                    name,
                    old,
                    new,
                    decision.generation,
                )
            return

    async def _read(self) -> dict[str, Any]:
        try:
            body = await self.api.get(self.path)
        except KubeApiError as exc:
            raise ConnectorError(self._explain(exc, "get")) from None
        if body is None:
            raise ConnectorError(f"DynamoGraphDeployment {self.namespace}/{self.graph} does not exist")
        return body

    def _changes(self, body: dict[str, Any], decision: ScalingDecision) -> dict[str, tuple[int, int]]:
        """Service -> (replicas now, replicas decided), for the services that differ."""
        try:
            graph = parse_graph(body)
        except SpecError as exc:
            raise ConnectorError(f"DGD {self.namespace}/{self.graph} cannot be read: {exc}") from None
        mine = [p for p in scaled_pools(graph, self.namespace, []) if p.namespace == decision.namespace]
        if not mine:
            raise ConnectorError(
                f"DGD {self.namespace}/{self.graph} has no planner service in Dynamo namespace "
                f"{decision.namespace!r}, so no worker service is this planner's to scale"
            )
        services = mine[0].services
        changes = {}
        for pool, target in sorted(decision.targets.items()):
            name = services.get(pool)
            if name is None:
                raise ConnectorError(
                    f"DGD {self.namespace}/{self.graph} has no {pool} worker service in Dynamo namespace "
                    f"{decision.namespace!r} (pools there: {', '.join(sorted(services)) or 'none'})"
                )
            current = graph.services[name].replicas
            if current != target:
                changes[name] = (current, target)
        return changes

    def _explain(self, exc: KubeApiError, verb: str) -> str:
        if exc.status in (401, 403):
            return (
                f"the planner may not {verb} DynamoGraphDeployment {self.namespace}/{self.graph} "
                f"({exc.message}); its pod needs the service account the operator gives planner services, "
                "bound to the dynamo-platform chart's planner role"
            )
        return str(exc)

    async def close(self) -> None:
        await self.api.close()
