"""The operator's real kopf handlers against an emulated Kubernetes API (kmock's
KubernetesEmulator; no real API server can run here). The emulator stores objects and streams
watch events but runs no controllers: there are no pods, no garbage collector and no Deployment
status unless a test writes it, as the Deployment controller would."""

from __future__ import annotations

import asyncio
import base64
import copy
import json
from pathlib import Path
from typing import Any

import kmock
import kmock as kmock_lib
import kopf
import pytest
import yaml
from k8s_emulator import VersionedEmulator, declare_resources, operator_running, wait_for

from dynamo.operator.config import OperatorConfig
from dynamo.operator.kube import KubeClient, resource_path
from dynamo.operator.reconcile import reconcile_graph, refresh_status

ROOT = Path(__file__).resolve().parents[2]
DGD = "nvidia.com/v1alpha1"
pytestmark = [pytest.mark.timeout(60), pytest.mark.kmock(cls=VersionedEmulator)]


def graph_body(
    name: str = "vllm-agg", namespace: str = "ns1", example: str = "vllm/agg.yaml"
) -> dict[str, Any]:
    body = yaml.safe_load((ROOT / "deploy" / "examples" / example).read_text())
    body["metadata"].update(
        name=name, namespace=namespace, uid=f"uid-{namespace}-{name}", resourceVersion="1", generation=1
    )
    return body


def docker_secret(name: str, namespace: str, registry: str) -> dict[str, Any]:
    config = {"auths": {registry: {"auth": base64.b64encode(b"u:p").decode()}}}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace, "resourceVersion": "1"},
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": base64.b64encode(json.dumps(config).encode()).decode()},
    }


def dgd_path(namespace: str, name: str | None = None) -> str:
    return resource_path(DGD, "dynamographdeployments", namespace, name)


def deploy_path(namespace: str, name: str | None = None) -> str:
    return resource_path("apps/v1", "deployments", namespace, name)


def env_of(deployment: dict[str, Any]) -> dict[str, Any]:
    main = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in main["env"]}


@pytest.fixture()
async def api(kmock: kmock.KubernetesEmulator):
    declare_resources(kmock)
    client = KubeClient(kopf.ConnectionInfo(server=str(kmock.url)))
    yield client
    await client.close()


@pytest.fixture()
def config(kmock: kmock.KubernetesEmulator) -> OperatorConfig:
    return OperatorConfig(
        api_server=str(kmock.url),
        etcd_endpoints="http://etcd.dynamo:2379",
        nats_server="nats://nats.dynamo:4222",
    )


async def get_deployments(api: KubeClient, namespace: str, count: int) -> dict[str, dict[str, Any]]:
    async def check() -> dict[str, dict[str, Any]] | None:
        items = await api.list(deploy_path(namespace))
        return {d["metadata"]["name"]: d for d in items} if len(items) == count else None

    return await wait_for(check, what=f"{count} deployments in {namespace}")


async def test_the_emulator_versions_objects_as_an_api_server_does(api) -> None:
    from dynamo.operator.kube import ApiError

    created = await api.create(dgd_path("ns1"), graph_body())
    v1, path = created["metadata"]["resourceVersion"], dgd_path("ns1", "vllm-agg")
    assert created["metadata"]["generation"] == 1
    status = await api.merge_patch(path + "/status", {"status": {"state": "pending"}})
    v2 = status["metadata"]["resourceVersion"]
    assert v2 != v1 and status["metadata"]["generation"] == 1  # a status write: same generation
    spec = await api.merge_patch(path, {"spec": {"services": {"Frontend": {"replicas": 2}}}})
    assert spec["metadata"]["resourceVersion"] not in (v1, v2) and spec["metadata"]["generation"] == 2
    with pytest.raises(ApiError) as stale:
        await api.merge_patch(path + "/status", {"metadata": {"resourceVersion": v2}, "status": {}})
    assert stale.value.status == 409
    assert (await api.get(path))["metadata"]["resourceVersion"] == spec["metadata"]["resourceVersion"]


