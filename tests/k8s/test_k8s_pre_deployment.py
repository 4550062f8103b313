"""deploy/pre-deployment/pre_deployment_check.py against a stub kubectl (no cluster can run here):
the stub answers each kubectl call from a JSON file, or fails like an unreachable cluster."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "pre-deployment" / "pre_deployment_check.py"
pytestmark = pytest.mark.timeout(60)

STUB = """#!{python}
import json, os, sys
args = [a for a in sys.argv[1:] if a not in ("-o", "json", "--all-namespaces")]
if args[:1] == ["--context"]:
    args = args[2:]
key = "version" if args == ["version"] else args[1]
path = os.path.join({answers!r}, key + ".json")
if not os.path.exists(path):
    sys.stderr.write("The connection to the server localhost:8080 was refused\\n")
    sys.exit(1)
sys.stdout.write(open(path).read())
"""


def healthy() -> dict[str, Any]:
    return {
        "version": {"serverVersion": {"gitVersion": "v1.31.4"}},
        "crd": {
            "items": [
                {"metadata": {"name": n}}
                for n in ("dynamographdeployments.nvidia.com", "dynamographdeploymentrequests.nvidia.com")
            ]
        },
        "nodes": {
            "items": [
                {"metadata": {"name": "cpu-0"}, "status": {"allocatable": {"cpu": "8"}}},
                {"metadata": {"name": "gpu-0"}, "status": {"allocatable": {"nvidia.com/gpu": "8"}}},
            ]
        },
        "daemonsets": {
            "items": [
                {
                    "metadata": {"name": "nvidia-device-plugin-daemonset", "namespace": "gpu-operator"},
                    "status": {"numberReady": 1, "desiredNumberScheduled": 1},
                }
            ]
        },
        "storageclass": {
            "items": [
                {
                    "metadata": {
                        "name": "standard",
                        "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
                    }
                }
            ]
        },
    }


def check(tmp_path: Path, answers: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    folder = tmp_path / "answers"
    folder.mkdir(exist_ok=True)
    for key, value in answers.items():
        (folder / f"{key}.json").write_text(json.dumps(value))
    stub = tmp_path / "kubectl"
    stub.write_text(STUB.format(python=sys.executable, answers=str(folder)))
    stub.chmod(0o755)
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--kubectl", str(stub), *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_predeploy_stub_kubectl_healthy_cluster_passes(tmp_path: Path) -> None:
    proc = check(tmp_path, healthy(), "--context", "prod")
    assert proc.returncode == 0, proc.stdout
    lines = proc.stdout.splitlines()
    assert "[PASS] cluster: reachable, Kubernetes v1.31.4" in lines
    assert "[PASS] GPU nodes: 1 nodes, 8 GPUs: gpu-0 (8)" in lines
    assert "[PASS] device plugin: gpu-operator/nvidia-device-plugin-daemonset 1/1 ready" in lines
    assert "[PASS] default StorageClass: standard" in lines
    assert lines[-1] == "all 6 checks passed"


def test_predeploy_stub_kubectl_unreachable_cluster(tmp_path: Path) -> None:
    proc = check(tmp_path, {})
    assert proc.returncode == 1
    assert (
        "[FAIL] cluster: cannot reach the API server: The connection to the server localhost:8080 was refused"
        in proc.stdout
    )
    assert proc.stdout.splitlines()[-1] == "1 of 2 checks failed"


def test_predeploy_stub_kubectl_names_each_missing_piece(tmp_path: Path) -> None:
    answers = healthy()
    answers["crd"] = {"items": []}
    answers["nodes"]["items"] = answers["nodes"]["items"][:1]
    answers["daemonsets"]["items"][0]["status"]["numberReady"] = 0
    answers["storageclass"]["items"][0]["metadata"]["annotations"] = {}
    proc = check(tmp_path, answers)
    assert proc.returncode == 1
    out = proc.stdout
    assert (
        "[FAIL] CRDs: missing dynamographdeployments.nvidia.com, dynamographdeploymentrequests.nvidia.com"
        in out
    )
    assert "-> helm install dynamo-crds deploy/helm/dynamo-crds --namespace default" in out
    assert "[FAIL] GPU nodes: none of 1 nodes has allocatable nvidia.com/gpu" in out
    assert "[FAIL] device plugin: gpu-operator/nvidia-device-plugin-daemonset 0/1 ready" in out
    assert "[FAIL] default StorageClass: no default among: standard" in out
    assert out.splitlines()[-1] == "4 of 6 checks failed"


def test_predeploy_stub_kubectl_cpu_only_cluster_only_warns_about_gpus(tmp_path: Path) -> None:
    answers = healthy()
    answers["nodes"]["items"] = answers["nodes"]["items"][:1]
    answers["daemonsets"] = {"items": []}
    proc = check(tmp_path, answers, "--cpu-only")
    assert proc.returncode == 0, proc.stdout
    assert "[WARN] GPU nodes" in proc.stdout and "[WARN] device plugin" in proc.stdout


def test_predeploy_without_kubectl(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--kubectl", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 1 and "[FAIL] kubectl:" in proc.stdout
