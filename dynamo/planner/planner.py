"""The planner's loop: every adjustment interval, observe -> propose -> reconcile -> bound ->
publish, and say what it decided and why.

Contract: one ``step`` per interval, never skipped because an earlier change is still pending; a
step whose traffic source or connector fails logs it and the next step tries again. Each decision
is one INFO log line (``planner decision N: ...``) with its inputs, the ``dynamo_planner_*``
gauges, and with ``log_dir`` set, one JSON line in ``<log_dir>/decisions.jsonl``. With
``advisory: true`` decisions are computed and logged but not published.

Journey: observe (``traffic``, ``workers``) -> decide (``policy``) -> **this loop** -> connector.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from dynamo.planner.bounds import apply_bounds
from dynamo.planner.config import PlannerConfig
from dynamo.planner.connector import ScalingConnector, ScalingDecision
from dynamo.planner.metrics import PlannerMetrics
from dynamo.planner.observation import Observation, WorkerLoad
from dynamo.planner.policy import Proposal
from dynamo.planner.reconcile import PoolState, reconcile, record
from dynamo.planner.traffic import TrafficSource

log = logging.getLogger(__name__)


class Policy(Protocol):
    def propose(self, obs: Observation) -> list[Proposal]: ...


class Workers(Protocol):
    def ready(self, roles: tuple[str, ...]) -> dict[str, int]: ...

    def loads(self) -> list[WorkerLoad]: ...

    def model_facts(self) -> tuple[int | None, int]: ...


class Planner:
    """Decides replicas for one graph (its Dynamo namespace)."""

    def __init__(
        self,
        config: PlannerConfig,
        policy: Policy,
        workers: Workers,
        traffic: TrafficSource | None,
        connector: ScalingConnector,
        metrics: PlannerMetrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.policy = policy
        self.workers = workers
        self.traffic = traffic
        self.connector = connector
        self.metrics = metrics
        self.clock = clock
        self.generation = 0
        self.pools = {role: PoolState() for role in config.roles}
        self.last: ScalingDecision | None = None
        metrics.interval.set(config.interval)

    async def observe(self) -> Observation:
        traffic = await self.traffic.sample() if self.traffic is not None else None
        context_length, block_size = self.workers.model_facts()
        return Observation(
            ready=self.workers.ready(self.config.roles),
            traffic=traffic,
            loads=self.workers.loads(),
            context_length=context_length,
            block_size=block_size,
        )

    def decide(self, obs: Observation) -> tuple[ScalingDecision, list[str], dict[str, float]]:
        """The decision for ``obs`` (pure but for the pools' pending state it updates)."""
        now = self.clock()
        proposals = self.policy.propose(obs)
        unbounded: dict[str, int | None] = {}
        stuck: dict[str, int] = {}
        reasons: list[str] = []
        inputs: dict[str, float] = {}
        for p in proposals:
            ready = obs.ready.get(p.role, 0)
            unbounded[p.role], stuck[p.role] = reconcile(
                p, ready, self.pools[p.role], now, self.config.pending_timeout
            )
            reasons.append(f"{p.role} {p.direction}: {p.reason}")
            inputs |= {f"{p.role}_{k}" if k in _PER_POOL else k: v for k, v in p.inputs.items()}
        targets, notes = apply_bounds(unbounded, self.config)
        for role, target in targets.items():
            record(self.pools[role], target, obs.ready.get(role, 0), now)
            self.metrics.stuck.labels(role).set(stuck[role])
        self.generation += 1
        decision = ScalingDecision(
            namespace=self.config.namespace,
            generation=self.generation,
            targets=targets,
            ready=dict(obs.ready),
            at=time.time(),
            reason="; ".join(reasons + notes),
        )
        if obs.traffic is not None:
            t = obs.traffic
            inputs.setdefault("observed_request_rate", t.rate)
            for name, value in (
                ("observed_isl", t.isl),
                ("observed_osl", t.osl),
                ("observed_ttft_ms", None if t.ttft_s is None else t.ttft_s * 1000),
                ("observed_itl_ms", None if t.itl_s is None else t.itl_s * 1000),
            ):
                if value is not None:
                    inputs.setdefault(name, value)
        return decision, notes, inputs

    async def step(self) -> ScalingDecision:
        """One interval's decision, published (unless advisory)."""
        obs = await self.observe()
        previous = self.last.targets if self.last is not None else {}
        decision, _, inputs = self.decide(obs)
        self._report(decision, obs, previous, inputs)
        self.last = decision
        if not self.config.advisory:
            try:
                await self.connector.apply(decision)
            except Exception as exc:
                self.metrics.publish_failures.inc()
                log.error("planner decision %d not applied: %s", decision.generation, exc)
        return decision

    def _report(
        self, decision: ScalingDecision, obs: Observation, previous: dict[str, int], inputs: dict[str, float]
    ) -> None:
        changes = []
        for role, target in decision.targets.items():
            before = previous.get(role, obs.ready.get(role, 0))
            change = "up" if target > before else "down" if target < before else "none"
            self.metrics.decisions.labels(role, change).inc()
            self.metrics.target.labels(role).set(target)
            self.metrics.ready.labels(role).set(obs.ready.get(role, 0))
            changes.append(f"{role} {before} -> {target} (ready {obs.ready.get(role, 0)})")
        for name, value in inputs.items():
            self.metrics.inputs.labels(name).set(value)
        shown = ", ".join(f"{k}={v:.4g}" for k, v in sorted(inputs.items()))
        log.info(
            "planner decision %d%s: %s; %s; inputs: %s",
            decision.generation,
            " (advisory)" if self.config.advisory else "",
            ", ".join(changes),
            decision.reason,
            shown or "none",
        )
        if self.config.log_dir:
            path = Path(self.config.log_dir) / "decisions.jsonl"
            entry = {
                "generation": decision.generation,
                "at": decision.at,
                "targets": decision.targets,
                "ready": decision.ready,
                "reason": decision.reason,
                "inputs": inputs,
                "advisory": self.config.advisory,
            }
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                with path.open("a") as f:
                    f.write(json.dumps(entry) + "\n")
            except OSError as exc:
                log.warning("cannot append to %s: %s", path, exc)

    async def run(self, stop: asyncio.Event) -> None:
        """Decide every interval until ``stop`` is set (the first decision after one interval)."""
        interval = self.config.interval
        next_at = self.clock() + interval
        if self.traffic is not None:
            await self.traffic.sample()  # the baseline of the first interval
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), max(0.0, next_at - self.clock()))
                return
            except TimeoutError:
                pass
            next_at += interval
            if next_at < self.clock():  # a slow step: skip the missed ticks, do not burst
                next_at = self.clock() + interval
            try:
                await self.step()
            except Exception:
                log.exception("planner step failed; trying again next interval")


# Input names a threshold policy reports per pool (prefixed with the pool in the metrics).
_PER_POOL = {"workers_reporting"}
