"""From a request and a selected configuration to the DynamoGraphDeployment that serves it.

Contract: ``generate_graph`` returns a DGD (``nvidia.com/v1alpha1``, a plain dict) in the examples'
pattern: a ``Frontend`` (``DYN_ROUTER_MODE=kv`` with ``features.kvRouter``), the worker services of
the selection (aggregated: ``<Prefix>DecodeWorker``; disaggregated: also ``<Prefix>PrefillWorker``
with ``subComponentType``), each with the selected batch flag and replica count, and with
``features.planner`` a ``Planner`` service (``componentType: planner``) whose ``--config`` is the
request's PlannerConfig completed with what profiling knows: ``backend``, ``mode``, the SLA, the
GPU budget and ``profile_results_dir``. On a cluster the profile comes from the ConfigMap the
profiling Job wrote (mounted at ``/workspace/profiling_results``); locally from a directory.
``overrides.dgd`` is merged last (JSON merge patch; it may only touch services the graph has).
``measure_graph`` is the one-worker graph the profiler runs to measure a candidate.

Journey: profiling -> **generated DGD** -> operator or local runner.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from dynamo.deploy.request import DeploymentRequest
from dynamo.deploy.spec import API_VERSION, DGD_KIND, SpecError
from dynamo.profiler.engines import Candidate, Engine

PROFILE_MOUNT = "/workspace/profiling_results"
PROFILE_VOLUME = "planner-profile-data"
DEFAULT_IMAGE = "dynamo:0.1.0-{framework}"


def configmap_name(request: DeploymentRequest) -> str:
    """The ConfigMap a profiling Job writes its results into (and a generated planner reads)."""
    return f"{request.name}-profile"


def _readiness() -> dict[str, Any]:
    return {
        "exec": {"command": ["/bin/sh", "-c", 'grep "Worker.*initialized" /tmp/worker.log']},
        "periodSeconds": 5,
    }


def _worker(
    request: DeploymentRequest,
    eng: Engine,
    role: str,
    candidate: Candidate,
    replicas: int,
    image: str,
    namespace: str,
) -> dict[str, Any]:
    service: dict[str, Any] = {
        "dynamoNamespace": namespace,
        "componentType": "worker",
        "replicas": replicas,
    }
    if role != "agg":
        service["subComponentType"] = role
    if eng.backend != "mocker":
        service["envFromSecret"] = "hf-token-secret"
        service["readinessProbe"] = _readiness()
    envs = eng.worker_env()
    if envs:
        service["envs"] = envs
    if eng.device == "gpu":
        service["resources"] = {"limits": {"gpu": "1"}}
    elif eng.device == "cpu":
        service["resources"] = {"requests": {"cpu": "2", "memory": "6Gi"}, "limits": {"memory": "8Gi"}}
        service["sharedMemory"] = {"size": "1Gi"}
    service["extraPodSpec"] = {
        "mainContainer": {
            "image": request.workers_image or image,
            "command": ["/bin/bash", "-c"],
            "args": [eng.worker_script(request, role, candidate)],
        }
    }
    return service


def planner_config(
    request: DeploymentRequest, mode: str, profile_dir: str, gpu_budget: int | None
) -> dict[str, Any]:
    """``features.planner`` completed with what profiling knows (a field the request set wins;
    one that contradicts the request's SLA is an error, not silently replaced)."""
    given = dict(request.planner or {})
    for field, value in (("ttft_ms", request.ttft_ms), ("itl_ms", request.itl_ms)):
        alias = field.removesuffix("_ms")
        mine = given.get(field, given.get(alias))
        if mine is not None and float(mine) != float(value):
            raise SpecError(
                f"spec.features.planner.{field} ({mine}) differs from the request's SLA ({value}); "
                "leave it out (the SLA is passed on) or make them equal"
            )
    config = {
        "environment": "kubernetes",
        "backend": "mocker" if request.mocker else request.backend,
        "mode": mode,
        "optimization_target": "sla",
        "ttft_ms": request.ttft_ms,
        "itl_ms": request.itl_ms,
        "profile_results_dir": profile_dir,
    }
    if gpu_budget is not None:
        config["max_gpu_budget"] = gpu_budget
    config.update({k: v for k, v in given.items() if k not in ("ttft", "itl")})
    return config


def generate_graph(
    request: DeploymentRequest,
    eng: Engine,
    *,
    mode: str,
    prefill: tuple[Candidate, int] | None,
    decode: tuple[Candidate, int],
    profile_dir: str | None = None,
    image: str | None = None,
) -> dict[str, Any]:
    """The DGD for a selection: ``decode`` (candidate, replicas) is the aggregated workers in
    ``agg`` mode; ``prefill`` is set in ``disagg`` mode. ``profile_dir``: a local directory for the
    planner's profile (None: the profiling Job's ConfigMap, mounted)."""
    name = request.graph_name
    img = request.image or image or DEFAULT_IMAGE.format(framework=request.framework)
    services: dict[str, Any] = {
        "Frontend": {
            "dynamoNamespace": name,
            "componentType": "frontend",
            "replicas": 1,
            "extraPodSpec": {
                "mainContainer": {"image": img, "command": ["python3", "-m", "dynamo.frontend"]}
            },
        }
    }
    if request.kv_router:
        services["Frontend"]["envs"] = [{"name": "DYN_ROUTER_MODE", "value": "kv"}]
    if request.planner is not None:
        budget = request.total_gpus
        config = planner_config(request, mode, profile_dir or PROFILE_MOUNT, budget)
        main: dict[str, Any] = {
            "image": img,
            "command": ["python3", "-m", "dynamo.planner"],
            "args": ["--config", json.dumps(config, sort_keys=True)],
        }
        planner: dict[str, Any] = {
            "dynamoNamespace": name,
            "componentType": "planner",
            "replicas": 1,
            "extraPodSpec": {"mainContainer": main},
        }
        if profile_dir is None:
            main["volumeMounts"] = [{"name": PROFILE_VOLUME, "mountPath": PROFILE_MOUNT, "readOnly": True}]
            planner["extraPodSpec"]["volumes"] = [
                {"name": PROFILE_VOLUME, "configMap": {"name": configmap_name(request)}}
            ]
        services["Planner"] = planner
    candidate, replicas = decode
    role = "decode" if mode == "disagg" else "agg"
    services[eng.service_name("decode")] = _worker(request, eng, role, candidate, replicas, img, name)
    if mode == "disagg":
        if prefill is None:
            raise ValueError("a disaggregated graph needs a prefill selection")
        p_candidate, p_replicas = prefill
        services[eng.service_name("prefill")] = _worker(
            request, eng, "prefill", p_candidate, p_replicas, img, name
        )
    graph: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": DGD_KIND,
        "metadata": {"name": name},
        "spec": {"backendFramework": request.backend, "services": services},
    }
    if request.namespace:
        graph["metadata"]["namespace"] = request.namespace
    if request.dgd_labels:
        graph["metadata"]["labels"] = dict(request.dgd_labels)
    if request.dgd_annotations:
        graph["metadata"]["annotations"] = dict(request.dgd_annotations)
    if request.dgd_overrides:
        graph = apply_overrides(graph, request.dgd_overrides)
    return graph


