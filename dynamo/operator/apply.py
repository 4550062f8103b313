"""Create-or-update of child objects, the way ``kubectl apply`` does it: the last object we applied
is kept in an annotation, and an update is a JSON merge patch from that to the new one, so fields
we stop setting are removed while fields the cluster set (defaults, ``clusterIP``, status) stay."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from dynamo.operator.kube import ApiError, KubeClient, object_path

log = logging.getLogger(__name__)

LAST_APPLIED = "nvidia.com/last-applied-configuration"


def merge_patch(old: Any, new: Any) -> Any:
    """RFC 7386 merge patch turning ``old`` into ``new`` (``None`` values delete keys)."""
    if not isinstance(old, Mapping) or not isinstance(new, Mapping):
        return new
    patch: dict[str, Any] = {}
    for key in old:
        if key not in new:
            patch[key] = None
    for key, value in new.items():
        if key not in old:
            patch[key] = value
        elif old[key] != value:
            patch[key] = merge_patch(old[key], value)
    return patch


def status_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """A merge patch that writes every key of ``new`` whole (and removes the keys ``new`` lacks):
    a status is one verdict, so ``state`` and ``conditions`` always go out together, even when the
    ``old`` a writer read was already stale (a diff against it could leave one of them behind)."""
    patch: dict[str, Any] = {key: None for key in old if key not in new}
    patch.update(new)
    return patch


def _with_last_applied(desired: dict[str, Any]) -> dict[str, Any]:
    body = json.loads(json.dumps(desired))
    annotations = body["metadata"].setdefault("annotations", {})
    annotations[LAST_APPLIED] = json.dumps(desired, sort_keys=True, separators=(",", ":"))
    return body


def last_applied(obj: Mapping[str, Any]) -> dict[str, Any] | None:
    raw = ((obj.get("metadata") or {}).get("annotations") or {}).get(LAST_APPLIED)
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


async def apply(client: KubeClient, desired: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Make the object look like ``desired``; returns (``created``|``updated``|``unchanged``, object)."""
    path = object_path(desired)
    current = await client.get(path)
    if current is None:
        try:
            return "created", await client.create(
                object_path(desired, with_name=False), _with_last_applied(desired)
            )
        except ApiError as exc:
            if exc.status != 409:
                raise
            current = await client.get(path)
            if current is None:
                raise
    previous = last_applied(current)
    if previous == desired:
        return "unchanged", current
    base = previous if previous is not None else {}
    patch = merge_patch(base, _with_last_applied(desired))
    if previous is None:
        # Not ours yet (created by hand, or by an older operator): take over what we set.
        patch = _with_last_applied(desired)
    log.debug("patching %s: %s", path, patch)
    return "updated", await client.merge_patch(path, patch)
