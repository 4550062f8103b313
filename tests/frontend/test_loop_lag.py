"""The event-loop lag monitor sees a loop that was held, and stops when told."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from prometheus_client import CollectorRegistry, Histogram

from dynamo.frontend.args import stall_threshold_from_env
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


def _blocking_call_on_the_loop() -> None:
    time.sleep(0.3)


def test_a_stall_logs_the_stack_that_holds_the_loop(caplog: pytest.LogCaptureFixture) -> None:
    """With a stall threshold, the loop thread's stack is logged while the loop is still held: it
    names the blocking call, once per stall; a loop that is not held logs nothing."""
    histogram = Histogram("lag_seconds", "test", registry=CollectorRegistry())
    caplog.set_level(logging.WARNING, logger="dynamo.frontend.loop_stall")

    async def scenario() -> None:
        monitor = LoopLagMonitor(histogram, interval=0.005, stall_threshold=0.1)
        monitor.start()
        await asyncio.sleep(0.2)
        assert not caplog.records  # on time: nothing logged
        _blocking_call_on_the_loop()
        await asyncio.sleep(0.05)
        await monitor.stop()
        assert monitor.stall_watch is not None and monitor.stall_watch.stalls == 1

    asyncio.run(scenario())
    [record] = caplog.records
    assert "event loop held" in record.getMessage()
    assert "_blocking_call_on_the_loop" in record.getMessage()


def test_the_stall_threshold_comes_from_the_environment() -> None:
    assert stall_threshold_from_env({}) is None
    assert stall_threshold_from_env({"DYN_LOOP_STALL_DUMP_MS": "0"}) is None
    assert stall_threshold_from_env({"DYN_LOOP_STALL_DUMP_MS": "25"}) == 0.025
    for bad in ("soon", "-5"):
        with pytest.raises(ValueError, match="DYN_LOOP_STALL_DUMP_MS"):
            stall_threshold_from_env({"DYN_LOOP_STALL_DUMP_MS": bad})


def test_the_frontend_config_carries_the_threshold_and_refuses_a_bad_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Read once at start-up, with the other flags: a bad value stops the frontend with its name."""
    from dynamo.frontend.args import FrontendConfig, build_parser

    def config() -> FrontendConfig:
        return FrontendConfig.from_args(build_parser().parse_args([]))

    assert config().loop_stall_threshold is None
    monkeypatch.setenv("DYN_LOOP_STALL_DUMP_MS", "30")
    assert config().loop_stall_threshold == 0.03
    monkeypatch.setenv("DYN_LOOP_STALL_DUMP_MS", "soon")
    with pytest.raises(ValueError, match="DYN_LOOP_STALL_DUMP_MS"):
        config()
