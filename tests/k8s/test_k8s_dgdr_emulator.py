"""DynamoGraphDeploymentRequests end to end against an emulated Kubernetes API (kmock's
KubernetesEmulator; no real API server can run here), with the real operator.

The emulator runs no pods and no Jobs, so the test does what the kubelet and the Job controller
would: it runs the profiling Job's container command on this machine (``python3 -m dynamo.profiler``
with the Job's args and env, its ``/tmp`` a private directory, the API server the emulator), which
profiles the mocker for real and writes its results ConfigMap into the emulator, then marks the
Job complete. The operator then writes the generated DGD into the request's status and, with
``autoApply``, creates it; the test marks its Deployments ready (as the Deployment controller
would) and the request ends ``Deployed``."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

import kmock
import kopf
import pytest
import yaml
from k8s_emulator import VersionedEmulator, declare_resources, operator_running, wait_for
from k8s_schemas import custom_errors

from dynamo.operator.config import OperatorConfig
from dynamo.operator.dgdr import RequestStep, advance
from dynamo.operator.kube import KubeClient, resource_path

ROOT = Path(__file__).resolve().parents[2]
V1BETA1 = "nvidia.com/v1beta1"
DGD = "nvidia.com/v1alpha1"
VERBS = {"list", "watch", "get", "create", "patch", "update", "delete"}
EXTRA = {
    f"{V1BETA1}/dynamographdeploymentrequests": ("DynamoGraphDeploymentRequest", {"status"}),
    "batch/v1/jobs": ("Job", {"status"}),
    "v1/configmaps": ("ConfigMap", set()),
    "v1/serviceaccounts": ("ServiceAccount", set()),
    "rbac.authorization.k8s.io/v1/rolebindings": ("RoleBinding", set()),
}
PLANNER_ROLE = ("ClusterRole", "dynamo-platform-operator-planner")
PROFILER_ROLE = ("ClusterRole", "dynamo-platform-operator-profiler")
pytestmark = [pytest.mark.timeout(120), pytest.mark.kmock(cls=VersionedEmulator)]
log = logging.getLogger("test")


@pytest.fixture()
async def api(kmock: kmock.KubernetesEmulator):
    declare_resources(kmock)
    for key, (kind, subresources) in EXTRA.items():
        kmock.resources[key] = kmock_info(kind, subresources)
    client = KubeClient(kopf.ConnectionInfo(server=str(kmock.url)))
    yield client
    await client.close()


def kmock_info(kind: str, subresources: set[str]) -> kmock.ResourceInfo:
    return kmock.ResourceInfo(kind=kind, namespaced=True, verbs=VERBS, subresources=subresources)


def example_request(name: str = "mocker-sla", namespace: str = "ns1") -> dict[str, Any]:
    body = yaml.safe_load((ROOT / "deploy" / "examples" / "planner" / "dgdr" / "mocker.yaml").read_text())
    body["metadata"].update(
        name=name, namespace=namespace, uid=f"uid-{name}", resourceVersion="1", generation=1
    )
    return body


def request_path(namespace: str = "ns1", name: str | None = None) -> str:
    return resource_path(V1BETA1, "dynamographdeploymentrequests", namespace, name)


async def run_job_as_kubelet(job: dict[str, Any], api_url: str, pod_tmp: Path) -> tuple[int, str]:
    """The Job's container, run here: its env (downward API resolved), ``$(VAR)`` in its args
    expanded, ``/tmp`` the pod's own directory, the API server the emulator."""
    (container,) = job["spec"]["template"]["spec"]["containers"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ETCD_", "NATS_", "DYN_"))}
    for e in container["env"]:
        if "value" in e:
            env[e["name"]] = e["value"]
        elif e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace":
            env[e["name"]] = job["metadata"]["namespace"]
    env["DYN_KUBE_API_SERVER"] = api_url

    def expand(word: str) -> str:
        word = re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], word)
        return str(pod_tmp) + word[4:] if word.startswith("/tmp/") else word

    assert container["command"][:2] == ["python3", "-m"]
    argv = [sys.executable, "-m", *container["command"][2:], *(expand(a) for a in container["args"])]
    # Asynchronously: the emulator it writes to serves from this event loop.
    proc = await asyncio.create_subprocess_exec(
        *argv, env=env, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 90)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return proc.returncode or 0, out.decode(errors="replace")


