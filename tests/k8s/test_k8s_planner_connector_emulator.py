"""The planner's Kubernetes connector against an emulated Kubernetes API (kmock's
KubernetesEmulator: no real API server can run here), with the real operator reconciling: a
decision patches the replicas of the planner's own DGD's services (pool -> service as the local
runner maps them), the operator scales their Deployments, and the planner's pod has what the
connector needs (``DYN_PARENT_DGD_K8S_NAME``, a ServiceAccount bound to the chart's planner role).
The emulator runs no pods, so the connector is driven in-process with the environment the
operator gives a planner pod."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import kmock
import kopf
import pytest
import yaml
from k8s_emulator import VersionedEmulator, declare_resources, operator_running, wait_for

from dynamo.operator.config import OperatorConfig
from dynamo.operator.kube import KubeClient, resource_path
from dynamo.planner.config import ConfigError, PlannerConfig
from dynamo.planner.connector import ScalingDecision, create_connector
from dynamo.planner.kubernetes import ConnectorError, KubernetesConnector
from dynamo.runtime.store import KeyValueStore

ROOT = Path(__file__).resolve().parents[2]
DGD = "nvidia.com/v1alpha1"
PLANNER_ROLE = ("ClusterRole", "dynamo-platform-operator-planner")
EXTRA = {
    "v1/serviceaccounts": "ServiceAccount",
    "rbac.authorization.k8s.io/v1/rolebindings": "RoleBinding",
}
NO_STORE = cast(KeyValueStore, None)  # the Kubernetes connector keeps nothing in the graph's store
pytestmark = [pytest.mark.timeout(60), pytest.mark.kmock(cls=VersionedEmulator)]


def declare(emulator: kmock.KubernetesEmulator) -> None:
    declare_resources(emulator)
    for key, kind in EXTRA.items():
        emulator.resources[key] = kmock.ResourceInfo(
            kind=kind, namespaced=True, verbs={"list", "watch", "get", "create", "patch", "update", "delete"}
        )


@pytest.fixture()
async def api(kmock: kmock.KubernetesEmulator):
    declare(kmock)
    client = KubeClient(kopf.ConnectionInfo(server=str(kmock.url)))
    yield client
    await client.close()


def planner_graph(backend: str = "vllm", name: str = "llm", namespace: str = "ns1") -> dict[str, Any]:
    body = yaml.safe_load((ROOT / "deploy" / "examples" / backend / "disagg_planner.yaml").read_text())
    body["metadata"].update(
        name=name, namespace=namespace, uid=f"uid-{name}", resourceVersion="1", generation=1
    )
    return body


def connector_env(
    kmock: kmock.KubernetesEmulator, name: str = "llm", namespace: str = "ns1"
) -> dict[str, str]:
    """What the operator gives a planner pod (POD_NAMESPACE from the downward API), plus the
    emulator's URL in place of the in-cluster API server."""
    return {
        "DYN_KUBE_API_SERVER": str(kmock.url),
        "DYN_PARENT_DGD_K8S_NAME": name,
        "POD_NAMESPACE": namespace,
    }


def dgd_path(name: str = "llm", namespace: str = "ns1") -> str:
    return resource_path(DGD, "dynamographdeployments", namespace, name)


async def replicas(api: KubeClient, name: str = "llm") -> dict[str, int]:
    body = await api.get(dgd_path(name))
    assert body is not None
    return {n: s.get("replicas", 1) for n, s in body["spec"]["services"].items()}


