"""The profiler's results, where the planner, the operator and the user read them.

Contract: ``write_results`` puts three files in the output directory: ``planner_profile.json``
(``dynamo.planner.profile.write_profile``: what the planner's SLA target reads), ``selected_config.json``
(the selection, why, its predicted TTFT/ITL, the alternatives and every measurement) and ``dgd.yaml``
(the generated DynamoGraphDeployment); ``write_failure`` writes ``error.txt`` instead. With a
ConfigMap name (a profiling Job in a cluster), ``publish`` also creates or replaces the ConfigMap
``<name>`` in the pod's namespace with the same files as keys (``error.txt`` on failure), owned by
the request when its uid is known: the operator reads it when the Job ends, and the generated
graph's planner mounts it.

Journey: profiling only: sweep -> select -> generate -> **results**.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import yaml

from dynamo.planner.config import PROFILE_FILE_NAME
from dynamo.planner.kube_api import KubeApi, KubeApiError, pod_namespace, resource_path
from dynamo.planner.profile import PerformanceProfile, write_profile

log = logging.getLogger(__name__)

SELECTED_FILE = "selected_config.json"
GRAPH_FILE = "dgd.yaml"
ERROR_FILE = "error.txt"
RESULT_FILES = (PROFILE_FILE_NAME, SELECTED_FILE, GRAPH_FILE)


def write_results(
    out_dir: Path, profile: PerformanceProfile, selected: dict[str, Any], graph: dict[str, Any]
) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    write_profile(out_dir / PROFILE_FILE_NAME, profile)
    (out_dir / SELECTED_FILE).write_text(json.dumps(selected, indent=2, sort_keys=True) + "\n")
    (out_dir / GRAPH_FILE).write_text(yaml.safe_dump(graph, sort_keys=False))
    (out_dir / ERROR_FILE).unlink(missing_ok=True)


def write_failure(out_dir: Path, message: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / ERROR_FILE).write_text(message + "\n")


async def publish(out_dir: Path, name: str, owner: dict[str, Any] | None = None) -> None:
    """Create or replace ConfigMap ``name`` with the files of ``out_dir`` (``KubeApiError`` on failure)."""
    namespace = pod_namespace()
    if not namespace:
        raise ValueError("cannot publish the results: the pod's namespace is unknown (POD_NAMESPACE)")
    data = {f: (out_dir / f).read_text() for f in (*RESULT_FILES, ERROR_FILE) if (out_dir / f).is_file()}
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app.kubernetes.io/part-of": "dynamo"}},
        "data": data,
    }
    if owner and owner.get("uid"):
        body["metadata"]["ownerReferences"] = [owner]
    api = KubeApi.from_environment()
    try:
        path = resource_path("v1", "configmaps", namespace)
        try:
            await api.create(path, body)
        except KubeApiError as exc:
            if exc.status != 409:
                raise
            # A previous attempt's results: replace every key (null removes a key it had).
            old = await api.get(f"{path}/{name}") or {}
            patch = {k: None for k in (old.get("data") or {}) if k not in data} | data
            await api.merge_patch(f"{path}/{name}", {"data": patch})
        log.info("results published in ConfigMap %s/%s (%s)", namespace, name, ", ".join(sorted(data)))
    finally:
        await api.close()
