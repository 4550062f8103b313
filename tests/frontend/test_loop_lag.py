"""The event-loop lag monitor sees a loop that was held, and stops when told."""

from __future__ import annotations

import asyncio
import time

from prometheus_client import CollectorRegistry, Histogram

from dynamo.frontend.loop_lag import LoopLagMonitor


def _count(registry: CollectorRegistry, bucket: str) -> float:
    value = registry.get_sample_value("lag_seconds_bucket", {"le": bucket})
    assert value is not None
    return value


def test_a_held_loop_is_observed_as_lag_and_stop_ends_the_task() -> None:
    registry = CollectorRegistry()
    histogram = Histogram("lag_seconds", "test", buckets=(0.01, 0.1, 1.0), registry=registry)

    async def scenario() -> None:
        monitor = LoopLagMonitor(histogram, interval=0.005)
        monitor.start()
        await asyncio.sleep(0.05)  # a free loop: wake-ups on time
        assert monitor.max_seconds < 0.1
        time.sleep(0.25)  # the loop held for 250 ms, as a long prompt tokenized on it would
        await asyncio.sleep(0.05)
        assert 0.2 <= monitor.max_seconds < 1.0
        task = monitor._task
        await monitor.stop()
        assert task is not None and task.done()

    asyncio.run(scenario())
    total = registry.get_sample_value("lag_seconds_count")
    assert total is not None and total >= 5
    assert _count(registry, "1.0") - _count(registry, "0.1") == 1  # the one held wake-up
