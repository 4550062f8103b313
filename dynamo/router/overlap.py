"""What a prefix index answers for a prompt: how many leading blocks each worker already caches.

Journey: route. ``KvIndexer`` (fed by KV events) and ``ApproxKvIndexer`` (fed by routing decisions,
``--no-kv-events``) both return ``OverlapScores``; the selector turns them into prefill costs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(slots=True)
class OverlapScores:
    """Per worker key: the number of leading prompt blocks it holds (workers with none are absent).

    ``tree_sizes`` gives, for the same workers, how many blocks the index holds for them in total.
    """

    scores: dict[int, int] = field(default_factory=dict)
    tree_sizes: dict[int, int] = field(default_factory=dict)


class PrefixIndex(Protocol):
    """A per-worker index of cached blocks that can score a prompt's prefix overlap."""

    def find_matches(self, local_hashes: Sequence[int], early_exit: bool = False) -> OverlapScores:
        """Score a prompt given its local block hashes."""
        ...

    def find_matches_sequence(
        self, sequence_hashes: Sequence[int], early_exit: bool = False
    ) -> OverlapScores:
        """Score a prompt given its chained sequence hashes (cheaper: no hashing)."""
        ...

    def workers(self) -> list[int]:
        """Keys of the workers the index holds blocks (or event state) for."""
        ...

    def remove_worker(self, worker: int) -> None:
        """Forget everything about a worker."""
        ...
