"""DynamoGraphDeploymentRequest: from an SLA to a deployed graph, one idempotent step at a time.

``advance`` reads the request, its profiling Job, the Job's results ConfigMap and the generated
graph, and returns the request's new status (it may create the Job or the graph on the way):

    Pending -> Profiling (a Job runs ``python3 -m dynamo.profiler`` on the request; the operator
               binds the chart's profiler role to its account so it can write ConfigMap
               ``<request>-profile``)
            -> Ready (the Job succeeded: ``profilingResults.selectedConfig`` is the generated DGD,
               ``profilingResults.selection`` why it was chosen, ``dgdName`` its name)
            -> Deploying (``autoApply``: the DGD was created, labelled with the request's name)
            -> Deployed (the DGD reports ``successful``)
    or Failed, with a condition in words (an invalid request, no image, the profiler's own error
    from ``error.txt``, a graph of that name that is not this request's).

Conditions: ``Validated``, ``Profiled``, ``Deployed``. The generated DGD is applied once per
request generation (a planner then owns its replicas); a spec change starts a new Job. The Job's
pod runs the engines it measures itself (one at a time), so it asks for one GPU unless the request
is for the mocker or its image is a CPU build.

Journey: before serving: request -> **profiling Job -> generated DGD** -> the DGD's reconcile.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Mapping
from typing import Any

import yaml

from dynamo.deploy.request import V1BETA1, DeploymentRequest, parse_request
from dynamo.deploy.spec import API_VERSION, DGD_PLURAL, SpecError
from dynamo.operator.apply import apply
from dynamo.operator.config import OperatorConfig
from dynamo.operator.kube import ApiError, KubeClient, resource_path
from dynamo.operator.render import LABEL_MANAGED_BY, MANAGED_BY, RBAC_API_VERSION
from dynamo.operator.status import condition
from dynamo.profiler.generate import configmap_name, merge

log = logging.getLogger(__name__)

PHASE_PENDING = "Pending"
PHASE_PROFILING = "Profiling"
PHASE_READY = "Ready"
PHASE_DEPLOYING = "Deploying"
PHASE_DEPLOYED = "Deployed"
PHASE_FAILED = "Failed"
LABEL_REQUEST = "nvidia.com/dynamo-graph-deployment-request-name"
ANNOTATION_GENERATION = "nvidia.com/dynamo-request-generation"
REQUEST_ENV = "DYN_PROFILER_REQUEST"
RESULTS_DIR = "/tmp/profiling_results"
GPU_RESOURCE = "nvidia.com/gpu"
# Status fields that stay until a new generation is profiled.
_STICKY = ("backend", "profilingJobName", "dgdName", "profilingResults", "deploymentInfo")


def job_name(name: str, generation: int) -> str:
    return f"{name}-profile-{generation}"[:63].rstrip("-")


def profiler_account(name: str) -> str:
    return f"{name}-profiler"[:63].rstrip("-")


def _owner(obj: Mapping[str, Any]) -> dict[str, Any]:
    meta = obj["metadata"]
    return {
        "apiVersion": obj.get("apiVersion") or V1BETA1,
        "kind": "DynamoGraphDeploymentRequest",
        "name": meta["name"],
        "uid": meta.get("uid", ""),
        "controller": True,
        "blockOwnerDeletion": True,
    }


def profiling_image(request: DeploymentRequest, config: OperatorConfig) -> str:
    """``spec.image``, else the operator's ``--profiler-image`` for the backend (``SpecError`` when neither)."""
    if request.image:
        return request.image
    if config.profiler_image:
        return config.profiler_image.replace("{framework}", request.framework)
    raise SpecError(
        "spec.image is not set and the operator has no default profiling image (--profiler-image, which the "
        "dynamo-platform chart sets): name the image to profile with"
    )


