"""``--router-mode random`` (journey: route): each request goes to a uniformly random live instance."""

from __future__ import annotations

import random
from collections.abc import Sequence

from dynamo.frontend.routing.policy import Choice, RoutingPolicy


class RandomPolicy(RoutingPolicy):
    """Uniform choice among the candidates; stateless."""

    name = "random"

    def __init__(self, rng: random.Random | None = None) -> None:
        self._choice = (rng or random.Random()).choice

    def select(
        self, candidates: Sequence[int], token_ids: Sequence[int], request_id: str, pinned: int | None
    ) -> Choice:
        if len(candidates) == 1:
            return Choice(candidates[0])
        return Choice(self._choice(candidates))