async def test_emulator_connector_scales_the_dgd_and_the_operator_follows(api, kmock) -> None:
    config = OperatorConfig(api_server=str(kmock.url), planner_role=PLANNER_ROLE)
    body = planner_graph()
    dynamo_ns = body["spec"]["services"]["Planner"]["dynamoNamespace"]
    async with operator_running(config):
        await api.create(resource_path(DGD, "dynamographdeployments", "ns1"), body)

        async def deployments() -> dict[str, dict[str, Any]] | None:
            items = await api.list(resource_path("apps/v1", "deployments", "ns1"))
            return {d["metadata"]["name"]: d for d in items} if len(items) == 4 else None

        deps = await wait_for(deployments, what="4 deployments")
        # The planner's pod: the graph to scale, its namespace, and an account bound to the role.
        pod = deps["llm-planner"]["spec"]["template"]["spec"]
        env = {e["name"]: e.get("value", e.get("valueFrom")) for e in pod["containers"][0]["env"]}
        assert env["DYN_PARENT_DGD_K8S_NAME"] == "llm"
        assert env["POD_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
        assert pod["serviceAccountName"] == "llm-planner"
        account = await wait_for(
            lambda: api.get(resource_path("v1", "serviceaccounts", "ns1", "llm-planner"))
        )
        binding = await wait_for(
            lambda: api.get(
                resource_path("rbac.authorization.k8s.io/v1", "rolebindings", "ns1", "llm-planner")
            )
        )
        assert account["metadata"]["ownerReferences"][0]["uid"] == "uid-llm"
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": PLANNER_ROLE[1],
        }
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "llm-planner", "namespace": "ns1"}]

        planner = PlannerConfig(environment="kubernetes", namespace=dynamo_ns)
        connector = create_connector(planner, NO_STORE, connector_env(kmock))
        assert isinstance(connector, KubernetesConnector)
        try:
            await connector.apply(
                ScalingDecision(namespace=dynamo_ns, generation=1, targets={"prefill": 2, "decode": 3})
            )
            assert await replicas(api) == {
                "Frontend": 1,
                "Planner": 1,
                "VllmDecodeWorker": 3,
                "VllmPrefillWorker": 2,
            }

            async def scaled(decode: int, prefill: int) -> bool:
                d = await api.get(resource_path("apps/v1", "deployments", "ns1", "llm-vllmdecodeworker"))
                p = await api.get(resource_path("apps/v1", "deployments", "ns1", "llm-vllmprefillworker"))
                return d["spec"]["replicas"] == decode and p["spec"]["replicas"] == prefill

            await wait_for(lambda: scaled(3, 2), what="the operator scaling the Deployments up")

            # An unchanged decision patches nothing; a scale-down goes through the same path.
            version = (await api.get(dgd_path()))["metadata"]["resourceVersion"]
            await connector.apply(
                ScalingDecision(namespace=dynamo_ns, generation=2, targets={"prefill": 2, "decode": 3})
            )
            assert (await api.get(dgd_path()))["metadata"]["resourceVersion"] == version
            await connector.apply(
                ScalingDecision(namespace=dynamo_ns, generation=3, targets={"prefill": 1, "decode": 1})
            )
            await wait_for(lambda: scaled(1, 1), what="the operator scaling the Deployments down")
        finally:
            await connector.close()


async def test_emulator_connector_errors_say_what_is_missing(api, kmock) -> None:
    await api.create(resource_path(DGD, "dynamographdeployments", "ns1"), planner_graph())
    ns = planner_graph()["spec"]["services"]["Planner"]["dynamoNamespace"]

    missing = KubernetesConnector.from_environment(connector_env(kmock, name="nope"))
    with pytest.raises(ConnectorError, match="DynamoGraphDeployment ns1/nope does not exist"):
        await missing.apply(ScalingDecision(namespace=ns, generation=1, targets={"decode": 2}))
    await missing.close()

    connector = KubernetesConnector.from_environment(connector_env(kmock))
    try:
        with pytest.raises(ConnectorError, match="no planner service in Dynamo namespace 'other'"):
            await connector.apply(ScalingDecision(namespace="other", generation=1, targets={"decode": 2}))
        # Without the chart's planner role the API server refuses the patch: say what is needed.
        kmock[kmock.method.PATCH, kmock.resource("nvidia.com/v1alpha1/dynamographdeployments")] << 403
        with pytest.raises(
            ConnectorError, match=r"may not patch DynamoGraphDeployment ns1/llm.*planner role"
        ):
            await connector.apply(ScalingDecision(namespace=ns, generation=1, targets={"decode": 2}))
    finally:
        await connector.close()


def test_kubernetes_environment_needs_the_operators_variables() -> None:
    config = PlannerConfig(environment="kubernetes", namespace="x")
    with pytest.raises(ConfigError, match="DYN_PARENT_DGD_K8S_NAME"):
        create_connector(config, NO_STORE, {})
    with pytest.raises(ConfigError, match="not in a Kubernetes pod"):
        create_connector(config, NO_STORE, {"DYN_PARENT_DGD_K8S_NAME": "g", "POD_NAMESPACE": "ns1"})