def render_profiling(
    obj: Mapping[str, Any], request: DeploymentRequest, image: str, config: OperatorConfig
) -> list[dict[str, Any]]:
    """The profiling Job of the request's current generation, with its account and role binding."""
    meta = obj["metadata"]
    namespace, name, generation = meta["namespace"], meta["name"], int(meta.get("generation") or 1)
    labels = {LABEL_REQUEST: name, LABEL_MANAGED_BY: MANAGED_BY}
    base_meta = {"namespace": namespace, "labels": labels, "ownerReferences": [_owner(obj)]}
    objects: list[dict[str, Any]] = []
    pod: dict[str, Any] = {"restartPolicy": "Never"}
    if config.profiler_role is not None:
        kind, role = config.profiler_role
        account = profiler_account(name)
        objects.append(
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": account, **base_meta}}
        )
        objects.append(
            {
                "apiVersion": RBAC_API_VERSION,
                "kind": "RoleBinding",
                "metadata": {"name": account, **copy.deepcopy(base_meta)},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": role},
                "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}],
            }
        )
        pod["serviceAccountName"] = account
    spec = dict(obj.get("spec") or {})
    spec["image"] = image
    passed = {
        "apiVersion": obj.get("apiVersion") or V1BETA1,
        "kind": "DynamoGraphDeploymentRequest",
        "metadata": {"name": name, "namespace": namespace, "uid": meta.get("uid", "")},
        "spec": spec,
    }
    resources: dict[str, Any] = {"requests": {"cpu": "1", "memory": "2Gi"}}
    if needs_gpu(request, image):
        resources["limits"] = {GPU_RESOURCE: "1"}
    container = {
        "name": "profiler",
        "image": image,
        "command": ["python3", "-m", "dynamo.profiler"],
        "args": [
            "--request",
            f"$({REQUEST_ENV})",
            "--output-dir",
            RESULTS_DIR,
            "--publish-configmap",
            configmap_name(request),
        ],
        "env": [
            {"name": REQUEST_ENV, "value": json.dumps(passed, sort_keys=True)},
            {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        ],
        "resources": resources,
    }
    if not request.mocker:
        container["envFrom"] = [{"secretRef": {"name": "hf-token-secret", "optional": True}}]
    pod["containers"] = [container]
    job_spec: dict[str, Any] = {"backoffLimit": 0, "template": {"metadata": {"labels": labels}, "spec": pod}}
    if request.profiling_job:
        job_spec = merge(job_spec, request.profiling_job)
    job_meta = {"name": job_name(name, generation), **copy.deepcopy(base_meta)}
    job_meta["annotations"] = {ANNOTATION_GENERATION: str(generation)}
    objects.append({"apiVersion": "batch/v1", "kind": "Job", "metadata": job_meta, "spec": job_spec})
    return objects


def needs_gpu(request: DeploymentRequest, image: str) -> bool:
    """A profiling pod runs the engines it measures: one GPU, unless they are the mocker or the
    image is a CPU build (a tag ending in ``-cpu``)."""
    return not request.mocker and not image.rsplit(":", 1)[-1].endswith("-cpu")


def job_outcome(job: Mapping[str, Any] | None) -> str | None:
    """``succeeded``, ``failed`` (with the Job controller's words after a colon), or None (running)."""
    status = (job or {}).get("status") or {}
    for cond in status.get("conditions") or []:
        if cond.get("status") != "True":
            continue
        if cond.get("type") == "Complete":
            return "succeeded"
        if cond.get("type") == "Failed":
            return f"failed: {cond.get('message') or cond.get('reason') or 'the Job failed'}"
    if int(status.get("succeeded") or 0) > 0:
        return "succeeded"
    if int(status.get("failed") or 0) > 0:
        return "failed: the profiling pod failed"
    return None


def _validate_planner(request: DeploymentRequest) -> None:
    if request.planner is None:
        return
    from dynamo.planner.config import ConfigError, PlannerConfig, check_buildable

    try:
        config = PlannerConfig.model_validate({"namespace": request.graph_name, **request.planner})
        check_buildable(config)
    except (ConfigError, ValueError) as exc:
        raise SpecError(f"spec.features.planner: {exc}") from None


class RequestStep:
    """One ``advance`` of one request: its status so far and the client."""

    def __init__(
        self, obj: Mapping[str, Any], client: KubeClient, config: OperatorConfig, logger: logging.Logger
    ) -> None:
        self.obj = obj
        self.client = client
        self.config = config
        self.logger = logger
        self.meta = obj["metadata"]
        self.namespace = str(self.meta.get("namespace") or "default")
        self.name = str(self.meta["name"])
        self.generation = int(self.meta.get("generation") or 1)
        self.previous: dict[str, Any] = dict(obj.get("status") or {})
        self.prev_conditions = list(self.previous.get("conditions") or [])

    def cond(self, type_: str, ok: bool, reason: str, message: str) -> dict[str, Any]:
        return condition(type_, ok, reason, message, self.prev_conditions)

    def status(
        self, phase: str, *conds: dict[str, Any], fresh: bool = False, **fields: Any
    ) -> dict[str, Any]:
        """The new status: the previous one's fields (none when ``fresh``: a new generation is
        being profiled) with ``fields``, ``phase`` and ``conds`` (conditions of other types kept)."""
        given = {c["type"] for c in conds}
        prev = [] if fresh else self.prev_conditions
        kept = [c for c in prev if c.get("type") not in given]
        order = {"Validated": 0, "Profiled": 1, "Deployed": 2}
        conditions = sorted([*kept, *conds], key=lambda c: order.get(c["type"], 9))
        out = {} if fresh else {k: v for k, v in self.previous.items() if k in _STICKY}
        out.update({"phase": phase, "observedGeneration": self.generation, "conditions": conditions})
        out.update(fields)
        return out

    def failed(self, type_: str, reason: str, message: str, **fields: Any) -> dict[str, Any]:
        self.logger.warning("request %s/%s: %s: %s", self.namespace, self.name, reason, message)
        return self.status(PHASE_FAILED, self.cond(type_, False, reason, message), **fields)

    async def run(self) -> dict[str, Any]:
        try:
            request = parse_request(self.obj)
            _validate_planner(request)
            image = profiling_image(request, self.config)
        except SpecError as exc:
            return self.failed("Validated", "InvalidSpec", str(exc))
        valid = self.cond("Validated", True, "SpecValid", "the request is valid")
        same_generation = self.previous.get("observedGeneration") == self.generation
        phase = self.previous.get("phase")
        deployed: dict[str, Any] = next((c for c in self.prev_conditions if c.get("type") == "Deployed"), {})
        graph_failed = phase == PHASE_FAILED and deployed.get("reason") == "GraphFailed"
        if same_generation and (phase in (PHASE_DEPLOYING, PHASE_DEPLOYED) or graph_failed):
            return await self.track_graph(request)
        if same_generation and phase == PHASE_READY:
            return self.previous
        if same_generation and phase == PHASE_FAILED and self._failed_after_validation():
            return self.previous
        await self._drop_old_jobs()
        jobs = render_profiling(self.obj, request, image, self.config)
        job = jobs[-1]
        job_path = resource_path("batch/v1", "jobs", self.namespace, job["metadata"]["name"])
        live = await self.client.get(job_path)
        if live is None:
            for child in jobs:
                await apply(self.client, child)
            self.logger.info(
                "request %s/%s: profiling Job %s created", self.namespace, self.name, job["metadata"]["name"]
            )
            live = job
        outcome = job_outcome(live)
        job_field = {"profilingJobName": job["metadata"]["name"], "backend": request.backend}
        if outcome is None:
            return self.status(
                PHASE_PROFILING,
                valid,
                self.cond(
                    "Profiled",
                    False,
                    "Profiling",
                    f"Job {job['metadata']['name']} is measuring {'the mocker' if request.mocker else request.backend} "
                    f"for TTFT <= {request.ttft_ms:g} ms, ITL <= {request.itl_ms:g} ms at ISL {request.isl} / OSL {request.osl}",
                ),
                fresh=not same_generation,
                **job_field,
            )
        results = await self._results(request)
        if outcome.startswith("failed"):
            words = results.get("error.txt", "").strip() or outcome.split(":", 1)[1].strip()
            return self.failed("Profiled", "ProfilingFailed", words, **job_field)
        try:
            graph = yaml.safe_load(results["dgd.yaml"])
            selected = json.loads(results["selected_config.json"])
        except (KeyError, ValueError, yaml.YAMLError) as exc:
            return self.failed(
                "Profiled",
                "ResultsMissing",
                f"Job {job['metadata']['name']} succeeded but ConfigMap {configmap_name(request)} has no usable "
                f"results ({exc!r})",
                **job_field,
            )
        graph.setdefault("metadata", {})["namespace"] = self.namespace
        graph["metadata"].setdefault("labels", {})[LABEL_REQUEST] = self.name
        fields = {
            **job_field,
            "dgdName": graph["metadata"]["name"],
            "profilingResults": {
                "selectedConfig": graph,
                "selection": {**selected.get("selection", {}), "reason": selected.get("reason", "")},
            },
        }
        profiled = self.cond(
            "Profiled", True, "ProfilingSucceeded", selected.get("reason") or "profiling done"
        )
        if not request.auto_apply:
            return self.status(PHASE_READY, valid, profiled, **fields)
        return await self.deploy(graph, configmap_name(request), valid, profiled, fields)

    def _failed_after_validation(self) -> bool:
        return any(
            c.get("type") == "Profiled" and c.get("status") == "False" for c in self.prev_conditions
        ) or any(c.get("type") == "Deployed" and c.get("status") == "False" for c in self.prev_conditions)

    async def _drop_old_jobs(self) -> None:
        """Delete profiling Jobs of earlier generations (the spec changed: profile again)."""
        path = resource_path("batch/v1", "jobs", self.namespace)
        try:
            jobs = await self.client.list(path, f"{LABEL_REQUEST}={self.name}")
        except ApiError as exc:
            if exc.status == 404:
                return
            raise
        for job in jobs:
            gen = ((job.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_GENERATION)
            if gen is not None and gen != str(self.generation):
                self.logger.info(
                    "request %s/%s changed: deleting Job %s",
                    self.namespace,
                    self.name,
                    job["metadata"]["name"],
                )
                await self.client.delete(f"{path}/{job['metadata']['name']}")

    async def _results(self, request: DeploymentRequest) -> dict[str, str]:
        cm = await self.client.get(resource_path("v1", "configmaps", self.namespace, configmap_name(request)))
        return dict((cm or {}).get("data") or {})

    async def deploy(
        self,
        graph: dict[str, Any],
        results: str,
        valid: dict[str, Any],
        profiled: dict[str, Any],
        fields: dict[str, Any],
    ) -> dict[str, Any]:
        path = resource_path(API_VERSION, DGD_PLURAL, self.namespace, graph["metadata"]["name"])
        existing = await self.client.get(path)
        if (
            existing is not None
            and (existing["metadata"].get("labels") or {}).get(LABEL_REQUEST) != self.name
        ):
            return self.failed(
                "Deployed",
                "NameTaken",
                f"a DynamoGraphDeployment named {graph['metadata']['name']} already exists and was not generated by "
                "this request; name another with overrides.dgd.metadata.name",
                **fields,
            )
        try:
            action, live = await apply(self.client, graph)
            await self._share_results(live, results)
        except ApiError as exc:
            if exc.status >= 500 or exc.status in (409, 429):
                raise
            return self.failed("Deployed", "CreateFailed", str(exc), **fields)
        self.logger.info(
            "request %s/%s: %s DGD %s", self.namespace, self.name, action, graph["metadata"]["name"]
        )
        deploying = self.cond(
            "Deployed",
            False,
            "Deploying",
            f"DynamoGraphDeployment {graph['metadata']['name']} {action}; waiting for it to be ready",
        )
        return self.status(
            PHASE_DEPLOYING, valid, profiled, deploying, **fields, deploymentInfo={"created": True}
        )

    async def _share_results(self, graph: Mapping[str, Any], results: str) -> None:
        """The graph's planner mounts the results ConfigMap: make the graph an owner of it too, so
        deleting the request alone does not take the profile from under a running planner."""
        uid = (graph.get("metadata") or {}).get("uid")
        if not uid:
            return
        path = resource_path("v1", "configmaps", self.namespace, results)
        owners = [
            _owner(self.obj),
            {
                "apiVersion": API_VERSION,
                "kind": "DynamoGraphDeployment",
                "name": graph["metadata"]["name"],
                "uid": uid,
            },
        ]
        owners[0]["controller"] = False
        await self.client.merge_patch(path, {"metadata": {"ownerReferences": owners}})

    async def track_graph(self, request: DeploymentRequest) -> dict[str, Any]:
        """Deploying -> Deployed when the generated graph is ready (and back when it is not)."""
        name = self.previous.get("dgdName") or request.graph_name
        graph = await self.client.get(resource_path(API_VERSION, DGD_PLURAL, self.namespace, name))
        if graph is None:
            return self.status(
                PHASE_DEPLOYING,
                self.cond(
                    "Deployed",
                    False,
                    "DeploymentDeleted",
                    f"DynamoGraphDeployment {name} does not exist (deleted?)",
                ),
                deploymentInfo={"created": False},
            )
        st = graph.get("status") or {}
        ready: dict[str, Any] = next((c for c in st.get("conditions") or [] if c.get("type") == "Ready"), {})
        services = st.get("services") or {}
        info = {
            "created": True,
            "replicas": sum(int(s.get("replicas") or 0) for s in services.values()),
            "availableReplicas": sum(int(s.get("availableReplicas") or 0) for s in services.values()),
        }
        if st.get("state") == "successful":
            return self.status(
                PHASE_DEPLOYED,
                self.cond("Deployed", True, "GraphReady", f"DynamoGraphDeployment {name} is ready"),
                deploymentInfo=info,
            )
        if st.get("state") == "failed":
            return self.status(
                PHASE_FAILED,
                self.cond(
                    "Deployed",
                    False,
                    "GraphFailed",
                    f"DynamoGraphDeployment {name}: {ready.get('message') or 'failed'}",
                ),
                deploymentInfo=info,
            )
        message = ready.get("message") or "not reconciled yet"
        return self.status(
            PHASE_DEPLOYING,
            self.cond("Deployed", False, "Deploying", f"DynamoGraphDeployment {name}: {message}"),
            deploymentInfo=info,
        )


async def advance(
    obj: Mapping[str, Any], client: KubeClient, config: OperatorConfig, logger: logging.Logger
) -> dict[str, Any]:
    """The request's next status (creating its Job or its graph when due)."""
    return await RequestStep(obj, client, config, logger).run()
