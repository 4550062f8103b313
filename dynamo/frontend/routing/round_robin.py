"""``--router-mode round-robin`` (journey: route): each request goes to the next live instance in id
order."""

from __future__ import annotations

from collections.abc import Sequence

from dynamo.frontend.routing.policy import Choice, RoutingPolicy


class RoundRobinPolicy(RoutingPolicy):
    """Cycles through the candidates; even spread, no state beyond a counter."""

    name = "round-robin"

    def __init__(self) -> None:
        self._next = 0

    def select(
        self, candidates: Sequence[int], token_ids: Sequence[int], request_id: str, pinned: int | None
    ) -> Choice:
        if len(candidates) == 1:
            return Choice(candidates[0])
        self._next += 1
        return Choice(candidates[self._next % len(candidates)])