def measure_graph(request: DeploymentRequest, eng: Engine, candidate: Candidate, name: str) -> dict[str, Any]:
    """A frontend and one aggregated worker of ``candidate``: what the profiler measures."""
    bare = replace(
        request,
        planner=None,
        kv_router=False,
        dgd_overrides=None,
        dgd_name=name,
        namespace=None,
        dgd_labels={},
        dgd_annotations={},
    )
    return generate_graph(
        bare,
        eng,
        mode="agg",
        prefill=None,
        decode=(candidate, 1),
    )


def merge(base: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch of ``patch`` onto ``base`` (a copy; ``None`` deletes)."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    out = dict(base) if isinstance(base, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge(out.get(key), value)
    return out


def apply_overrides(graph: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``overrides.dgd`` onto the generated graph: its services must be the graph's; its
    ``apiVersion``/``kind``, when given, must be a DGD's."""
    kind = overrides.get("kind")
    if kind is not None and kind != DGD_KIND:
        raise SpecError(f"spec.overrides.dgd.kind must be {DGD_KIND}, got {kind!r}")
    services = ((overrides.get("spec") or {}).get("services")) or {}
    unknown = sorted(set(services) - set(graph["spec"]["services"]))
    if unknown:
        raise SpecError(
            f"spec.overrides.dgd names services the generated graph does not have: {', '.join(unknown)} "
            f"(it has {', '.join(sorted(graph['spec']['services']))})"
        )
    patch = {k: v for k, v in overrides.items() if k not in ("apiVersion", "kind")}
    meta = dict(patch.get("metadata") or {})
    patch["metadata"] = {k: v for k, v in meta.items() if k in ("name", "labels", "annotations")}
    merged: dict[str, Any] = merge(graph, patch)
    return merged
