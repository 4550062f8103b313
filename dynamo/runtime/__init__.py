"""Distributed runtime: names, discovery, request plane, event plane, status server, logging."""

from dynamo.runtime.config import RuntimeConfig, add_runtime_args
from dynamo.runtime.discovery.watch import CardEvent, InstanceEvent
from dynamo.runtime.names import EndpointId
from dynamo.runtime.request_plane import (
    ConnectionDead,
    InstanceUnreachable,
    RemoteError,
    RequestContext,
    RequestPlaneError,
    ResponseStream,
    StreamBroken,
)
from dynamo.runtime.runtime import DistributedRuntime, EndpointClient, InstanceRecord

__all__ = [
    "CardEvent",
    "ConnectionDead",
    "DistributedRuntime",
    "EndpointClient",
    "EndpointId",
    "InstanceEvent",
    "InstanceRecord",
    "InstanceUnreachable",
    "RemoteError",
    "RequestContext",
    "RequestPlaneError",
    "ResponseStream",
    "RuntimeConfig",
    "StreamBroken",
    "add_runtime_args",
]