async def test_emulator_dgdr_profiles_generates_and_deploys(api, kmock, tmp_path) -> None:
    config = OperatorConfig(
        api_server=str(kmock.url),
        profiler_image="dynamo:9.9-{framework}",
        planner_role=PLANNER_ROLE,
        profiler_role=PROFILER_ROLE,
    )
    body = example_request()
    async with operator_running(config):
        await api.create(request_path(), body)

        # DGDR -> the profiling Job (and its account, bound to the chart's profiler role).
        job = await wait_for(
            lambda: api.get(resource_path("batch/v1", "jobs", "ns1", "mocker-sla-profile-1")), what="Job"
        )
        pod = job["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["image"] == "dynamo:0.1.0-cpu"  # the request's spec.image
        assert "nvidia.com/gpu" not in json.dumps(container["resources"])  # the mocker needs none
        assert pod["serviceAccountName"] == "mocker-sla-profiler" and pod["restartPolicy"] == "Never"
        assert job["spec"]["backoffLimit"] == 0
        assert job["metadata"]["ownerReferences"][0]["uid"] == "uid-mocker-sla"
        passed = json.loads(next(e["value"] for e in container["env"] if e["name"] == "DYN_PROFILER_REQUEST"))
        assert passed["spec"] == body["spec"]  # every field, as written
        binding = await wait_for(
            lambda: api.get(
                resource_path("rbac.authorization.k8s.io/v1", "rolebindings", "ns1", "mocker-sla-profiler")
            )
        )
        assert binding["roleRef"]["name"] == "dynamo-platform-operator-profiler"

        async def status() -> dict[str, Any]:
            return (await api.get(request_path("ns1", "mocker-sla"))).get("status") or {}

        async def phase(name: str) -> dict[str, Any] | None:
            st = await status()
            return st if st.get("phase") == name else None

        st = await wait_for(lambda: phase("Profiling"), what="Profiling")
        assert st["profilingJobName"] == "mocker-sla-profile-1"

        # The kubelet runs the pod; the Job controller marks the Job complete.
        code, output = await run_job_as_kubelet(job, str(kmock.url), tmp_path / "pod-tmp")
        assert code == 0, output[-4000:]
        results = await api.get(resource_path("v1", "configmaps", "ns1", "mocker-sla-profile"))
        assert set(results["data"]) == {"planner_profile.json", "selected_config.json", "dgd.yaml"}
        assert results["metadata"]["ownerReferences"][0]["uid"] == "uid-mocker-sla"
        complete = {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}
        await api.merge_patch(
            resource_path("batch/v1", "jobs", "ns1", "mocker-sla-profile-1", "status"), {"status": complete}
        )

        # -> the generated DGD in the status, created (autoApply), its planner reading the profile.
        st = await wait_for(lambda: phase("Deploying"), what="Deploying")
        generated = st["profilingResults"]["selectedConfig"]
        assert st["dgdName"] == generated["metadata"]["name"] == "mocker-sla"
        assert st["profilingResults"]["selection"]["mode"] in ("agg", "disagg")
        conditions = {c["type"]: c for c in st["conditions"]}
        assert (
            conditions["Profiled"]["status"] == "True"
            and "ISL 512 / OSL 64" in conditions["Profiled"]["message"]
        )
        dgd = await api.get(resource_path(DGD, "dynamographdeployments", "ns1", "mocker-sla"))
        assert dgd["spec"] == generated["spec"]
        assert custom_errors({**dgd, "metadata": {"name": "mocker-sla"}}) == []
        planner = dgd["spec"]["services"]["Planner"]
        config_arg = json.loads(planner["extraPodSpec"]["mainContainer"]["args"][1])
        assert (
            config_arg["optimization_target"] == "sla"
            and config_arg["ttft_ms"] == 200
            and config_arg["itl_ms"] == 20
        )
        assert config_arg["throughput_adjustment_interval_seconds"] == 10  # the request's features.planner
        assert planner["extraPodSpec"]["volumes"] == [
            {"name": "planner-profile-data", "configMap": {"name": "mocker-sla-profile"}}
        ]

        # The operator reconciles the DGD; its Deployments become ready; the request is Deployed.
        async def deployments() -> list[dict[str, Any]] | None:
            items = await api.list(resource_path("apps/v1", "deployments", "ns1"))
            return items if len(items) == len(generated["spec"]["services"]) else None

        ready = {"replicas": 1, "readyReplicas": 1, "updatedReplicas": 1, "availableReplicas": 1}
        for d in await wait_for(deployments, what="the generated graph's Deployments"):
            counts = {**ready, **{k: d["spec"]["replicas"] for k in ready}}
            await api.merge_patch(
                resource_path("apps/v1", "deployments", "ns1", d["metadata"]["name"], "status"),
                {"status": counts},
            )
        st = await wait_for(lambda: phase("Deployed"), what="Deployed")
        assert {c["type"]: c["status"] for c in st["conditions"]} == {
            "Validated": "True",
            "Profiled": "True",
            "Deployed": "True",
        }


async def test_emulator_dgdr_failures_are_conditions_in_words(api, kmock) -> None:
    """``advance`` as a plain function (no kopf loop): an invalid request, a failed profiling Job
    with the profiler's own words, and a graph name another graph already has."""
    config = OperatorConfig(api_server=str(kmock.url), planner_role=PLANNER_ROLE, profiler_role=PROFILER_ROLE)
    bad = example_request("bad")
    bad["spec"]["hardware"] = {"gpuSku": "h100_sxm"}
    bad["spec"]["sla"]["e2eLatency"] = 900
    st = await advance(bad, api, config, log)
    assert st["phase"] == "Failed"
    (cond,) = st["conditions"]
    assert cond["type"] == "Validated" and cond["reason"] == "InvalidSpec"
    assert (
        "spec.sla.e2eLatency is not built" in cond["message"]
        and "spec.hardware.gpuSku is not built" in cond["message"]
    )

    no_image = example_request("no-image")
    del no_image["spec"]["image"]
    st = await advance(no_image, api, config, log)
    assert (
        "spec.image is not set and the operator has no default profiling image"
        in st["conditions"][0]["message"]
    )

    # A profiler that found no configuration: the Job fails, the ConfigMap has its words.
    req = example_request("tight")
    await api.create(request_path(), req)
    st = await advance(req, api, config, log)
    assert st["phase"] == "Profiling"
    job_path = resource_path("batch/v1", "jobs", "ns1", "tight-profile-1")
    await api.merge_patch(
        job_path + "/status",
        {
            "status": {
                "failed": 1,
                "conditions": [{"type": "Failed", "status": "True", "message": "BackoffLimitExceeded"}],
            }
        },
    )
    words = "no measured configuration (batch 8, batch 32) meets TTFT <= 200 ms and ITL <= 20 ms"
    await api.create(
        resource_path("v1", "configmaps", "ns1"),
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "tight-profile", "namespace": "ns1"},
            "data": {"error.txt": words},
        },
    )
    st = await advance({**req, "status": st}, api, config, log)
    assert st["phase"] == "Failed" and st["profilingJobName"] == "tight-profile-1"
    profiled = next(c for c in st["conditions"] if c["type"] == "Profiled")
    assert profiled["reason"] == "ProfilingFailed" and profiled["message"] == words
    # Failed stays failed for this generation (no second Job).
    again = await advance({**req, "status": st}, api, config, log)
    assert again == st

    # A created graph shares the results ConfigMap (its planner mounts it) with the request, so
    # deleting the request alone keeps the profile. (The emulator assigns no uids; this one is the
    # API server's.)
    step = RequestStep(req, api, config, log)
    await step._share_results({"metadata": {"name": "tight", "uid": "uid-graph"}}, "tight-profile")
    cm = await api.get(resource_path("v1", "configmaps", "ns1", "tight-profile"))
    owners = {(o["kind"], o["uid"], o.get("controller", False)) for o in cm["metadata"]["ownerReferences"]}
    assert owners == {
        ("DynamoGraphDeploymentRequest", "uid-tight", False),
        ("DynamoGraphDeployment", "uid-graph", False),
    }

    # A spec change profiles again: the old Job goes, a new one comes.
    changed = {**req, "metadata": {**req["metadata"], "generation": 2}, "status": st}
    st2 = await advance(changed, api, config, log)
    assert st2["phase"] == "Profiling" and st2["profilingJobName"] == "tight-profile-2"
    assert await api.get(job_path) is None
    assert "profilingResults" not in st2


def test_dgdr_shapes_are_served_by_both_versions_without_pruning() -> None:
    """Both versions' schemas hold both shapes' fields (conversion None: an object written in one
    version is served in the other as written), and every example request validates."""
    alpha = {
        "model": "Qwen/Qwen3-0.6B",
        "backend": "vllm",
        "sla": {"ttft": 200, "itl": 20, "isl": 3000, "osl": 150},
        "useMocker": True,
        "autoApply": True,
        "deploymentOverrides": {"name": "qwen", "labels": {"team": "a"}},
    }
    beta = example_request()["spec"]
    for spec in (alpha, beta):
        for version in ("v1alpha1", "v1beta1"):
            obj = {
                "apiVersion": f"nvidia.com/{version}",
                "kind": "DynamoGraphDeploymentRequest",
                "metadata": {"name": "r"},
                "spec": spec,
            }
            assert custom_errors(obj) == [], (version, spec)
    for path in sorted((ROOT / "deploy" / "examples" / "planner" / "dgdr").glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        assert custom_errors(doc) == [], path
