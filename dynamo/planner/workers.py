"""The workers of the planner's graph as the runtime shows them: which are ready (registered with a
model card) per role, and each one's latest load report from the event plane.

Contract: a worker counts as ready from the moment its card is in discovery until it is removed
(a draining worker deregisters first, so it stops counting at once); a started replica that never
registers never counts. Roles: the ``prefill`` component is the prefill pool, every other worker
component the decode pool (aggregated workers included). Load reports older than ``stale_after``
seconds, or from workers not ready, are left out.

Journey: workers (discovery, event plane) -> **here** -> the planner's observe step.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from dynamo.llm import kv_events
from dynamo.llm.endpoints import PREFILL_COMPONENT
from dynamo.planner.observation import WorkerLoad
from dynamo.runtime import DistributedRuntime

log = logging.getLogger(__name__)

STALE_AFTER = 5.0  # seconds: a load report older than this is ignored


def role_of(component: str) -> str:
    return "prefill" if component == PREFILL_COMPONENT else "decode"


class WorkerView:
    """Follows one namespace's workers; ``start`` spawns the watches on the runtime."""

    def __init__(self, runtime: DistributedRuntime, namespace: str, stale_after: float = STALE_AFTER) -> None:
        self.runtime = runtime
        self.namespace = namespace
        self.stale_after = stale_after
        self.cards: dict[int, tuple[str, dict[str, Any]]] = {}  # instance id -> (role, card fields)
        self._loads: dict[tuple[int, int], tuple[float, WorkerLoad]] = {}

    def start(self) -> None:
        self.runtime.spawn(self._follow_cards(), "planner-cards")
        self.runtime.spawn(self._follow_loads(), "planner-loads")

    async def _follow_cards(self) -> None:
        async for event in self.runtime.watch_model_cards(namespaces=[self.namespace]):
            if event.removed or event.card is None:
                if self.cards.pop(event.instance_id, None) is not None:
                    log.info("planner: worker %x (%s) left", event.instance_id, event.endpoint)
                continue
            try:
                card = json.loads(event.card)
            except ValueError:
                card = {}
            role = role_of(event.endpoint.component)
            if event.instance_id not in self.cards:
                log.info("planner: worker %x ready as %s (%s)", event.instance_id, role, event.endpoint)
            self.cards[event.instance_id] = (role, card if isinstance(card, dict) else {})

    async def _follow_loads(self) -> None:
        events = await self.runtime.event_plane()
        async for subject, payload in events.subscribe(f"dynamo.{self.namespace}.>"):
            if not subject.endswith(".load_metrics"):
                continue
            try:
                m = kv_events.decode_load_metrics(payload)
            except Exception as exc:
                log.debug("ignoring a load report on %s: %s", subject, exc)
                continue
            component = subject.split(".")[-2]
            load = WorkerLoad(
                worker_id=m.worker_id,
                role=role_of(component),
                active=m.active_requests,
                waiting=m.waiting_requests,
                kv_active_blocks=m.kv_active_blocks,
                kv_total_blocks=m.kv_total_blocks,
            )
            self._loads[(m.worker_id, m.dp_rank)] = (time.monotonic(), load)

    def ready(self, roles: tuple[str, ...]) -> dict[str, int]:
        """Ready workers per role."""
        counts = dict.fromkeys(roles, 0)
        for role, _ in self.cards.values():
            if role in counts:
                counts[role] += 1
        return counts

    def loads(self) -> list[WorkerLoad]:
        """The fresh load reports of ready workers."""
        now = time.monotonic()
        for key in [k for k, (at, _) in self._loads.items() if now - at > self.stale_after]:
            del self._loads[key]
        return [load for _, load in self._loads.values() if load.worker_id in self.cards]

    def model_facts(self) -> tuple[int | None, int]:
        """(context length, KV block size) of the served model, from any ready worker's card."""
        for _, card in self.cards.values():
            ctx = card.get("context_length")
            block = card.get("kv_cache_block_size") or 16
            if isinstance(ctx, int):
                return ctx, int(block)
        return None, 16
