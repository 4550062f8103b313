"""An emulated Kubernetes API (kmock's KubernetesEmulator) with the resources the operator uses,
and the operator running in-process against it. kmock stands in for the API server only: it has
no controllers (no pods, no garbage collector), so tests set workload status themselves.

``VersionedEmulator`` (the test modules select it with ``pytest.mark.kmock(cls=...)``) adds the
object versioning a real API server has and kmock leaves out: kopf tells its own stale watch events
from new changes by ``resourceVersion``, and the operator's status writes rely on the 409 of a
stale one.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import attrs
import kmock

from dynamo.operator.__main__ import run
from dynamo.operator.config import OperatorConfig

RESOURCES: dict[str, dict[str, Any]] = {
    "nvidia.com/v1alpha1/dynamographdeployments": {"kind": "DynamoGraphDeployment", "namespaced": True},
    "nvidia.com/v1alpha1/dynamographdeploymentrequests": {
        "kind": "DynamoGraphDeploymentRequest",
        "namespaced": True,
    },
    "apps/v1/deployments": {"kind": "Deployment", "namespaced": True},
    "v1/services": {"kind": "Service", "namespaced": True},
    "v1/secrets": {"kind": "Secret", "namespaced": True},
    "v1/events": {"kind": "Event", "namespaced": True},
    "v1/namespaces": {"kind": "Namespace", "namespaced": False},
    "apiextensions.k8s.io/v1/customresourcedefinitions": {
        "kind": "CustomResourceDefinition",
        "namespaced": False,
    },
}
VERBS = {"list", "watch", "get", "create", "patch", "update", "delete"}


@attrs.frozen
class StaleResourceVersion(kmock.KubernetesError):
    """A write naming a ``resourceVersion`` other than the stored one (a real server's 409)."""

    status: int = 409
    reason: str = "Conflict"
    message: str = (
        "the object has been modified; please apply your changes to the latest version and try again"
    )


class VersionedEmulator(kmock.KubernetesEmulator):
    """kmock's emulator with resource versions: every create and write stamps the object with the
    next ``resourceVersion`` (one counter for all objects, as etcd's revision), a write to
    ``spec`` bumps ``metadata.generation`` (a real server only does so when the spec changes:
    no test here writes an unchanged spec), and a write that names a ``resourceVersion``
    other than the stored one is refused with 409. (kmock keeps every object at its first
    version: kopf then takes the watch events of the operator's own status writes, which still
    carry the old handled-configuration annotation, for new changes, and runs its handlers again
    for each of them.)"""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self._versions = itertools.count(1)

    async def _handle(self, request: Any) -> Any:
        if request.resource is not None and isinstance(request.data, dict):
            if request.action == kmock.action.CREATE:
                meta = request.data.setdefault("metadata", {})
                meta["resourceVersion"] = str(next(self._versions))
                meta.setdefault("generation", 1)
            elif request.action == kmock.action.UPDATE and request.name is not None:
                self._stamp_update(request)
        return await super()._handle(request)

    def _stamp_update(self, request: Any) -> None:
        key = (request.resource, request.namespace, request.name)
        if key not in self._objects or self._objects[key].deleted:
            return  # kmock answers 404
        meta = self._objects[key].get("metadata", {})
        changes = request.data.setdefault("metadata", {})
        asked = changes.get("resourceVersion")
        if asked is not None and str(asked) != str(meta.get("resourceVersion")):
            raise StaleResourceVersion()
        changes["resourceVersion"] = str(next(self._versions))
        if "spec" in request.data and request.subresource is None:
            changes["generation"] = int(meta.get("generation", 1)) + 1


def declare_resources(emulator: kmock.KubernetesEmulator) -> None:
    for key, info in RESOURCES.items():
        subresources = {"status"} if key.startswith("nvidia.com") or key.startswith("apps/") else set()
        emulator.resources[key] = kmock.ResourceInfo(
            kind=info["kind"], namespaced=info["namespaced"], verbs=VERBS, subresources=subresources
        )


async def wait_for(
    check: Callable[[], Awaitable[Any]], timeout: float = 30.0, what: str = "condition"
) -> Any:
    """Poll ``check`` until it returns something truthy; fail with ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")


@contextlib.asynccontextmanager
async def operator_running(config: OperatorConfig) -> AsyncIterator[None]:
    """The real operator (kopf, our registry) in this event loop until the block ends."""
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(run(config, stop_flag=stop, ready_flag=ready))
    try:
        await asyncio.wait_for(ready.wait(), 15)
        yield
    finally:
        stop.set()
        try:
            await asyncio.wait_for(task, 15)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
