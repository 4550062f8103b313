"""Status roll-up: the graph's ``status`` from its children's (pure functions).

``status.services.<name>`` has ``replicas``, ``readyReplicas``, ``updatedReplicas``,
``availableReplicas``; ``status.state`` is ``pending``, ``successful`` or ``failed``;
``status.conditions`` has ``Ready`` with a message that says in words what is missing.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

from dynamo.deploy.spec import Graph

STATE_PENDING = "pending"
STATE_SUCCESSFUL = "successful"
STATE_FAILED = "failed"


def now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(
    type_: str, ok: bool, reason: str, message: str, previous: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """A condition; ``lastTransitionTime`` moves only when ``status`` changes."""
    status = "True" if ok else "False"
    stamp = now()
    for old in previous or []:
        if old.get("type") == type_ and old.get("status") == status and old.get("lastTransitionTime"):
            stamp = old["lastTransitionTime"]
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": stamp,
    }


def workload_counts(obj: Mapping[str, Any] | None, desired: int) -> dict[str, int]:
    """Replica counts from a Deployment's or LeaderWorkerSet's status (zeros when it does not exist)."""
    st = (obj or {}).get("status") or {}
    return {
        "replicas": desired,
        "readyReplicas": int(st.get("readyReplicas") or 0),
        "updatedReplicas": int(st.get("updatedReplicas") or 0),
        "availableReplicas": int(st.get("availableReplicas") or 0),
    }


def workload_failure(obj: Mapping[str, Any] | None) -> str | None:
    """Why a Deployment gave up, if it did (progress deadline exceeded, replica failure)."""
    for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Progressing" and cond.get("status") == "False":
            return cond.get("message") or cond.get("reason") or "not progressing"
        if cond.get("type") == "ReplicaFailure" and cond.get("status") == "True":
            return cond.get("message") or cond.get("reason") or "replica failure"
    return None


def rollup(
    graph: Graph,
    workloads: Mapping[str, Mapping[str, Any] | None],
    previous: Mapping[str, Any] | None = None,
    generation: int | None = None,
) -> dict[str, Any]:
    """The graph's status from its workloads, keyed by service name (``None``: not created yet)."""
    prev_conditions = list((previous or {}).get("conditions") or [])
    services: dict[str, dict[str, int]] = {}
    waiting: list[str] = []
    failures: list[str] = []
    for name, service in graph.services.items():
        obj = workloads.get(name)
        counts = workload_counts(obj, service.replicas)
        services[name] = counts
        failure = workload_failure(obj)
        if failure:
            failures.append(f"{name}: {failure}")
        if obj is None:
            waiting.append(f"{name}: not created yet")
        elif counts["readyReplicas"] < service.replicas or counts["updatedReplicas"] < service.replicas:
            waiting.append(f"{name}: {counts['readyReplicas']}/{service.replicas} ready")
    if failures:
        state, ok, reason, message = STATE_FAILED, False, "ServicesFailed", "; ".join(failures)
    elif waiting:
        state, ok, reason, message = (
            STATE_PENDING,
            False,
            "ServicesNotReady",
            "waiting for " + "; ".join(waiting),
        )
    else:
        state, ok, reason, message = STATE_SUCCESSFUL, True, "AllServicesReady", "all services are ready"
    status: dict[str, Any] = {
        "state": state,
        "services": services,
        "conditions": [condition("Ready", ok, reason, message, prev_conditions)],
    }
    if generation is not None:
        status["observedGeneration"] = generation
    return status


def failed_status(reason: str, message: str, previous: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Status for a graph the operator cannot deploy as written."""
    prev_conditions = list((previous or {}).get("conditions") or [])
    return {
        "state": STATE_FAILED,
        "conditions": [condition("Ready", False, reason, message, prev_conditions)],
    }
