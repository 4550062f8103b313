"""From a policy's proposal to a target, given what is actually running and what is still pending.

The planner never waits for a change to complete (a scale-up whose worker never becomes ready must
not stall it). It re-plans from the ready workers each interval, and tracks a pool's pending replicas
(the last target minus the ready ones): they are waited for while young, and not counted on once
the target has not gone up for ``timeout`` seconds and they are still missing (stuck).

- ``up``: ready + 1, plus the stuck replicas (capacity they were meant to bring comes from new ones);
  while replicas are pending and young, the target stays (they are not asked for twice).
- ``down``: ready - 1 (pending replicas are dropped; the connector drains not-ready replicas first).
- ``hold``: ready + young pending replicas (stuck ones are dropped).
- ``set`` n (SLA): n, plus the stuck replicas when n is above the ready count.

Journey: observe -> predict -> decide -> **reconcile** -> bound -> publish.
"""

from __future__ import annotations

from dataclasses import dataclass

from dynamo.planner.policy import Proposal


@dataclass
class PoolState:
    """What was last asked of one pool, and since when it has not been met."""

    target: int | None = None
    pending_since: float | None = None


def reconcile(
    proposal: Proposal, ready: int, state: PoolState, now: float, timeout: float
) -> tuple[int | None, int]:
    """(unbounded target, stuck replicas) for one pool."""
    pending = max(0, (state.target if state.target is not None else ready) - ready)
    stuck = (
        pending if pending and state.pending_since is not None and now - state.pending_since >= timeout else 0
    )
    young = pending - stuck
    if proposal.direction == "up":
        return max(ready + 1 + stuck, ready + young), stuck
    if proposal.direction == "down":
        return max(0, ready - 1), stuck
    if proposal.direction == "hold":
        return ready + young, stuck
    if proposal.replicas is None:
        return None, stuck
    return (proposal.replicas + stuck if proposal.replicas > ready else proposal.replicas), stuck


def record(state: PoolState, target: int, ready: int, now: float) -> None:
    """Remember the published ``target``. Its shortfall is pending since the last time the target
    went up (a new ask restarts the clock for every replica still missing: the planner sees counts,
    not which replica is which); cleared once the ready workers meet it."""
    if target <= ready:
        state.pending_since = None
    elif state.pending_since is None or state.target is None or target > state.target:
        state.pending_since = now
    state.target = target
