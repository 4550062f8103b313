#!/usr/bin/env python3
"""Is this cluster ready for Dynamo? Run before installing the platform (and again before a graph).

    python3 deploy/pre-deployment/pre_deployment_check.py [--kubectl PATH] [--context NAME] [--cpu-only]

Checks, one PASS/WARN/FAIL line each: kubectl can reach the cluster; the Dynamo CRDs are installed;
there are nodes with allocatable nvidia.com/gpu; the NVIDIA device plugin runs; a default
StorageClass exists (etcd and NATS ask for volumes). Exit status 1 if any check FAILs.
Needs only Python 3 and kubectl.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

CRDS = ("dynamographdeployments.nvidia.com", "dynamographdeploymentrequests.nvidia.com")
DEFAULT_CLASS_ANNOTATIONS = (
    "storageclass.kubernetes.io/is-default-class",
    "storageclass.beta.kubernetes.io/is-default-class",
)


@dataclass
class Result:
    status: str  # PASS, WARN or FAIL
    check: str
    detail: str
    hint: str = ""

    def line(self) -> str:
        text = f"[{self.status}] {self.check}: {self.detail}"
        return text + (f"\n       -> {self.hint}" if self.hint else "")


class Kubectl:
    def __init__(self, binary: str, context: str | None) -> None:
        self.binary = binary
        self.context = context

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = [self.binary, *(["--context", self.context] if self.context else []), *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30)

    def json(self, *args: str) -> dict[str, Any]:
        proc = self.run(*args, "-o", "json")
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr.strip() or f"kubectl {' '.join(args)} failed")
        return json.loads(proc.stdout)


def check_cluster(k: Kubectl) -> Result:
    try:
        version = k.json("version")
    except (RuntimeError, ValueError) as exc:
        return Result(
            "FAIL", "cluster", f"cannot reach the API server: {exc}", "check KUBECONFIG / --context"
        )
    server = (version.get("serverVersion") or {}).get("gitVersion")
    if not server:
        return Result(
            "FAIL", "cluster", "kubectl answered without a server version", "check KUBECONFIG / --context"
        )
    return Result("PASS", "cluster", f"reachable, Kubernetes {server}")


def check_crds(k: Kubectl) -> Result:
    try:
        names = {c["metadata"]["name"] for c in k.json("get", "crd").get("items", [])}
    except (RuntimeError, ValueError) as exc:
        return Result("FAIL", "CRDs", f"cannot list CRDs: {exc}")
    missing = [c for c in CRDS if c not in names]
    if missing:
        return Result(
            "FAIL",
            "CRDs",
            "missing " + ", ".join(missing),
            "helm install dynamo-crds deploy/helm/dynamo-crds --namespace default",
        )
    lws = "leaderworkersets.leaderworkerset.x-k8s.io" in names
    note = "" if lws else " (LeaderWorkerSet not installed: multinode services will not run)"
    return Result("PASS", "CRDs", "DynamoGraphDeployment and DynamoGraphDeploymentRequest installed" + note)


def _gpus(node: dict[str, Any]) -> int:
    value = str(((node.get("status") or {}).get("allocatable") or {}).get("nvidia.com/gpu", "0"))
    return int(value) if value.isdigit() else 0


def check_gpu_nodes(k: Kubectl, cpu_only: bool) -> Result:
    try:
        nodes = k.json("get", "nodes").get("items", [])
    except (RuntimeError, ValueError) as exc:
        return Result("FAIL", "GPU nodes", f"cannot list nodes: {exc}")
    gpu_nodes = [(n["metadata"]["name"], _gpus(n)) for n in nodes if _gpus(n) > 0]
    if not gpu_nodes:
        status = "WARN" if cpu_only else "FAIL"
        return Result(
            status,
            "GPU nodes",
            f"none of {len(nodes)} nodes has allocatable nvidia.com/gpu",
            "install the NVIDIA GPU Operator or device plugin; CPU-only: deploy/examples/cpu/agg.yaml",
        )
    total = sum(g for _, g in gpu_nodes)
    listed = ", ".join(f"{n} ({g})" for n, g in gpu_nodes[:5]) + (" ..." if len(gpu_nodes) > 5 else "")
    return Result("PASS", "GPU nodes", f"{len(gpu_nodes)} nodes, {total} GPUs: {listed}")


def check_device_plugin(k: Kubectl, cpu_only: bool) -> Result:
    try:
        sets = k.json("get", "daemonsets", "--all-namespaces").get("items", [])
    except (RuntimeError, ValueError) as exc:
        return Result("FAIL", "device plugin", f"cannot list daemonsets: {exc}")
    plugins = [d for d in sets if "nvidia-device-plugin" in d["metadata"]["name"]]
    if not plugins:
        status = "WARN" if cpu_only else "FAIL"
        return Result(
            status,
            "device plugin",
            "no nvidia-device-plugin DaemonSet found",
            "install the NVIDIA GPU Operator",
        )
    parts, ok = [], True
    for d in plugins:
        st = d.get("status") or {}
        ready, want = int(st.get("numberReady") or 0), int(st.get("desiredNumberScheduled") or 0)
        ok = ok and ready == want and want > 0
        parts.append(f"{d['metadata']['namespace']}/{d['metadata']['name']} {ready}/{want} ready")
    return Result(
        "PASS" if ok else "FAIL",
        "device plugin",
        "; ".join(parts),
        "" if ok else "kubectl describe the DaemonSet",
    )


def check_storage_class(k: Kubectl) -> Result:
    try:
        classes = k.json("get", "storageclass").get("items", [])
    except (RuntimeError, ValueError) as exc:
        return Result("FAIL", "default StorageClass", f"cannot list storage classes: {exc}")
    defaults = [
        c["metadata"]["name"]
        for c in classes
        if any((c["metadata"].get("annotations") or {}).get(a) == "true" for a in DEFAULT_CLASS_ANNOTATIONS)
    ]
    if not defaults:
        names = ", ".join(c["metadata"]["name"] for c in classes) or "none"
        return Result(
            "FAIL",
            "default StorageClass",
            f"no default among: {names}",
            "mark one default, or install with --set etcd.persistence.storageClass=NAME "
            "--set nats.jetstream.fileStorage.storageClass=NAME",
        )
    return Result("PASS", "default StorageClass", ", ".join(defaults))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kubectl", default="kubectl", help="kubectl binary (default: kubectl on PATH)")
    p.add_argument("--context", help="kubeconfig context to check")
    p.add_argument(
        "--cpu-only", action="store_true", help="a cluster without GPUs is fine (GPU checks only warn)"
    )
    args = p.parse_args(argv)
    binary = shutil.which(args.kubectl)
    if binary is None:
        print(Result("FAIL", "kubectl", f"{args.kubectl} not found on PATH", "install kubectl").line())
        return 1
    k = Kubectl(binary, args.context)
    results = [Result("PASS", "kubectl", binary), check_cluster(k)]
    if results[-1].status == "PASS":
        results += [
            check_crds(k),
            check_gpu_nodes(k, args.cpu_only),
            check_device_plugin(k, args.cpu_only),
            check_storage_class(k),
        ]
    for r in results:
        print(r.line())
    failed = [r for r in results if r.status == "FAIL"]
    if failed:
        print(f"\n{len(failed)} of {len(results)} checks failed")
    else:
        print(f"\nall {len(results)} checks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
