"""Everything we ship for Kubernetes, checked offline: the CRDs, every example (against our CRD
schemas, strictly, and against what the guides promise), the worker commands in the examples
(parsed by the workers' real argument parsers), and the Helm charts (lint, template, validate)."""

from __future__ import annotations

import copy
import importlib
import io
import re
import subprocess
import tomllib
from contextlib import redirect_stderr
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from k8s_commands import container_words, invocations, shell_script
from k8s_schemas import K8S_VERSION, crds, custom_errors, load_docs, validate

from dynamo.deploy.spec import parse_graph
from dynamo.operator.render import RenderContext, render_graph

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "deploy" / "examples"
BACKENDS = ("vllm", "sglang", "trtllm")
PATTERNS = ("agg", "agg_router", "disagg", "disagg_router")
EXAMPLE_FILES = sorted(p for p in EXAMPLES.glob("*/*.yaml") if p.parent.name != "engine_configs")
IMAGE_FRAMEWORK = {"vllm": "vllm", "sglang": "sglang", "trtllm": "tensorrtllm", "cpu": "cpu"}
pytestmark = pytest.mark.timeout(120)


def example(path: Path) -> dict[str, Any]:
    (doc,) = load_docs(path)
    return doc


def ids(paths: list[Path]) -> list[str]:
    return [f"{p.parent.name}/{p.name}" for p in paths]


# -- CRDs -----------------------------------------------------------------------------------------


def _structural_problems(schema: dict[str, Any], where: str) -> list[str]:
    problems = []
    if "type" not in schema and not schema.get("x-kubernetes-int-or-string") and "anyOf" not in schema:
        problems.append(f"{where}: no type")
    for name, sub in (schema.get("properties") or {}).items():
        problems += _structural_problems(sub, f"{where}.{name}")
    if isinstance(schema.get("additionalProperties"), dict):
        problems += _structural_problems(schema["additionalProperties"], f"{where}.*")
    if isinstance(schema.get("items"), dict):
        problems += _structural_problems(schema["items"], f"{where}[]")
    return problems


@pytest.mark.parametrize("kind", ["DynamoGraphDeployment", "DynamoGraphDeploymentRequest"])
def test_crd_is_valid_structural_and_usable(kind: str) -> None:
    crd = crds()[kind]
    kubernetes_validate.validate(crd, K8S_VERSION, strict=True)
    versions = {v["name"]: v for v in crd["spec"]["versions"]}
    # Requests are served as v1beta1 (the reference's fields; storage) beside v1alpha1.
    expected = {"DynamoGraphDeployment": ["v1alpha1"]}.get(kind, ["v1alpha1", "v1beta1"])
    assert crd["spec"]["group"] == "nvidia.com" and sorted(versions) == expected
    assert [v["name"] for v in versions.values() if v["storage"]] == [expected[-1]]
    for version in versions.values():
        assert version["served"] and version["subresources"] == {"status": {}}
        assert _structural_problems(version["schema"]["openAPIV3Schema"], kind) == []
        assert {c["name"] for c in version["additionalPrinterColumns"]} >= {"Age"}
    assert crd["spec"]["names"]["shortNames"] == [{"DynamoGraphDeployment": "dgd"}.get(kind, "dgdr")]


def test_chart_crds_are_the_crds() -> None:
    for path in sorted((ROOT / "deploy" / "crds").glob("*.yaml")):
        copy_ = ROOT / "deploy" / "helm" / "dynamo-crds" / "templates" / path.name
        assert copy_.read_text() == path.read_text(), (
            f"{copy_} differs from {path}: cp deploy/crds/*.yaml into the chart"
        )


def _dgd_with(mutate) -> dict[str, Any]:
    doc = copy.deepcopy(example(EXAMPLES / "vllm" / "agg.yaml"))
    mutate(doc["spec"]["services"]["VllmDecodeWorker"])
    return doc


