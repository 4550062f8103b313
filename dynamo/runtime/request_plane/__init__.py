"""TCP request plane: one request in, a stream of responses out (see framing.py)."""

from dynamo.runtime.request_plane.client import (
    ConnectionDead,
    InstanceUnreachable,
    RemoteError,
    RequestPlaneClient,
    RequestPlaneError,
    ResponseStream,
    StreamBroken,
)
from dynamo.runtime.request_plane.server import RequestContext, RequestPlaneServer

__all__ = [
    "ConnectionDead",
    "InstanceUnreachable",
    "RemoteError",
    "RequestContext",
    "RequestPlaneClient",
    "RequestPlaneError",
    "RequestPlaneServer",
    "ResponseStream",
    "StreamBroken",
]
