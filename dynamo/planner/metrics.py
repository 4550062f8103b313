"""The planner's Prometheus metrics (prefix ``dynamo_planner_``), served on its status server's
``/metrics`` like every other component's.

Every decision sets the gauges of its inputs (``input{signal}``: observed and predicted traffic,
correction factors, KV use, queued tokens) and per pool the ready, stuck and target replicas, and
counts the decision by pool and change (``up``, ``down``, ``none``).

Journey: beside the decide -> publish step.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

PREFIX = "dynamo_planner_"


class PlannerMetrics:
    """All ``dynamo_planner_*`` metrics."""

    def __init__(self, registry: CollectorRegistry) -> None:
        p = PREFIX
        self.decisions = Counter(
            p + "decisions", "decisions by pool and change", ["pool", "change"], registry=registry
        )
        self.target = Gauge(
            p + "target_replicas", "replicas the last decision asked for", ["pool"], registry=registry
        )
        self.ready = Gauge(
            p + "ready_replicas", "workers ready when the last decision was made", ["pool"], registry=registry
        )
        self.stuck = Gauge(
            p + "stuck_replicas",
            "replicas asked for longer than the scale-up timeout ago and not ready",
            ["pool"],
            registry=registry,
        )
        self.inputs = Gauge(p + "input", "inputs of the last decision", ["signal"], registry=registry)
        self.publish_failures = Counter(
            p + "publish_failures", "decisions the connector could not apply", registry=registry
        )
        self.interval = Gauge(
            p + "adjustment_interval_seconds", "seconds between decisions", registry=registry
        )