@pytest.mark.parametrize(
    ("mutate", "error"),
    [
        (lambda s: s.update(componentType="engine"), "'engine' is not one of"),
        (lambda s: s.update(subComponentType="both"), "'both' is not one of"),
        (lambda s: s.update(replicas=-1), "-1 is less than the minimum of 0"),
        (lambda s: s.update(replica=2), "'replica' was unexpected"),
        (lambda s: s["resources"]["limits"].update(gpu="one"), "gpu"),
        (lambda s: s.update(multinode={"nodeCount": 1}), "1 is less than the minimum of 2"),
        (lambda s: s.update(dynamoNamespace="has.dot"), "does not match"),
        (lambda s: s.pop("componentType"), "'componentType' is a required property"),
        (
            lambda s: s["extraPodSpec"]["mainContainer"].update(args="python3 -m dynamo.vllm"),
            "is not of type 'array'",
        ),
    ],
)
def test_dgd_schema_rejects(mutate, error: str) -> None:
    errors = custom_errors(_dgd_with(mutate))
    assert any(error in e for e in errors), errors


def test_dgd_schema_keeps_pod_spec_fields_it_does_not_model() -> None:
    def add(s: dict[str, Any]) -> None:
        s["extraPodSpec"]["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists"}]
        s["extraPodSpec"]["mainContainer"]["volumeMounts"] = [{"name": "x", "mountPath": "/x"}]

    assert custom_errors(_dgd_with(add)) == []


def _dgdr(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "nvidia.com/v1alpha1",
        "kind": "DynamoGraphDeploymentRequest",
        "metadata": {"name": "r"},
        "spec": spec,
    }


def test_dgdr_schema() -> None:
    assert (
        custom_errors(
            _dgdr(model="Qwen/Qwen3-0.6B", backend="vllm", sla={"ttft": 200, "itl": 20}, gpuType="h100_sxm")
        )
        == []
    )
    assert any("'model' is a required property" in e for e in custom_errors(_dgdr(backend="vllm")))
    assert any("'tgi' is not one of" in e for e in custom_errors(_dgdr(model="m", backend="tgi")))
    assert any(
        "less than or equal to the minimum of 0" in e
        for e in custom_errors(_dgdr(model="m", backend="vllm", sla={"ttft": 0}))
    )


# -- examples -----------------------------------------------------------------------------------


def test_every_backend_has_every_pattern_and_a_cpu_example() -> None:
    have = {(p.parent.name, p.stem) for p in EXAMPLE_FILES}
    assert {(b, p) for b in BACKENDS for p in PATTERNS} | {("cpu", "agg")} <= have


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=ids(EXAMPLE_FILES))
def test_example_validates_and_renders_valid_objects(path: Path) -> None:
    doc = example(path)
    validate(doc)
    backend = path.parent.name
    expected_name = f"{backend}-{path.stem.replace('_', '-')}"
    assert doc["metadata"]["name"] == expected_name
    objs = render_graph(parse_graph(doc), RenderContext(namespace="dynamo-system", graph_uid="u"))
    for obj in objs:
        validate(obj)
    services = [o["metadata"]["name"] for o in objs if o["kind"] == "Service"]
    # kubectl port-forward svc/<name>-frontend 8000:8000, and http://<worker-service>:9090/health
    workers = [f"{expected_name}-{n.lower()}" for n, _ in _workers(doc)]
    assert services == [f"{expected_name}-frontend", *workers]
    text = path.read_text()
    assert f"kubectl port-forward svc/{expected_name}-frontend 8000:8000" in text


def test_guide_names_work_as_written() -> None:
    # "kubectl apply -f .../vllm/agg.yaml; kubectl port-forward svc/vllm-agg-frontend 8000:8000"
    objs = render_graph(parse_graph(example(EXAMPLES / "vllm" / "agg.yaml")), RenderContext("ns", "u"))
    svc, worker_svc = [o for o in objs if o["kind"] == "Service"]
    assert svc["metadata"]["name"] == "vllm-agg-frontend" and svc["spec"]["ports"][0]["port"] == 8000
    # TRT-LLM guide: "Worker health endpoints: http://<worker-service>:9090/health"
    assert worker_svc["metadata"]["name"] == "vllm-agg-vllmdecodeworker"
    assert worker_svc["spec"]["ports"][0]["port"] == 9090


