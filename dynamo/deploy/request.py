"""The DynamoGraphDeploymentRequest (DGDR) as typed Python: "serve this model with this backend
within these latencies". One parser for both shapes the CRD serves, shared by the operator, the
profiler (``python3 -m dynamo.profiler --request``) and the local runner (``python3 -m dynamo.deploy
run dgdr.yaml``):

- ``nvidia.com/v1beta1`` (the reference 1.6.1's fields): ``spec.model``, ``backend``, ``image``,
  ``workload.{isl,osl,concurrency,requestRate}``, ``sla.{ttft,itl,optimizationType}``,
  ``features.{planner,kvRouter,mocker}``, ``hardware.totalGpus``, ``searchStrategy``, ``autoApply``,
  ``overrides.{profilingJob,dgd,trustRemoteCode}``;
- ``nvidia.com/v1alpha1`` (ours before): ``sla.{ttft,itl,isl,osl}``, ``useMocker``,
  ``deploymentOverrides.{name,namespace,labels,annotations,workersImage}``, ``autoApply``.

Contract: every field of either shape is either honoured or refused by name (``SpecError`` listing
all problems); none is silently dropped. A field written in both shapes must agree. Refused (not
built here): ``backend: auto``, ``sla.e2eLatency``, ``hardware`` other than ``totalGpus``,
``gpuType``, ``modelCache``, ``runtimeVersionOverride``, a non-empty ``profilingConfig``, and a
``deploymentOverrides.namespace`` other than the request's own. Defaults are the reference's: ISL
4000, OSL 1000, TTFT 2000 ms, ITL 30 ms, ``searchStrategy: rapid``; ``autoApply`` defaults to true
in v1beta1 and false in v1alpha1 (each version's own default).

Journey: before any request is served: DGDR -> profile -> generated DGD -> deployed graph.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dynamo.deploy.spec import GROUP, SpecError, dns_label

DGDR_KIND = "DynamoGraphDeploymentRequest"
V1ALPHA1 = f"{GROUP}/v1alpha1"
V1BETA1 = f"{GROUP}/v1beta1"
BACKENDS = ("vllm", "sglang", "trtllm")
DEFAULTS = {"isl": 4000, "osl": 1000, "ttft": 2000.0, "itl": 30.0}

_V1BETA1_FIELDS = {
    "model",
    "backend",
    "image",
    "workload",
    "sla",
    "features",
    "hardware",
    "searchStrategy",
    "autoApply",
    "overrides",
    "modelCache",
    "runtimeVersionOverride",
}
_V1ALPHA1_FIELDS = {"useMocker", "gpuType", "profilingConfig", "deploymentOverrides"}
_SLA_FIELDS = {"ttft", "itl", "isl", "osl", "optimizationType", "e2eLatency"}


@dataclass(frozen=True)
class DeploymentRequest:
    """What a DGDR asks for, in one shape whichever version it was written in."""

    name: str
    namespace: str | None
    model: str
    backend: str
    mocker: bool = False
    image: str | None = None
    isl: int = DEFAULTS["isl"]  # type: ignore[assignment]
    osl: int = DEFAULTS["osl"]  # type: ignore[assignment]
    concurrency: float | None = None
    request_rate: float | None = None
    ttft_ms: float = DEFAULTS["ttft"]
    itl_ms: float = DEFAULTS["itl"]
    optimization: str = "throughput"  # throughput | latency
    planner: dict[str, Any] | None = None  # features.planner: PlannerConfig fields, passed through
    kv_router: bool = False
    search_strategy: str = "rapid"  # rapid | thorough
    auto_apply: bool = True
    total_gpus: int | None = None
    profiling_job: dict[str, Any] | None = None  # overrides.profilingJob (merged into the Job spec)
    dgd_overrides: dict[str, Any] | None = None  # overrides.dgd (merged into the generated DGD)
    trust_remote_code: bool = False
    dgd_name: str | None = None
    dgd_labels: dict[str, str] = field(default_factory=dict)
    dgd_annotations: dict[str, str] = field(default_factory=dict)
    workers_image: str | None = None
    api_version: str = V1BETA1

    @property
    def framework(self) -> str:
        """The image flavour of ``backend`` (container/build.sh's tags)."""
        return {"trtllm": "tensorrtllm"}.get(self.backend, self.backend)

    @property
    def graph_name(self) -> str:
        """The generated DGD's name: the override's, else the request's."""
        return self.dgd_name or dns_label(self.name)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> DeploymentRequest:
        return cls(**json.loads(text))


def _number(value: Any, where: str, problems: list[str], *, integer: bool = False) -> float | None:
    if value is None:
        return None
    ok = isinstance(value, int | float) and not isinstance(value, bool) and value > 0
    if ok and integer and float(value) != int(value):
        ok = False
    if not ok:
        kind = "whole number" if integer else "number"
        problems.append(f"{where} must be a positive {kind}, got {value!r}")
        return None
    return float(value)


def _map(value: Any, where: str, problems: list[str]) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        problems.append(f"{where} must be an object")
        return {}
    return dict(value)


def _agree(values: dict[str, Any], what: str, problems: list[str]) -> Any:
    """One value written in one or both shapes (they must agree)."""
    given = {k: v for k, v in values.items() if v is not None}
    if len({json.dumps(v) for v in given.values()}) > 1:
        problems.append(
            f"{what} is written twice with different values: "
            + ", ".join(f"{k}={v!r}" for k, v in given.items())
        )
    return next(iter(given.values()), None)


def parse_request(obj: Mapping[str, Any]) -> DeploymentRequest:
    """Parse a DGDR object of either version (``SpecError`` listing every problem)."""
    if obj.get("kind") not in (None, DGDR_KIND):
        raise SpecError(f"expected kind {DGDR_KIND}, got {obj.get('kind')!r}")
    api_version = obj.get("apiVersion") or V1BETA1
    if api_version not in (V1ALPHA1, V1BETA1):
        raise SpecError(f"apiVersion must be {V1BETA1} or {V1ALPHA1}, got {api_version!r}")
    meta = obj.get("metadata") or {}
    spec = dict(obj.get("spec") or {})
    problems: list[str] = []
    if not meta.get("name"):
        problems.append("metadata.name is required")
    unknown = sorted(set(spec) - _V1BETA1_FIELDS - _V1ALPHA1_FIELDS)
    if unknown:
        problems.append(f"spec has unknown fields: {', '.join(unknown)}")

    model = spec.get("model")
    if not isinstance(model, str) or not model:
        problems.append("spec.model is required (a Hugging Face id or a path)")
    backend = spec.get("backend", "auto")
    if backend == "auto":
        problems.append("spec.backend 'auto' (choose one for me) is not built: name vllm, sglang or trtllm")
    elif backend not in BACKENDS:
        problems.append(f"spec.backend must be one of {', '.join(BACKENDS)}, got {backend!r}")

    sla = _map(spec.get("sla"), "spec.sla", problems)
    workload = _map(spec.get("workload"), "spec.workload", problems)
    features = _map(spec.get("features"), "spec.features", problems)
    hardware = _map(spec.get("hardware"), "spec.hardware", problems)
    overrides = _map(spec.get("overrides"), "spec.overrides", problems)
    legacy = _map(spec.get("deploymentOverrides"), "spec.deploymentOverrides", problems)
    for key in sorted(set(sla) - _SLA_FIELDS):
        problems.append(
            f"spec.sla.{key} is not a field (sla has ttft, itl, optimizationType; isl/osl in v1alpha1)"
        )
    for key in sorted(set(workload) - {"isl", "osl", "concurrency", "requestRate"}):
        problems.append(f"spec.workload.{key} is not a field (isl, osl, concurrency, requestRate)")
    for key in sorted(set(features) - {"planner", "kvRouter", "mocker"}):
        problems.append(f"spec.features.{key} is not a field (planner, kvRouter, mocker)")
    for key in sorted(set(overrides) - {"profilingJob", "dgd", "trustRemoteCode"}):
        problems.append(f"spec.overrides.{key} is not a field (profilingJob, dgd, trustRemoteCode)")

    # -- what is not built: refused by name -------------------------------------------------------
    if sla.get("e2eLatency") is not None:
        problems.append("spec.sla.e2eLatency is not built: give sla.ttft and sla.itl")
    for key in sorted(set(hardware) - {"totalGpus"}):
        problems.append(
            f"spec.hardware.{key} is not built (profiling measures the node its Job runs on; place it "
            "with overrides.profilingJob); only hardware.totalGpus (the GPU budget) is"
        )
    if spec.get("gpuType"):
        problems.append("spec.gpuType is not built (profiling measures the node its Job runs on)")
    for key in ("modelCache", "runtimeVersionOverride"):
        if spec.get(key):
            problems.append(f"spec.{key} is not built")
    if spec.get("profilingConfig"):
        problems.append(
            "spec.profilingConfig is not built: use searchStrategy (rapid or thorough) and the workload fields"
        )

    # -- the SLA and the workload, from either shape --------------------------------------------
    ttft = _number(sla.get("ttft"), "spec.sla.ttft", problems)
    itl = _number(sla.get("itl"), "spec.sla.itl", problems)
    isl = _agree(
        {
            "spec.workload.isl": _number(workload.get("isl"), "spec.workload.isl", problems, integer=True),
            "spec.sla.isl": _number(sla.get("isl"), "spec.sla.isl", problems, integer=True),
        },
        "the input sequence length",
        problems,
    )
    osl = _agree(
        {
            "spec.workload.osl": _number(workload.get("osl"), "spec.workload.osl", problems, integer=True),
            "spec.sla.osl": _number(sla.get("osl"), "spec.sla.osl", problems, integer=True),
        },
        "the output sequence length",
        problems,
    )
    concurrency = _number(workload.get("concurrency"), "spec.workload.concurrency", problems)
    rate = _number(workload.get("requestRate"), "spec.workload.requestRate", problems)
    if concurrency is not None and rate is not None:
        problems.append(
            "spec.workload.concurrency and spec.workload.requestRate exclude each other: give one"
        )
    optimization = sla.get("optimizationType") or "throughput"
    if optimization not in ("throughput", "latency"):
        problems.append(f"spec.sla.optimizationType must be latency or throughput, got {optimization!r}")

    # -- features --------------------------------------------------------------------------------
    planner = features.get("planner")
    if planner is not None and not isinstance(planner, Mapping):
        problems.append("spec.features.planner must be an object of PlannerConfig fields")
    mocker_feature = _map(features.get("mocker"), "spec.features.mocker", problems).get("enabled")
    mocker = _agree(
        {"spec.features.mocker.enabled": mocker_feature, "spec.useMocker": spec.get("useMocker")},
        "the mocker switch",
        problems,
    )
    kv_router = bool(_map(features.get("kvRouter"), "spec.features.kvRouter", problems).get("enabled"))
    strategy = spec.get("searchStrategy") or "rapid"
    if strategy not in ("rapid", "thorough"):
        problems.append(f"spec.searchStrategy must be rapid or thorough, got {strategy!r}")
    total_gpus = hardware.get("totalGpus")
    if total_gpus is not None and (
        not isinstance(total_gpus, int) or isinstance(total_gpus, bool) or total_gpus < 1
    ):
        problems.append(f"spec.hardware.totalGpus must be a whole number >= 1, got {total_gpus!r}")

    # -- the generated graph -----------------------------------------------------------------------
    dgd = overrides.get("dgd")
    if dgd is not None and not isinstance(dgd, Mapping):
        problems.append("spec.overrides.dgd must be a (partial) DynamoGraphDeployment object")
    job = overrides.get("profilingJob")
    if job is not None and not isinstance(job, Mapping):
        problems.append("spec.overrides.profilingJob must be a (partial) Job spec")
    namespace = meta.get("namespace")
    if legacy.get("namespace") and legacy["namespace"] != namespace:
        problems.append(
            f"spec.deploymentOverrides.namespace {legacy['namespace']!r} differs from the request's namespace "
            f"{namespace!r}: the graph is created beside its request"
        )
    for key in sorted(set(legacy) - {"name", "namespace", "labels", "annotations", "workersImage"}):
        problems.append(f"spec.deploymentOverrides.{key} is not a field")
    dgd_name = _agree(
        {
            "spec.deploymentOverrides.name": legacy.get("name"),
            "spec.overrides.dgd.metadata.name": ((dgd or {}).get("metadata") or {}).get("name")
            if isinstance(dgd, Mapping)
            else None,
        },
        "the generated graph's name",
        problems,
    )
    auto_apply = spec.get("autoApply")
    if auto_apply is None:
        auto_apply = api_version == V1BETA1

    if problems:
        raise SpecError("; ".join(problems))
    return DeploymentRequest(
        name=str(meta["name"]),
        namespace=namespace,
        model=str(model),
        backend=str(backend),
        mocker=bool(mocker),
        image=spec.get("image") or None,
        isl=int(isl or DEFAULTS["isl"]),
        osl=int(osl or DEFAULTS["osl"]),
        concurrency=concurrency,
        request_rate=rate,
        ttft_ms=ttft if ttft is not None else DEFAULTS["ttft"],
        itl_ms=itl if itl is not None else DEFAULTS["itl"],
        optimization=str(optimization),
        planner=dict(planner) if isinstance(planner, Mapping) else None,
        kv_router=kv_router,
        search_strategy=str(strategy),
        auto_apply=bool(auto_apply),
        total_gpus=total_gpus,
        profiling_job=dict(job) if isinstance(job, Mapping) else None,
        dgd_overrides=dict(dgd) if isinstance(dgd, Mapping) else None,
        trust_remote_code=bool(overrides.get("trustRemoteCode")),
        dgd_name=dgd_name,
        dgd_labels={str(k): str(v) for k, v in (legacy.get("labels") or {}).items()},
        dgd_annotations={str(k): str(v) for k, v in (legacy.get("annotations") or {}).items()},
        workers_image=legacy.get("workersImage") or None,
        api_version=str(api_version),
    )


def is_request_file(path: str | Path) -> bool:
    """Whether the YAML file at ``path`` holds a DGDR (and no DGD)."""
    docs = [d for d in yaml.safe_load_all(Path(path).read_text()) if isinstance(d, Mapping)]
    return any(d.get("kind") == DGDR_KIND for d in docs)


def load_request_file(path: str | Path) -> DeploymentRequest:
    """The one DGDR in a YAML file."""
    docs = [d for d in yaml.safe_load_all(Path(path).read_text()) if isinstance(d, Mapping)]
    requests = [d for d in docs if d.get("kind") == DGDR_KIND]
    if len(requests) != 1:
        raise SpecError(f"{path}: expected one {DGDR_KIND}, found {len(requests)}")
    return parse_request(requests[0])
