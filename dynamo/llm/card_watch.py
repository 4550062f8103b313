"""Model cards coming and going in discovery, decoded to ``ModelDeploymentCard``.

Journey: workers register their card -> the runtime's typed watch (raw JSON, since the runtime
knows nothing of models) -> **this decoding layer** -> the frontend's model manager and the
standalone router. A card that does not decode (or fails its checksum) is logged and skipped, so
consumers keep whatever they had for that instance.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

from dynamo.llm.model_card import ModelDeploymentCard
from dynamo.runtime import DistributedRuntime, EndpointId
from dynamo.runtime.discovery.watch import EventKind

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ModelCardEvent:
    """The card of ``instance_id`` serving ``endpoint`` appeared, changed, or went away (None)."""

    kind: EventKind
    endpoint: EndpointId
    instance_id: int
    card: ModelDeploymentCard | None = None

    @property
    def removed(self) -> bool:
        return self.kind == "removed"


async def watch_model_cards(
    runtime: DistributedRuntime,
    *,
    namespaces: Iterable[str] | None = None,
    endpoint: EndpointId | None = None,
) -> AsyncIterator[ModelCardEvent]:
    """Cards of ``endpoint``, else of ``namespaces``, else of every namespace: current ones, then changes.

    Like the runtime's watch, each instance's card is ``added`` before it is ``updated`` or
    ``removed``; an instance whose card never decoded is never reported."""
    reported: set[tuple[EndpointId, int]] = set()
    async for event in runtime.watch_model_cards(namespaces=namespaces, endpoint=endpoint):
        key = (event.endpoint, event.instance_id)
        if event.card is None:
            if key in reported:
                reported.discard(key)
                yield ModelCardEvent("removed", event.endpoint, event.instance_id)
            continue
        try:
            card = ModelDeploymentCard.from_json(event.card)
        except ValueError as exc:
            log.error("ignoring model card of instance %x (%s): %s", event.instance_id, event.endpoint, exc)
            continue
        kind: EventKind = "updated" if key in reported else "added"
        reported.add(key)
        yield ModelCardEvent(kind, event.endpoint, event.instance_id, card)