async def test_emulator_create_makes_deployments_service_env_and_owner_refs(api, config) -> None:
    async with operator_running(config):
        await api.create(dgd_path("ns1"), graph_body())
        deps = await get_deployments(api, "ns1", 2)
        svc = await wait_for(lambda: api.get(resource_path("v1", "services", "ns1", "vllm-agg-frontend")))
    assert set(deps) == {"vllm-agg-frontend", "vllm-agg-vllmdecodeworker"}
    assert svc["spec"]["ports"][0]["port"] == 8000
    worker = deps["vllm-agg-vllmdecodeworker"]
    env = env_of(worker)
    assert env["DYN_NAMESPACE"] == "vllm-agg"
    assert env["ETCD_ENDPOINTS"] == "http://etcd.dynamo:2379"
    assert env["NATS_SERVER"] == "nats://nats.dynamo:4222"
    assert env["DYN_SYSTEM_PORT"] == "9090"
    assert env["POD_IP"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    main = worker["spec"]["template"]["spec"]["containers"][0]
    assert main["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert main["resources"]["requests"]["nvidia.com/gpu"] == "1"
    assert main["envFrom"] == [{"secretRef": {"name": "hf-token-secret"}}]
    for obj in (*deps.values(), svc):
        (ref,) = obj["metadata"]["ownerReferences"]
        assert ref["kind"] == "DynamoGraphDeployment" and ref["uid"] == "uid-ns1-vllm-agg"
        assert ref["controller"] is True and ref["blockOwnerDeletion"] is True


def svc_path(namespace: str, name: str | None = None) -> str:
    return resource_path("v1", "services", namespace, name)


async def test_emulator_worker_services_expose_the_system_port_and_frontend_is_scoped(api, config) -> None:
    """The TRT-LLM guide's `http://<worker-service>:9090/health`: each worker component gets a
    Service on its system port; the frontend discovers only the graph's Dynamo namespaces."""
    body = graph_body("trtllm-disagg", example="trtllm/disagg.yaml")
    services = body["spec"]["services"]
    workers = sorted(n for n, s in services.items() if s["componentType"] == "worker")
    assert len(workers) == 2  # decode and prefill
    services[workers[0]]["dynamoNamespace"] = "dynamo-dev"  # a graph may split its namespaces
    async with operator_running(config):
        await api.create(dgd_path("ns1"), body)
        await get_deployments(api, "ns1", 3)

        async def all_services() -> dict[str, dict[str, Any]] | None:
            items = await api.list(svc_path("ns1"))
            return {s["metadata"]["name"]: s for s in items} if len(items) == 3 else None

        svcs = await wait_for(all_services, what="frontend and worker Services")
        deps = {d["metadata"]["name"]: d for d in await api.list(deploy_path("ns1"))}
        for worker in workers:
            name = f"trtllm-disagg-{worker.lower()}"
            svc = svcs[name]
            assert svc["spec"]["ports"] == [
                {"name": "system", "port": 9090, "targetPort": "system", "protocol": "TCP"}
            ]
            assert svc["spec"]["selector"] == deps[name]["spec"]["selector"]["matchLabels"]
            (ref,) = svc["metadata"]["ownerReferences"]
            assert ref["uid"] == "uid-ns1-trtllm-disagg" and ref["controller"] is True
            assert "DYN_DISCOVERY_NAMESPACES" not in env_of(deps[name])
        assert svcs["trtllm-disagg-frontend"]["spec"]["ports"][0]["port"] == 8000
        front = env_of(deps["trtllm-disagg-frontend"])
        assert front["DYN_DISCOVERY_NAMESPACES"] == "dynamo-dev,trtllm-disagg"

        # A worker removed from the graph takes its Service with it.
        await api.merge_patch(dgd_path("ns1", "trtllm-disagg"), {"spec": {"services": {workers[0]: None}}})

        async def pruned() -> list[str] | None:
            names = sorted(s["metadata"]["name"] for s in await api.list(svc_path("ns1")))
            return names if len(names) == 2 else None

        assert await wait_for(pruned, what="worker Service pruned") == [
            "trtllm-disagg-frontend",
            f"trtllm-disagg-{workers[1].lower()}",
        ]

        # ... and the frontend now discovers only the namespaces the graph still uses.
        async def rescoped() -> bool:
            d = await api.get(deploy_path("ns1", "trtllm-disagg-frontend"))
            return env_of(d)["DYN_DISCOVERY_NAMESPACES"] == "trtllm-disagg"

        await wait_for(rescoped, what="frontend rescoped")


async def test_emulator_scale_update_args_remove_service_and_delete(api, config) -> None:
    async with operator_running(config):
        await api.create(dgd_path("ns1"), graph_body())
        deps = await get_deployments(api, "ns1", 2)
        before = deps["vllm-agg-vllmdecodeworker"]["spec"]["template"]

        # Scaling replicas in the graph scales the Deployment.
        await api.merge_patch(
            dgd_path("ns1", "vllm-agg"), {"spec": {"services": {"VllmDecodeWorker": {"replicas": 3}}}}
        )

        async def scaled() -> bool:
            d = await api.get(deploy_path("ns1", "vllm-agg-vllmdecodeworker"))
            return d is not None and d["spec"]["replicas"] == 3

        await wait_for(scaled, what="replicas 3")

        # Editing args changes the pod template: a rolling update.
        new_args = [
            "exec python3 -m dynamo.vllm --model Qwen/Qwen3-0.6B --enforce-eager > >(tee /tmp/worker.log) 2>&1"
        ]
        await api.merge_patch(
            dgd_path("ns1", "vllm-agg"),
            {
                "spec": {
                    "services": {"VllmDecodeWorker": {"extraPodSpec": {"mainContainer": {"args": new_args}}}}
                }
            },
        )

        async def rolled() -> dict[str, Any] | None:
            d = await api.get(deploy_path("ns1", "vllm-agg-vllmdecodeworker"))
            return d if d and d["spec"]["template"]["spec"]["containers"][0]["args"] == new_args else None

        after = (await wait_for(rolled, what="new args"))["spec"]["template"]
        assert (
            after != before
            and after["spec"]["containers"][0]["image"] == before["spec"]["containers"][0]["image"]
        )

        # A service removed from the graph is deleted.
        await api.merge_patch(dgd_path("ns1", "vllm-agg"), {"spec": {"services": {"VllmDecodeWorker": None}}})
        await get_deployments(api, "ns1", 1)

        # Deleting the graph needs no operator action (no finalizer): the garbage collector removes
        # the children through their owner references (asserted in the create test).
        graph = await api.get(dgd_path("ns1", "vllm-agg"))
        assert not graph["metadata"].get("finalizers")
        await api.delete(dgd_path("ns1", "vllm-agg"))
        assert await api.get(dgd_path("ns1", "vllm-agg")) is None


async def test_emulator_status_rolls_up_from_children(api, config) -> None:
    async with operator_running(config):
        await api.create(dgd_path("ns1"), graph_body())
        await get_deployments(api, "ns1", 2)

        async def status() -> dict[str, Any]:
            return (await api.get(dgd_path("ns1", "vllm-agg"))).get("status") or {}

        pending = await wait_for(lambda: _state(status, "pending"), what="pending")
        ready = next(c for c in pending["conditions"] if c["type"] == "Ready")
        assert ready["status"] == "False"
        assert "Frontend: 0/1 ready" in ready["message"] and "VllmDecodeWorker: 0/1 ready" in ready["message"]

        # The Deployment controller would report its pods; here the test does.
        counts = {"replicas": 1, "readyReplicas": 1, "updatedReplicas": 1, "availableReplicas": 1}
        await api.merge_patch(deploy_path("ns1", "vllm-agg-frontend") + "/status", {"status": counts})

        async def half() -> dict[str, Any] | None:
            st = await status()
            return st if st.get("services", {}).get("Frontend", {}).get("readyReplicas") == 1 else None

        st = await wait_for(half, what="frontend ready in status")
        assert st["state"] == "pending"
        assert "VllmDecodeWorker: 0/1 ready" in st["conditions"][0]["message"]

        await api.merge_patch(deploy_path("ns1", "vllm-agg-vllmdecodeworker") + "/status", {"status": counts})
        done = await wait_for(lambda: _state(status, "successful"), what="successful")
        assert done["conditions"][0]["status"] == "True"
        assert done["services"]["VllmDecodeWorker"]["readyReplicas"] == 1

        # A Deployment that gives up turns the graph failed, with the controller's words.
        failed = {
            "conditions": [
                {
                    "type": "Progressing",
                    "status": "False",
                    "reason": "ProgressDeadlineExceeded",
                    "message": 'ReplicaSet "x" has timed out progressing.',
                }
            ]
        }
        await api.merge_patch(deploy_path("ns1", "vllm-agg-vllmdecodeworker") + "/status", {"status": failed})
        bad = await wait_for(lambda: _state(status, "failed"), what="failed")
        assert "VllmDecodeWorker: ReplicaSet" in bad["conditions"][0]["message"]


async def _state(status, want: str) -> dict[str, Any] | None:
    st = await status()
    return st if st.get("state") == want else None


async def test_emulator_deleted_child_is_recreated(api, config) -> None:
    async with operator_running(config):
        await api.create(dgd_path("ns1"), graph_body())
        await get_deployments(api, "ns1", 2)
        await api.delete(deploy_path("ns1", "vllm-agg-frontend"))
        deps = await get_deployments(api, "ns1", 2)
    assert "vllm-agg-frontend" in deps


async def test_emulator_deleted_worker_service_is_recreated(api, config) -> None:
    async with operator_running(config):
        await api.create(dgd_path("ns1"), graph_body())
        worker_svc = svc_path("ns1", "vllm-agg-vllmdecodeworker")
        await wait_for(lambda: api.get(worker_svc), what="worker Service")
        await asyncio.sleep(3)  # let the creation's reconciles and status writes settle
        # Marked, so the recreated object is told apart from the deleted one (kmock sets no uid).
        await api.merge_patch(worker_svc, {"metadata": {"labels": {"test-mark": "deleted-one"}}})
        await api.delete(worker_svc)

        async def recreated() -> dict[str, Any] | None:
            svc = await api.get(worker_svc)
            return svc if svc and "test-mark" not in svc["metadata"].get("labels", {}) else None

        svc = await wait_for(recreated, timeout=10, what="worker Service recreated")
    assert svc["spec"]["ports"][0]["port"] == 9090


async def test_emulator_image_pull_secret_discovery_and_opt_out(api, config) -> None:
    nvcr = "nvcr.io/nvidia/ai-dynamo/vllm-runtime:0.1.0"
    body = graph_body()
    services = body["spec"]["services"]
    services["Frontend"]["extraPodSpec"]["mainContainer"]["image"] = nvcr
    services["VllmDecodeWorker"]["extraPodSpec"]["mainContainer"]["image"] = nvcr
    services["VllmDecodeWorker"]["annotations"] = {"nvidia.com/disable-image-pull-secret-discovery": "true"}
    services["VllmDecodeWorker"]["extraPodSpec"]["imagePullSecrets"] = [{"name": "my-own-secret"}]
    await api.create(resource_path("v1", "secrets", "ns1"), docker_secret("nvcr-creds", "ns1", "nvcr.io"))
    await api.create(
        resource_path("v1", "secrets", "ns1"),
        docker_secret("hub-creds", "ns1", "https://index.docker.io/v1/"),
    )
    await api.create(resource_path("v1", "secrets", "ns2"), docker_secret("other-ns", "ns2", "nvcr.io"))
    async with operator_running(config):
        await api.create(dgd_path("ns1"), body)
        deps = await get_deployments(api, "ns1", 2)
        front = deps["vllm-agg-frontend"]["spec"]["template"]["spec"]
        work = deps["vllm-agg-vllmdecodeworker"]["spec"]["template"]["spec"]
        assert front["imagePullSecrets"] == [{"name": "nvcr-creds"}]  # registry matches; hub and ns2 do not
        assert work["imagePullSecrets"] == [{"name": "my-own-secret"}]  # opted out: kept as written

        # A secret for the registry that appears later reaches the running graph.
        await api.create(resource_path("v1", "secrets", "ns1"), docker_secret("nvcr-late", "ns1", "nvcr.io"))

        async def both() -> bool:
            d = await api.get(deploy_path("ns1", "vllm-agg-frontend"))
            names = [s["name"] for s in d["spec"]["template"]["spec"].get("imagePullSecrets") or []]
            return names == ["nvcr-creds", "nvcr-late"]

        await wait_for(both, what="late secret injected")
        work = (await api.get(deploy_path("ns1", "vllm-agg-vllmdecodeworker")))["spec"]["template"]["spec"]
        assert work["imagePullSecrets"] == [{"name": "my-own-secret"}]


async def test_emulator_namespace_restriction_ignores_other_namespaces(api, kmock) -> None:
    config = OperatorConfig(api_server=str(kmock.url), namespace_restricted=True, namespace="team-a")
    async with operator_running(config):
        await api.create(dgd_path("team-b"), graph_body(namespace="team-b"))
        await api.create(dgd_path("team-a"), graph_body(namespace="team-a"))
        await get_deployments(api, "team-a", 2)
        assert await api.list(deploy_path("team-b")) == []
        other = await api.get(dgd_path("team-b", "vllm-agg"))
        assert "status" not in other and not other["metadata"].get("annotations")


async def test_emulator_invalid_graph_gets_a_condition_in_words(api, config) -> None:
    body = graph_body()
    del body["spec"]["services"]["Frontend"]["extraPodSpec"]["mainContainer"]["image"]
    async with operator_running(config):
        await api.create(dgd_path("ns1"), body)

        async def failed() -> dict[str, Any] | None:
            st = (await api.get(dgd_path("ns1", "vllm-agg"))).get("status") or {}
            return st if st.get("state") == "failed" else None

        st = await wait_for(failed, what="failed status")
        assert await api.list(deploy_path("ns1")) == []
    assert st["conditions"][0]["reason"] == "InvalidSpec"
    assert "service Frontend has no extraPodSpec.mainContainer.image" in st["conditions"][0]["message"]


async def test_emulator_reconcile_as_a_plain_function_is_idempotent(api, config) -> None:
    """reconcile_graph called directly (no kopf loop): a second pass changes nothing."""
    import logging

    body = graph_body()
    first = await reconcile_graph(body, api, config, logging.getLogger("test"))
    deps = {d["metadata"]["name"]: copy.deepcopy(d) for d in await api.list(deploy_path("ns1"))}
    second = await reconcile_graph(body, api, config, logging.getLogger("test"))
    again = {d["metadata"]["name"]: d for d in await api.list(deploy_path("ns1"))}
    assert first["state"] == second["state"] == "pending"
    assert deps == again


async def test_emulator_multinode_without_leaderworkerset_says_what_to_install(api, config, kmock) -> None:
    """reconcile_graph as a plain function. A real API server answers 404 for a resource whose CRD is
    not installed; kmock would store anything posted, so the test makes it answer as the server would."""
    import logging

    (
        kmock[kmock_lib.resource("leaderworkerset.x-k8s.io/v1/leaderworkersets")]
        << kmock_lib.KubernetesResourceNotFoundError
    )
    body = graph_body()
    body["spec"]["services"]["VllmDecodeWorker"]["multinode"] = {"nodeCount": 2}
    await api.create(dgd_path("ns1"), body)
    st = await reconcile_graph(body, api, config, logging.getLogger("test"))
    assert st["state"] == "failed" and st["conditions"][0]["reason"] == "ApplyFailed"
    message = st["conditions"][0]["message"]
    assert "service VllmDecodeWorker uses multinode, which needs LeaderWorkerSet" in message

    # A child's event must not paper over that verdict with a plain "pending".
    await api.merge_patch(dgd_path("ns1", "vllm-agg") + "/status", {"status": st})
    assert await refresh_status(api, "ns1", "vllm-agg", logging.getLogger("test")) is None
    after = (await api.get(dgd_path("ns1", "vllm-agg")))["status"]
    assert after["conditions"][0]["message"] == message


async def test_emulator_status_refresh_that_loses_a_write_race_reads_again(api, config) -> None:
    """A status write conditional on an older resourceVersion is refused (409, as the emulator
    does too); here the client answers the first such write with that 409, as if another writer
    had won the race. The refresh reads the graph again and writes the status, instead of
    dropping the child's event that may be the last one."""
    import logging

    from dynamo.operator.kube import ApiError

    body = graph_body()
    await api.create(dgd_path("ns1"), body)
    await reconcile_graph(body, api, config, logging.getLogger("test"))
    counts = {"replicas": 1, "readyReplicas": 1, "updatedReplicas": 1, "availableReplicas": 1}
    for name in ("vllm-agg-frontend", "vllm-agg-vllmdecodeworker"):
        await api.merge_patch(deploy_path("ns1", name) + "/status", {"status": counts})
    real_patch, refused = api.merge_patch, []

    async def lose_the_first_race(path: str, patch: dict[str, Any]) -> Any:
        if path.endswith("/status") and "resourceVersion" in patch.get("metadata", {}) and not refused:
            refused.append(path)
            raise ApiError(409, "PATCH", path, "the object has been modified")
        return await real_patch(path, patch)

    api.merge_patch = lose_the_first_race  # type: ignore[method-assign]
    status = await refresh_status(api, "ns1", "vllm-agg", logging.getLogger("test"))
    assert refused and status is not None and status["state"] == "successful"
    stored = (await api.get(dgd_path("ns1", "vllm-agg")))["status"]
    assert stored["state"] == "successful"
