"""The planner's limits: every pool at least ``min_endpoint`` replicas, all pools together within
``max_gpu_budget`` GPUs (``-1``: no budget).

Contract: ``apply_bounds`` returns the bounded targets and a note per change it made. Over budget, the
pools are scaled down in proportion (rounded down), then the largest pool above its minimum gives
up one replica at a time until the total fits; minimums win over the budget (noted). A target of
``None`` means "as many as the budget allows" (an SLA no size can meet).

Journey: observe -> predict -> decide -> **bound** -> publish.
"""

from __future__ import annotations

import math

from dynamo.planner.config import PlannerConfig


def apply_bounds(targets: dict[str, int | None], config: PlannerConfig) -> tuple[dict[str, int], list[str]]:
    """``targets`` (replicas per role) within the minimum and the GPU budget."""
    notes: list[str] = []
    floor = config.min_endpoint
    budget = config.max_gpu_budget
    gpus = {role: config.gpus(role) for role in targets}
    out: dict[str, int] = {}
    for role, value in targets.items():
        if value is None:
            if budget < 0:
                notes.append(f"{role}: no size meets the SLA and there is no GPU budget; holding the minimum")
                value = floor
            else:
                value = max(floor, budget // gpus[role])
                notes.append(f"{role}: no size meets the SLA; asking for the budget's most")
        if value < floor:
            notes.append(f"{role}: {value} raised to min_endpoint {floor}")
            value = floor
        out[role] = value
    if budget < 0:
        return out, notes
    total = sum(out[r] * gpus[r] for r in out)
    if total <= budget:
        return out, notes
    wanted = dict(out)
    scale = budget / total
    for role in out:
        out[role] = max(floor, math.floor(out[role] * scale))
    while sum(out[r] * gpus[r] for r in out) > budget:
        above = [r for r in out if out[r] > floor]
        if not above:
            notes.append(
                f"minimums need {sum(out[r] * gpus[r] for r in out)} GPUs, over the budget of {budget}; kept"
            )
            break
        largest = max(above, key=lambda r: (out[r] * gpus[r], r))
        out[largest] -= 1
    notes.append(f"GPU budget {budget}: {wanted} -> {out}")
    return out, notes
