"""TCP request plane: one request in, a stream of responses out (see framing.py)."""

from dynamo.runtime.request_plane.client import (
    InstanceUnreachable,
    RemoteError,
    RequestPlaneClient,
    RequestPlaneError,
    ResponseStream,
    StreamBroken,
)
from dynamo.runtime.request_plane.server import RequestContext, RequestPlaneServer

__all__ = [
    "InstanceUnreachable",
    "RemoteError",
    "RequestContext",
    "RequestPlaneClient",
    "RequestPlaneError",
    "RequestPlaneServer",
    "ResponseStream",
    "StreamBroken",
]
