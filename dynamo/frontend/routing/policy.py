"""The routing-policy interface (journey: preprocess -> **route: which instance** -> request plane).

A ``RoutingPolicy`` picks one instance among the live candidates an ``InstanceRouter`` hands it and
hears about the request's life through hooks: ``on_first_token`` (prefill done) and
``on_request_complete`` (finished, failed, cancelled or moved to another instance). Membership
hooks (``add_instance``/``remove_instance``) keep a stateful policy's view in step with discovery.
Every hook defaults to a no-op, so a stateless policy implements ``select`` only.
Contract: ``select`` is synchronous and cheap (it runs on the event loop for every request); it
raises ``NoWorkers`` or ``AllWorkersBusy`` and then records nothing.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar


@dataclass(slots=True)
class Choice:
    """The instance picked for a request, with its cached prompt blocks when a KV policy chose it."""

    instance_id: int
    overlap_blocks: int = 0


class RoutingPolicy(ABC):
    """Chooses the instance for each request of one model pool."""

    name: ClassVar[str]  # the --router-mode value

    @abstractmethod
    def select(
        self, candidates: Sequence[int], token_ids: Sequence[int], request_id: str, pinned: int | None
    ) -> Choice:
        """One of ``candidates`` (non-empty instance ids; ``[pinned]`` when the client pinned one)."""

    def add_instance(self, instance_id: int, total_blocks: int | None) -> None:  # noqa: B027 (a no-op by default)
        """An instance joined the pool (``total_blocks``: its KV capacity, when its card says)."""

    def remove_instance(self, instance_id: int) -> None:  # noqa: B027 (a no-op by default)
        """An instance left the pool."""

    def on_first_token(self, request_id: str) -> None:  # noqa: B027 (a no-op by default)
        """The instance serving ``request_id`` sent its first output: the prompt is prefilled."""

    def on_request_complete(self, request_id: str) -> None:  # noqa: B027 (a no-op by default)
        """``request_id`` no longer runs where it was routed (done, failed, cancelled, migrated)."""
