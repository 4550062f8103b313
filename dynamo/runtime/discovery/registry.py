"""What a serving process writes in discovery, and under which keys.

Journey: a worker registers (``DistributedRuntime.serve_endpoint`` writes its ``InstanceRecord``
and, for a model, its card) -> discovery -> frontends and routers follow it through
``dynamo.runtime.discovery.watch``. This module is the only place that knows the key layout:

- ``v1/instances/<namespace>/<component>/<endpoint>/<instance:x>`` -> ``InstanceRecord`` (JSON)
- ``v1/mdc/<namespace>/<component>/<endpoint>/<instance:x>`` -> the model card (JSON, opaque here)
- ``v1/store/<namespace>/<kind>/<id>`` -> a value of the graph's key-value store
  (``dynamo.runtime.store``; e.g. kind ``responses``: a stored ``/v1/responses`` conversation)

Keys start with the namespace, so a watch scoped to some namespaces is one prefix per namespace.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import msgspec

from dynamo.runtime.names import EndpointId, validate_name

INSTANCES_PREFIX = "v1/instances/"
CARDS_PREFIX = "v1/mdc/"
STORE_PREFIX = "v1/store/"

Kind = Literal["instances", "cards"]
_ROOTS: dict[str, str] = {"instances": INSTANCES_PREFIX, "cards": CARDS_PREFIX}


class InstanceRecord(msgspec.Struct, omit_defaults=True):
    """What discovery says about one serving instance of an endpoint."""

    namespace: str
    component: str
    endpoint: str
    instance_id: int
    address: str
    transport: str = "tcp"
    metadata: dict[str, Any] = {}

    @property
    def endpoint_id(self) -> EndpointId:
        return EndpointId(self.namespace, self.component, self.endpoint)


def instance_key(endpoint: EndpointId, instance_id: int) -> str:
    """Where the ``InstanceRecord`` of ``instance_id`` serving ``endpoint`` is registered."""
    return f"{INSTANCES_PREFIX}{endpoint.path}/{instance_id:x}"


def card_key(endpoint: EndpointId, instance_id: int) -> str:
    """Where the model card of ``instance_id`` serving ``endpoint`` is registered."""
    return f"{CARDS_PREFIX}{endpoint.path}/{instance_id:x}"


def store_key(namespace: str, kind: str, item_id: str) -> str:
    """Where the key-value store keeps item ``item_id`` of ``kind`` for ``namespace``."""
    validate_name("namespace", namespace)
    validate_name("store kind", kind)
    validate_name("store item id", item_id)
    return f"{STORE_PREFIX}{namespace}/{kind}/{item_id}"


def parse_key(kind: Kind, key: str) -> tuple[EndpointId, int] | None:
    """``v1/<kind>/ns/component/endpoint/<id:x>`` -> (endpoint, instance id); None if malformed."""
    root = _ROOTS[kind]
    if not key.startswith(root):
        return None
    parts = key[len(root) :].split("/")
    if len(parts) != 4:
        return None
    try:
        return EndpointId(parts[0], parts[1], parts[2]), int(parts[3], 16)
    except ValueError:
        return None


def scope_namespaces(namespaces: Iterable[str] | None) -> tuple[str, ...] | None:
    """Validated, de-duplicated namespaces in their given order; None means every namespace."""
    if namespaces is None:
        return None
    if isinstance(namespaces, str):
        raise TypeError("namespaces must be an iterable of names, not one string")
    out = tuple(dict.fromkeys(validate_name("namespace", ns) for ns in namespaces))
    if not out:
        raise ValueError("an empty namespace list would discover nothing (pass None for every namespace)")
    return out


def scope_prefixes(
    kind: Kind, namespaces: Iterable[str] | None = None, endpoint: EndpointId | None = None
) -> list[str]:
    """The key prefixes that hold exactly the ``kind`` keys of a scope.

    ``endpoint``: that endpoint's keys only; else ``namespaces``: one prefix per namespace; else the
    whole kind. An endpoint outside the given namespaces is a contradiction (``ValueError``).
    """
    root = _ROOTS[kind]
    scoped = scope_namespaces(namespaces)
    if endpoint is not None:
        if scoped is not None and endpoint.namespace not in scoped:
            raise ValueError(f"{endpoint} is outside the namespaces {', '.join(scoped)}")
        return [f"{root}{endpoint.path}/"]
    if scoped is None:
        return [root]
    return [f"{root}{ns}/" for ns in scoped]