def _workers(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(n, s) for n, s in doc["spec"]["services"].items() if s["componentType"] == "worker"]


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=ids(EXAMPLE_FILES))
def test_example_follows_the_guides(path: Path) -> None:
    doc, backend, pattern = example(path), path.parent.name, path.stem
    services = doc["spec"]["services"]
    (front,) = [s for s in services.values() if s["componentType"] == "frontend"]
    front_main = front["extraPodSpec"]["mainContainer"]
    assert [c for c, _ in invocations(front_main)] == ["frontend"]
    router_env = {e["name"]: e["value"] for e in front.get("envs") or []}.get("DYN_ROUTER_MODE")
    router_arg = " ".join(container_words(front_main)).find("--router-mode kv") >= 0
    assert (router_env == "kv" or router_arg) == pattern.endswith("_router"), "KV routing only in *_router"

    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    for name, s in _workers(doc):
        main = s["extraPodSpec"]["mainContainer"]
        assert main["image"] == f"dynamo:{version}-{IMAGE_FRAMEWORK[backend]}", (
            name
        )  # container/build.sh's tag
        assert front_main["image"] == main["image"]
        probe = " ".join(s["readinessProbe"]["exec"]["command"])
        assert 'grep "Worker.*initialized" /tmp/worker.log' in probe
        assert "tee /tmp/worker.log" in shell_script(container_words(main))
        ((component, args),) = invocations(main)
        assert component == ("vllm" if backend == "cpu" else backend)
        joined = " ".join(args)
        if backend == "vllm":
            assert joined.startswith("--model Qwen/Qwen3-0.6B")
        if backend == "sglang":
            assert "--model-path deepseek-ai/DeepSeek-R1-Distill-Llama-8B" in joined
            assert "--tp 1" in joined and "--trust-remote-code" in joined
        if backend == "trtllm":
            assert "--served-model-name deepseek-ai/DeepSeek-R1-Distill-Llama-8B" in joined
            config = re.search(r"--extra-engine-args \$DYNAMO_HOME/(\S+)", joined)
            assert config and (ROOT / config.group(1)).is_file(), joined
            assert s["envs"][0]["name"] == "DISAGGREGATION_STRATEGY" if "disagg" in pattern else True
        if backend != "cpu":
            assert s["envFromSecret"] == "hf-token-secret"
            assert s["resources"]["limits"]["gpu"] == "1"
        if s.get("subComponentType") == "prefill" and backend == "vllm":
            assert "--is-prefill-worker" in args
    subs = sorted(s.get("subComponentType", "-") for _, s in _workers(doc))
    assert subs == (["decode", "prefill"] if pattern.startswith("disagg") else ["-"])
    if backend == "trtllm" and pattern.startswith("disagg"):
        strategy = "prefill_first" if pattern.endswith("_router") else "decode_first"
        for _, s in _workers(doc):
            assert {"name": "DISAGGREGATION_STRATEGY", "value": strategy} in s["envs"]
        # The frontend routes the flow, so it must see the same strategy (graph-wide envs).
        assert {"name": "DISAGGREGATION_STRATEGY", "value": strategy} in doc["spec"]["envs"]


def test_trtllm_image_knows_dynamo_home() -> None:
    dockerfile = (ROOT / "container" / "Dockerfile.tensorrtllm").read_text()
    assert re.search(r"^ENV\b.*\bDYNAMO_HOME=/workspace\b", dockerfile, re.M)
    assert re.search(r"COPY\b.*\bdeploy/examples\s+/workspace/deploy/examples", dockerfile)


# -- example commands against the workers' real argument parsers --------------------------------


def _parser(component: str):
    if component == "frontend":
        return importlib.import_module("dynamo.frontend.args").build_parser()
    if component == "vllm":
        pytest.importorskip(
            "vllm", reason="dynamo.vllm's parser includes vLLM's engine args: needs vllm installed"
        )
        return importlib.import_module("dynamo.vllm.args").build_parser()
    module = pytest.importorskip(
        f"dynamo.{component}.args",
        reason=f"the {component} worker (dynamo.{component}.args) has not landed yet",
    )
    return module.build_parser()


