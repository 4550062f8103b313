"""DynamoGraphDeploymentRequest: an SLA-driven request for a graph.

Profiling (which would fill ``status.generatedDeployment``) is not implemented yet, so a request
stays ``Pending`` with a ``Profiled=False`` condition that says so, and no numbers are invented."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dynamo.operator.status import condition

BACKENDS = ("vllm", "sglang", "trtllm")
PHASE_PENDING = "Pending"
PHASE_FAILED = "Failed"

NOT_IMPLEMENTED = (
    "automatic profiling is not available in this release, so no DynamoGraphDeployment was generated; "
    "start from an example in deploy/examples/{backend}/ and size it by hand"
)


def validate_request(spec: Mapping[str, Any]) -> list[str]:
    """Problems with a request's spec, in words (the CRD schema checks the same on a cluster)."""
    problems = []
    if not spec.get("model"):
        problems.append("spec.model is required (a Hugging Face id or a path)")
    if spec.get("backend") not in BACKENDS:
        problems.append(f"spec.backend must be one of {', '.join(BACKENDS)}, got {spec.get('backend')!r}")
    sla = spec.get("sla") or {}
    for key in ("ttft", "itl"):
        value = sla.get(key)
        if value is not None and (not isinstance(value, int | float) or value <= 0):
            problems.append(f"spec.sla.{key} must be a positive number of milliseconds, got {value!r}")
    return problems


def request_status(spec: Mapping[str, Any], previous: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The status the operator writes for a request."""
    prev = list((previous or {}).get("conditions") or [])
    problems = validate_request(spec)
    if problems:
        return {
            "phase": PHASE_FAILED,
            "conditions": [condition("Validated", False, "InvalidSpec", "; ".join(problems), prev)],
        }
    backend = str(spec.get("backend"))
    return {
        "phase": PHASE_PENDING,
        "backend": backend,
        "conditions": [
            condition("Validated", True, "SpecValid", "the request is valid", prev),
            condition(
                "Profiled", False, "ProfilingNotImplemented", NOT_IMPLEMENTED.format(backend=backend), prev
            ),
        ],
    }
