"""Pure functions behind the operator and the local runner: parsing a graph, rendering its
Kubernetes objects, image pull secret matching, status roll-up, merge patches, local plans."""

from __future__ import annotations

import base64
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from dynamo.deploy.plan import expand_var_refs, load_env_file, plan_graph, rewrite_tmp
from dynamo.deploy.request import parse_request
from dynamo.deploy.spec import SpecError, parse_graph
from dynamo.operator.apply import merge_patch
from dynamo.operator.images import registry_host, registry_index, secrets_for_image
from dynamo.operator.render import RenderContext, render_graph
from dynamo.operator.status import rollup

ROOT = Path(__file__).resolve().parents[2]
CTX = RenderContext(
    namespace="prod", graph_uid="u-1", etcd_endpoints="http://etcd:2379", nats_server="nats://n:4222"
)


def graph(**services: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "nvidia.com/v1alpha1",
        "kind": "DynamoGraphDeployment",
        "metadata": {"name": "g"},
        "spec": {"services": services},
    }


def svc(component: str = "worker", **extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "componentType": component,
        "extraPodSpec": {
            "mainContainer": {"image": "nvcr.io/x/y:1", "command": ["python3", "-m", "dynamo.vllm"]}
        },
    }
    base.update(extra)
    return base


def main_container(obj: dict[str, Any]) -> dict[str, Any]:
    return obj["spec"]["template"]["spec"]["containers"][0]