def _commands(component: str) -> list[tuple[str, list[str]]]:
    out = []
    for path in EXAMPLE_FILES:
        for name, s in example(path)["spec"]["services"].items():
            for comp, args in invocations(s["extraPodSpec"]["mainContainer"]):
                if comp == component:
                    out.append((f"{path.parent.name}/{path.name}:{name}", args))
    return out


@pytest.mark.parametrize("component", ["frontend", "vllm", "sglang", "trtllm"])
def test_example_commands_parse_with_the_real_parsers(component: str) -> None:
    commands = _commands(component)
    assert commands, f"no example runs dynamo.{component}"
    parser = _parser(component)
    for where, args in commands:
        err = io.StringIO()
        try:
            with redirect_stderr(err):
                parser.parse_args(args)
        except SystemExit as exc:
            pytest.fail(
                f"{where}: python3 -m dynamo.{component} {' '.join(args)}\n{err.getvalue()}exit {exc.code}"
            )
        # argparse accepts unambiguous prefixes (--router-mod); an example must spell flags out.
        flags = {a.split("=", 1)[0] for a in args if a.startswith("--")}
        unknown = sorted(f for f in flags if f not in parser._option_string_actions)
        assert not unknown, f"{where}: abbreviated or unknown flags {unknown}"


def test_a_typo_in_an_example_flag_is_caught() -> None:
    parser = _parser("frontend")
    with pytest.raises(SystemExit), redirect_stderr(io.StringIO()):
        parser.parse_args(["--routr-mode", "kv"])


# -- Helm -------------------------------------------------------------------------------------------


def run(cmd: list[Any], ok: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=60)
    if ok:
        assert proc.returncode == 0, f"{cmd}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def template(helm: Path, chart: str, *sets: str, namespace: str = "dynamo-system") -> list[dict[str, Any]]:
    args = [helm, "template", chart, ROOT / "deploy" / "helm" / chart, "--namespace", namespace]
    for s in sets:
        args += ["--set", s]
    return [d for d in yaml.safe_load_all(run(args).stdout) if d]


@pytest.mark.parametrize("chart", ["dynamo-crds", "dynamo-platform"])
def test_helm_lint(helm: Path, chart: str) -> None:
    run([helm, "lint", "--strict", ROOT / "deploy" / "helm" / chart])


def test_helm_crds_chart_renders_the_crds(helm: Path) -> None:
    docs = template(helm, "dynamo-crds")
    assert sorted(d["metadata"]["name"] for d in docs) == sorted(
        c["metadata"]["name"] for c in crds().values()
    )
    for doc in docs:
        validate(doc)
        assert doc == crds()[doc["spec"]["names"]["kind"]]


