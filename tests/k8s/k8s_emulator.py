"""An emulated Kubernetes API (kmock's KubernetesEmulator) with the resources the operator uses,
and the operator running in-process against it. kmock stands in for the API server only: it has
no controllers (no pods, no garbage collector), so tests set workload status themselves."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

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
