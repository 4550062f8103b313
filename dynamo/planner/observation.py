"""What the planner saw over one adjustment interval: the frontends' traffic, the workers ready to
serve and their load. Plain data, built by ``traffic`` and ``workers``, read by the policies.

Journey: **observe** -> predict -> decide.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ROLES = ("prefill", "decode")


@dataclass(frozen=True)
class Traffic:
    """One interval of client traffic, summed over every frontend process scraped (means are
    over the requests of the interval; None when none finished)."""

    seconds: float
    requests: float
    isl: float | None = None  # mean prompt tokens
    osl: float | None = None  # mean generated tokens
    ttft_s: float | None = None  # mean time to first token seen by clients (queueing included)
    itl_s: float | None = None  # mean inter-token latency
    duration_s: float | None = None  # mean request duration

    @property
    def rate(self) -> float:
        """Requests per second."""
        return self.requests / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class WorkerLoad:
    """The latest load report of one worker (``LoadMetrics`` from the event plane)."""

    worker_id: int
    role: str
    active: int
    waiting: int
    kv_active_blocks: int
    kv_total_blocks: int


@dataclass(frozen=True)
class Observation:
    """Everything one decision is made from."""

    ready: dict[str, int]  # workers registered (serving) per role
    traffic: Traffic | None  # None: no traffic source answered
    loads: list[WorkerLoad] = field(default_factory=list)
    context_length: int | None = None  # the served model's, from its card
    block_size: int = 16  # tokens per KV block, from the card

    def loads_of(self, role: str) -> list[WorkerLoad]:
        return [w for w in self.loads if w.role == role]