def _by_kind(docs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for d in docs:
        out.setdefault(d["kind"], []).append(d)
    return out


def _operator(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (dep,) = [d for d in docs if d["kind"] == "Deployment"]
    return dep["spec"]["template"]["spec"]["containers"][0]


def _assert_may_manage_services(rules: list[dict[str, Any]]) -> None:
    """The operator creates, updates, prunes and lists frontend and worker Services."""
    verbs = {
        verb for r in rules if "" in r["apiGroups"] and "services" in r["resources"] for verb in r["verbs"]
    }
    assert {"get", "list", "create", "patch", "delete"} <= verbs, verbs


def test_helm_platform_default_renders_valid_cluster_wide_operator_etcd_and_nats(helm: Path) -> None:
    docs = template(helm, "dynamo-platform", namespace="dynamo-system")
    for doc in docs:
        validate(doc)
    kinds = _by_kind(docs)
    assert {"ClusterRole", "ClusterRoleBinding", "ServiceAccount", "Deployment", "StatefulSet"} <= set(kinds)
    assert "Role" not in kinds
    assert sorted(s["metadata"]["name"] for s in kinds["StatefulSet"]) == [
        "dynamo-platform-etcd",
        "dynamo-platform-nats",
    ]
    op = _operator(docs)
    assert (
        op["command"] == ["python3", "-m", "dynamo.operator"] and "--namespace-restricted" not in op["args"]
    )
    env = {e["name"]: e.get("value") for e in op["env"]}
    assert env["ETCD_ENDPOINTS"] == "http://dynamo-platform-etcd.dynamo-system.svc.cluster.local:2379"
    assert env["NATS_SERVER"] == "nats://dynamo-platform-nats.dynamo-system.svc.cluster.local:4222"
    assert op["image"] == "dynamo:0.1.0-operator"
    (config,) = kinds["ConfigMap"]
    assert "jetstream {" in config["data"]["nats.conf"]
    rules = kinds["ClusterRole"][0]["rules"]
    assert any("dynamographdeployments/status" in r["resources"] for r in rules)
    _assert_may_manage_services(rules)
    # The operator's flags in the chart are flags the operator has.
    from dynamo.operator.config import build_parser

    build_parser().parse_args(op["args"])


def test_helm_platform_namespace_restriction(helm: Path) -> None:
    docs = template(
        helm, "dynamo-platform", "dynamo-operator.namespaceRestriction.enabled=true", namespace="team-a"
    )
    for doc in docs:
        validate(doc)
    kinds = _by_kind(docs)
    assert "ClusterRole" not in kinds and "ClusterRoleBinding" not in kinds
    # The operator's Role; the planner's and the profiler's are bound by the operator per workload.
    (role,) = [r for r in kinds["Role"] if r["metadata"]["name"].endswith("-operator")]
    assert role["metadata"]["namespace"] == "team-a"
    _assert_may_manage_services(role["rules"])
    assert "--namespace-restricted" in _operator(docs)["args"]


def test_helm_platform_with_external_etcd_and_nats(helm: Path) -> None:
    docs = template(
        helm,
        "dynamo-platform",
        "global.etcd.install=false",
        "global.etcd.endpoints=http://etcd.infra:2379",
        "global.nats.install=false",
        "global.nats.server=nats://nats.infra:4222",
        "imagePullSecrets={regcred}",
    )
    assert "StatefulSet" not in _by_kind(docs)
    env = {e["name"]: e.get("value") for e in _operator(docs)["env"]}
    assert (
        env["ETCD_ENDPOINTS"] == "http://etcd.infra:2379" and env["NATS_SERVER"] == "nats://nats.infra:4222"
    )
    (dep,) = [d for d in docs if d["kind"] == "Deployment"]
    assert dep["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "regcred"}]


def test_helm_platform_says_what_is_missing(helm: Path) -> None:
    args = [
        helm,
        "template",
        "x",
        ROOT / "deploy" / "helm" / "dynamo-platform",
        "--set",
        "global.etcd.install=false",
    ]
    proc = run(args, ok=False)
    assert proc.returncode != 0
    assert "global.etcd.endpoints is required when global.etcd.install is false" in proc.stderr


def test_helm_packages_install_as_the_guide_says(helm: Path, tmp_path: Path) -> None:
    """`helm package` gives dynamo-crds-<version>.tgz and dynamo-platform-<version>.tgz, which the
    guide's `helm install dynamo-platform dynamo-platform-${RELEASE_VERSION}.tgz ...` takes."""
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    for chart in ("dynamo-crds", "dynamo-platform"):
        run([helm, "package", ROOT / "deploy" / "helm" / chart, "--destination", tmp_path])
        assert (tmp_path / f"{chart}-{version}.tgz").is_file()
        chart_yaml = yaml.safe_load((ROOT / "deploy" / "helm" / chart / "Chart.yaml").read_text())
        assert chart_yaml["version"] == chart_yaml["appVersion"] == version
    out = run(
        [
            helm,
            "template",
            "dynamo-platform",
            tmp_path / f"dynamo-platform-{version}.tgz",
            "--namespace",
            "dynamo-system",
            "--set",
            "dynamo-operator.namespaceRestriction.enabled=true",
        ]
    ).stdout
    assert "kind: Role\n" in out and "kind: ClusterRole\n" not in out