# -- parsing --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (graph(), "spec.services must name at least one service"),
        (graph(W={"componentType": "engine"}), "componentType must be one of frontend, worker, planner"),
        (graph(W=svc(subComponentType="both")), "subComponentType must be one of prefill, decode"),
        (graph(W=svc(replicas=-1)), "replicas must be a whole number >= 0"),
        (graph(W=svc(envs=[{"value": "x"}])), "spec.services.W.envs[0] needs a name"),
    ],
)
def test_parse_rejects_with_words(body: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_graph(body)


def test_dynamo_namespace_defaults_to_k8s_namespace_and_graph_name() -> None:
    g = parse_graph(graph(W=svc(), F=svc("frontend", dynamoNamespace="mine")))
    assert g.services["W"].dynamo_namespace_in("prod", "g") == "prod-g"
    assert g.services["F"].dynamo_namespace_in("prod", "g") == "mine"


# -- rendering ------------------------------------------------------------------------------------


def test_render_worker_gpu_env_probes_and_validates() -> None:
    body = graph(
        W=svc(
            resources={"requests": {"cpu": "4", "gpu": "2"}, "limits": {"memory": "40Gi"}},
            envs=[
                {"name": "DYN_LOG", "value": "debug"},
                {"name": "ETCD_ENDPOINTS", "value": "http://mine:2379"},
            ],
        )
    )
    body["spec"]["envs"] = [{"name": "DYN_LOG", "value": "info"}, {"name": "GLOBAL", "value": "1"}]
    dep, _status_service = render_graph(parse_graph(body), CTX)
    kubernetes_validate.validate(dep, "1.33", strict=True)
    c = main_container(dep)
    # gpu in requests only still becomes an equal limit: extended resources are never over-committed
    assert c["resources"] == {
        "requests": {"cpu": "4", "nvidia.com/gpu": "2"},
        "limits": {"memory": "40Gi", "nvidia.com/gpu": "2"},
    }
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["DYN_LOG"] == "debug"  # service envs beat spec.envs
    assert env["GLOBAL"] == "1"
    assert env["ETCD_ENDPOINTS"] == "http://mine:2379"  # a manifest may override what is injected
    assert env["DYN_NAMESPACE"] == "prod-g" and env["DYN_SYSTEM_PORT"] == "9090"
    assert [e["name"] for e in c["env"]].count("DYN_LOG") == 1
    assert c["ports"] == [{"name": "system", "containerPort": 9090, "protocol": "TCP"}]
    assert c["readinessProbe"]["httpGet"] == {"path": "/health", "port": "system"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/live", "port": "system"}
    assert c["startupProbe"]["httpGet"]["path"] == "/live"
    pod = dep["spec"]["template"]["spec"]
    assert {"name": "shared-memory", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}} in pod["volumes"]
    assert pod["terminationGracePeriodSeconds"] == 60 and pod["securityContext"] == {"fsGroup": 1000}


def test_render_frontend_service_name_and_extra_pod_spec_kept() -> None:
    body = graph(
        Frontend=svc(
            "frontend",
            replicas=2,
            extraPodSpec={
                "mainContainer": {"image": "dynamo:0.1.0-cpu", "args": ["--router-mode", "kv"]},
                "tolerations": [{"key": "gpu", "operator": "Exists"}],
                "imagePullSecrets": [{"name": "written"}],
                "containers": [{"name": "sidecar", "image": "busybox"}],
            },
            sharedMemory={"disabled": True},
        ),
        W=svc(),
    )
    objs = render_graph(parse_graph(body), CTX)
    for obj in objs:
        kubernetes_validate.validate(obj, "1.33", strict=True)
    dep, svc_obj = objs[0], objs[2]
    assert [o["kind"] for o in objs] == ["Deployment", "Deployment", "Service", "Service"]
    assert svc_obj["metadata"]["name"] == "g-frontend"
    assert svc_obj["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    pod = dep["spec"]["template"]["spec"]
    assert dep["spec"]["replicas"] == 2
    assert pod["tolerations"] == [{"key": "gpu", "operator": "Exists"}]
    assert pod["imagePullSecrets"] == [{"name": "written"}]
    assert [c["name"] for c in pod["containers"]] == ["main", "sidecar"]
    assert "volumes" not in pod  # shared memory disabled
    assert main_container(dep)["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}


def test_render_two_frontends_get_their_own_service_names() -> None:
    objs = render_graph(parse_graph(graph(A=svc("frontend"), B=svc("frontend"))), CTX)
    assert sorted(o["metadata"]["name"] for o in objs if o["kind"] == "Service") == ["g-a", "g-b"]


def test_render_multinode_is_a_leader_worker_set() -> None:
    lws, status_service = render_graph(parse_graph(graph(W=svc(replicas=2, multinode={"nodeCount": 2}))), CTX)
    assert status_service["kind"] == "Service"
    assert (
        status_service["spec"]["selector"].items()
        <= lws["spec"]["leaderWorkerTemplate"]["workerTemplate"]["metadata"]["labels"].items()
    )
    assert lws["kind"] == "LeaderWorkerSet"
    assert lws["spec"]["replicas"] == 2 and lws["spec"]["leaderWorkerTemplate"]["size"] == 2
    template = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}}
    template["template"] = lws["spec"]["leaderWorkerTemplate"]["workerTemplate"]
    kubernetes_validate.validate(template, "1.33", strict=True)


def test_render_pvc_mounts_and_unknown_pvc() -> None:
    body = graph(W=svc(volumeMounts=[{"name": "models", "mountPoint": "/models"}]))
    with pytest.raises(SpecError, match=r"mounts 'models', which spec\.pvcs does not name"):
        render_graph(parse_graph(body), CTX)
    body["spec"]["pvcs"] = [{"name": "models"}]
    dep, _status_service = render_graph(parse_graph(body), CTX)
    assert {"name": "models", "persistentVolumeClaim": {"claimName": "models"}} in dep["spec"]["template"][
        "spec"
    ]["volumes"]
    assert {"name": "models", "mountPath": "/models"} in main_container(dep)["volumeMounts"]


def test_render_rejects_names_kubernetes_cannot_hold() -> None:
    body = graph(**{"W" * 70: svc()})
    with pytest.raises(SpecError, match="Kubernetes allows 63"):
        render_graph(parse_graph(body), CTX)


def test_render_worker_service_exposes_the_system_port() -> None:
    """`http://<worker-service>:9090/health` (the TRT-LLM guide): one Service per worker component,
    named like its Deployment; none for a planner, whose port nobody is told to reach."""
    body = graph(
        Frontend=svc("frontend"),
        Prefill=svc(subComponentType="prefill", annotations={"a": "b"}),
        Decode=svc(subComponentType="decode", replicas=3),
        Planner=svc("planner"),
    )
    objs = render_graph(parse_graph(body), CTX)
    for obj in objs:
        kubernetes_validate.validate(obj, "1.33", strict=True)
    deps = {o["metadata"]["name"]: o for o in objs if o["kind"] == "Deployment"}
    services = {o["metadata"]["name"]: o for o in objs if o["kind"] == "Service"}
    assert sorted(services) == ["g-decode", "g-frontend", "g-prefill"]
    for name in ("g-prefill", "g-decode"):
        service, dep = services[name], deps[name]
        assert service["spec"]["type"] == "ClusterIP"
        assert service["spec"]["ports"] == [
            {"name": "system", "port": 9090, "targetPort": "system", "protocol": "TCP"}
        ]
        # The selector reaches this service's pods and no other's, like the frontend's.
        assert service["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
        assert service["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
        assert service["metadata"]["labels"] == dep["metadata"]["labels"]
        assert service["metadata"]["ownerReferences"] == dep["metadata"]["ownerReferences"]
        assert service["metadata"]["ownerReferences"][0]["uid"] == "u-1"
        # The port it targets is the one the worker's container names and is told to serve on.
        c = main_container(dep)
        assert {"name": "system", "containerPort": 9090, "protocol": "TCP"} in c["ports"]
        assert {"name": "DYN_SYSTEM_PORT", "value": "9090"} in c["env"]
    assert "annotations" not in services["g-prefill"]["metadata"]  # pod annotations stay on pods
    assert services["g-decode"]["metadata"]["labels"]["nvidia.com/dynamo-sub-component-type"] == "decode"


def _env(obj: dict[str, Any]) -> dict[str, str | None]:
    return {e["name"]: e.get("value") for e in main_container(obj)["env"]}


def test_render_frontend_discovers_only_its_graphs_dynamo_namespaces() -> None:
    # The guide's DGD: the frontend in my-llm, its worker in dynamo-dev.
    body = graph(
        Frontend=svc("frontend", dynamoNamespace="my-llm"),
        VllmDecodeWorker=svc(dynamoNamespace="dynamo-dev"),
        VllmPrefillWorker=svc(dynamoNamespace="dynamo-dev", subComponentType="prefill"),
        Planner=svc("planner"),
    )
    deps = {
        o["metadata"]["name"]: o for o in render_graph(parse_graph(body), CTX) if o["kind"] == "Deployment"
    }
    front = _env(deps["g-frontend"])
    # Sorted, once each, every service's namespace (the planner's is derived: <k8s-namespace>-<graph>).
    assert front["DYN_DISCOVERY_NAMESPACES"] == "dynamo-dev,my-llm,prod-g"
    assert front["DYN_NAMESPACE"] == "my-llm"
    for name in ("g-vllmdecodeworker", "g-vllmprefillworker", "g-planner"):
        assert "DYN_DISCOVERY_NAMESPACES" not in _env(deps[name]), name


def test_render_frontend_scoping_exceptions() -> None:
    # A graph with only a frontend is a shared frontend: it serves whatever registers, unscoped.
    (dep, _svc) = render_graph(parse_graph(graph(Frontend=svc("frontend", dynamoNamespace="x"))), CTX)
    assert "DYN_DISCOVERY_NAMESPACES" not in _env(dep)
    # Without dynamoNamespace everything is in the derived namespace.
    deps = render_graph(parse_graph(graph(Frontend=svc("frontend"), W=svc())), CTX)
    assert _env(deps[0])["DYN_DISCOVERY_NAMESPACES"] == "prod-g"
    # What the graph says wins: in spec.envs, in the service's envs, or in the container's env.
    for where in ("spec", "service", "container"):
        body = graph(Frontend=svc("frontend"), W=svc())
        mine = [{"name": "DYN_DISCOVERY_NAMESPACES", "value": "a,b"}]
        if where == "spec":
            body["spec"]["envs"] = mine
        elif where == "service":
            body["spec"]["services"]["Frontend"]["envs"] = mine
        else:
            body["spec"]["services"]["Frontend"]["extraPodSpec"]["mainContainer"]["env"] = mine
        front = render_graph(parse_graph(body), CTX)[0]
        names = [e["name"] for e in main_container(front)["env"]]
        assert names.count("DYN_DISCOVERY_NAMESPACES") == 1, where
        assert _env(front)["DYN_DISCOVERY_NAMESPACES"] == "a,b", where


# -- image pull secrets -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image", "host"),
    [
        ("nvcr.io/nvidia/ai-dynamo/vllm-runtime:0.1.0", "nvcr.io"),
        ("ubuntu:24.04", "docker.io"),
        ("library/ubuntu", "docker.io"),
        ("localhost:5000/dynamo:1", "localhost:5000"),
        ("Registry.Example.com:443/a/b@sha256:abc", "registry.example.com:443"),
        ("index.docker.io/library/nats:2", "docker.io"),
    ],
)
def test_registry_host(image: str, host: str) -> None:
    assert registry_host(image) == host


def _secret(name: str, kind: str, payload: dict[str, Any]) -> dict[str, Any]:
    key = ".dockerconfigjson" if kind.endswith("json") else ".dockercfg"
    blob = base64.b64encode(json.dumps(payload).encode()).decode()
    return {"metadata": {"name": name}, "type": kind, "data": {key: blob}}


def test_registry_index_reads_both_docker_config_formats() -> None:
    secrets = [
        _secret("a", "kubernetes.io/dockerconfigjson", {"auths": {"https://nvcr.io/v2/": {}, "ghcr.io": {}}}),
        _secret("b", "kubernetes.io/dockercfg", {"nvcr.io": {"auth": "x"}}),
        {
            "metadata": {"name": "broken"},
            "type": "kubernetes.io/dockerconfigjson",
            "data": {".dockerconfigjson": "!!"},
        },
        {"metadata": {"name": "opaque"}, "type": "Opaque", "data": {}},
    ]
    index = registry_index(secrets)
    assert index == {"nvcr.io": ["a", "b"], "ghcr.io": ["a"]}
    assert secrets_for_image("nvcr.io/nvidia/x:1", index) == ["a", "b"]
    assert secrets_for_image("quay.io/x:1", index) == []


# -- status, patches, requests ----------------------------------------------------------------------


def test_rollup_counts_and_words() -> None:
    g = parse_graph(graph(F=svc("frontend"), W=svc(replicas=2)))
    st = rollup(g, {"F": {"status": {"readyReplicas": 1, "updatedReplicas": 1}}, "W": None})
    assert st["state"] == "pending"
    assert st["conditions"][0]["message"] == "waiting for W: not created yet"
    ready = {"status": {"readyReplicas": 2, "updatedReplicas": 2, "availableReplicas": 2}}
    st2 = rollup(
        g, {"F": {"status": {"readyReplicas": 1, "updatedReplicas": 1}}, "W": ready}, st, generation=4
    )
    assert st2["state"] == "successful" and st2["observedGeneration"] == 4
    assert st2["services"]["W"] == {
        "replicas": 2,
        "readyReplicas": 2,
        "updatedReplicas": 2,
        "availableReplicas": 2,
    }


def test_merge_patch_removes_what_we_stopped_setting() -> None:
    old = {"a": 1, "m": {"x": 1, "y": 2}, "l": [1, 2]}
    new = {"a": 1, "m": {"x": 1}, "l": [1], "n": True}
    assert merge_patch(old, new) == {"m": {"y": None}, "l": [1], "n": True}


def test_request_validation_says_what_is_wrong() -> None:
    # (Requests are profiled now: tests/k8s/test_k8s_dgdr_emulator.py; here only the words.)
    with pytest.raises(SpecError) as err:
        parse_request(
            {"metadata": {"name": "r"}, "spec": {"model": "", "backend": "tgi", "sla": {"ttft": -1}}}
        )
    assert "spec.model is required" in str(err.value)
    assert "spec.backend must be one of vllm, sglang, trtllm" in str(err.value)
    assert "spec.sla.ttft must be a positive number" in str(err.value)


# -- local plans ------------------------------------------------------------------------------------


def test_var_refs_and_tmp_rewrite() -> None:
    env = {"POD_NAME": "p-0"}
    assert expand_var_refs("--name $(POD_NAME) $(UNDEFINED) $$(POD_NAME) $(python3 -m x)", env) == (
        "--name p-0 $(UNDEFINED) $(POD_NAME) $(python3 -m x)"
    )
    tmp = Path("/run/r/w-0/tmp")
    assert rewrite_tmp("tee /tmp/worker.log; ls /tmp; cat /tmpx /var/tmp/a", tmp) == (
        "tee /run/r/w-0/tmp/worker.log; ls /run/r/w-0/tmp; cat /tmpx /var/tmp/a"
    )


def test_tmp_rewrite_keeps_paths_inside_host_directories(tmp_path: Path) -> None:
    # A checkout under /tmp (CI clones there) is the host's: only pod-private paths move.
    host_dir = Path(tempfile.mkdtemp(prefix="checkout-", dir="/tmp"))
    try:
        tool = f"{host_dir}/tests/tool.py"
        out = rewrite_tmp(f"python3 {tool} > /tmp/worker.log; ls /tmp/no-such-dir-xyz/a", tmp_path)
        assert out == f"python3 {tool} > {tmp_path}/worker.log; ls {tmp_path}/no-such-dir-xyz/a"
    finally:
        shutil.rmtree(host_dir)


def test_plan_ports_env_and_warnings(tmp_path: Path) -> None:
    body = graph(
        Frontend=svc(
            "frontend",
            extraPodSpec={
                "mainContainer": {
                    "image": "i",
                    "command": ["python3", "-m", "dynamo.frontend"],
                    "args": ["--http-port=8000"],
                }
            },
        ),
        W=svc(
            replicas=2,
            envFromSecret="hf-token-secret",
            envs=[
                {"name": "ME", "value": "$(POD_NAME)"},
                {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            ],
            extraPodSpec={
                "mainContainer": {
                    "image": "i",
                    "workingDir": "/does/not/exist",
                    "command": ["sh", "-c", "echo > /tmp/x"],
                }
            },
        ),
    )
    g = parse_graph(body)
    plan = plan_graph(g, tmp_path, http_port=0, base_env={"PATH": "/usr/bin"}, cwd=tmp_path)
    assert [p.name for p in plan.processes] == ["W[0]", "W[1]", "Frontend[0]"]  # frontends last
    ports = [p.port for p in plan.processes]
    assert len(set(ports)) == 3
    front = plan.processes[2]
    assert front.argv[-1] == f"--http-port={front.port}" and front.env["DYN_HTTP_PORT"] == str(front.port)
    w0, w1 = plan.processes[:2]
    assert w0.env["DYN_SYSTEM_PORT"] != w1.env["DYN_SYSTEM_PORT"]
    assert w0.env["ME"] == "g-w-0" and w1.env["ME"] == "g-w-1" and w0.env["IP"] == "127.0.0.1"
    assert w0.argv[-1] == f"echo > {tmp_path}/w-0/tmp/x"
    assert w0.env["DYN_FILE_DISCOVERY_DIR"] == str(tmp_path / "discovery")
    assert "hf-token-secret" in plan.warnings[0] and "--env-file" in plan.warnings[0]
    assert "workingDir /does/not/exist does not exist here" in w0.warnings[0]

    secrets = tmp_path / "secrets.env"
    secrets.write_text("# token\nexport HF_TOKEN='hf_abc'\n")
    assert load_env_file(secrets) == {"HF_TOKEN": "hf_abc"}
    plan2 = plan_graph(
        g,
        tmp_path,
        base_env={"PATH": "/usr/bin", "ETCD_ENDPOINTS": "http://e:2379"},
        secret_env=load_env_file(secrets),
    )
    assert plan2.processes[0].env["HF_TOKEN"] == "hf_abc" and "HF_TOKEN" not in plan2.processes[2].env
    assert "DYN_FILE_DISCOVERY_DIR" not in plan2.processes[0].env  # etcd given: no private discovery dir
    assert not plan2.warnings


def test_plan_frontend_discovers_only_its_graphs_dynamo_namespaces(tmp_path: Path) -> None:
    cmd = {"mainContainer": {"image": "i", "command": ["python3", "-m", "dynamo.frontend"]}}
    body = graph(
        Frontend=svc("frontend", dynamoNamespace="my-llm", extraPodSpec=cmd),
        W=svc(dynamoNamespace="dynamo-dev"),
    )
    base = {"PATH": "/usr/bin", "DYN_DISCOVERY_NAMESPACES": "from-my-shell"}
    plan = plan_graph(parse_graph(body), tmp_path, k8s_namespace="team", http_port=0, base_env=base)
    w, front = plan.processes
    assert front.env["DYN_DISCOVERY_NAMESPACES"] == "dynamo-dev,my-llm"  # as the operator sets it
    assert w.env["DYN_DISCOVERY_NAMESPACES"] == "from-my-shell"  # workers: left as the shell has it
    body["spec"]["services"]["Frontend"]["envs"] = [{"name": "DYN_DISCOVERY_NAMESPACES", "value": "a"}]
    (_, front) = plan_graph(parse_graph(body), tmp_path, http_port=0, base_env=base).processes
    assert front.env["DYN_DISCOVERY_NAMESPACES"] == "a"  # the graph's own value wins
    alone = graph(Frontend=svc("frontend", extraPodSpec=cmd))
    (front,) = plan_graph(parse_graph(alone), tmp_path, http_port=0, base_env={"PATH": "/usr/bin"}).processes
    assert "DYN_DISCOVERY_NAMESPACES" not in front.env  # a frontend-only graph is not scoped


def test_plan_needs_a_command(tmp_path: Path) -> None:
    g = parse_graph(graph(W={"componentType": "worker", "extraPodSpec": {"mainContainer": {"image": "i"}}}))
    with pytest.raises(SpecError, match="the image's entrypoint, which the local runner cannot know"):
        plan_graph(g, tmp_path)


def test_every_example_plans_locally(tmp_path: Path) -> None:
    for path in sorted((ROOT / "deploy" / "examples").glob("*/*.yaml")):
        if path.parent.name == "engine_configs":
            continue
        doc = yaml.safe_load(path.read_text())
        plan = plan_graph(parse_graph(doc), tmp_path / path.stem, http_port=0)
        assert plan.frontends(), path
