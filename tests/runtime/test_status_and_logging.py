"""The worker status server (/health, /live, /metrics) and DYN_LOG parsing."""

from __future__ import annotations

import logging

import aiohttp
import pytest
from prometheus_client import Counter

from dynamo.runtime import DistributedRuntime, RuntimeConfig
from dynamo.runtime.logging import TRACE, configure_logging, parse_log_spec

pytestmark = pytest.mark.timeout(30)


async def test_health_turns_ready_only_when_told_and_503_while_draining():
    rt = await DistributedRuntime.create(RuntimeConfig.from_env(discovery_backend="mem", system_port=0))
    assert rt.status is not None
    base = f"http://127.0.0.1:{rt.status.port}"
    Counter("dynamo_test_events", "test counter", registry=rt.metrics).inc(3)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/health") as r:
            assert r.status == 503
        async with http.get(f"{base}/live") as r:
            assert r.status == 200
            assert (await r.json()) == {"status": "live"}
        rt.set_ready()
        async with http.get(f"{base}/health") as r:
            assert r.status == 200
            assert (await r.json())["status"] == "healthy"
        async with http.get(f"{base}/metrics") as r:
            assert "dynamo_test_events_total 3.0" in await r.text()
        rt.status.draining = True
        async with http.get(f"{base}/health") as r:
            assert r.status == 503
    await rt.shutdown()


def test_log_spec_levels_and_overrides():
    assert parse_log_spec("debug") == (logging.DEBUG, {})
    root, overrides = parse_log_spec("info,dynamo.router=debug,dynamo.runtime.request_plane=trace")
    assert root == logging.INFO
    assert overrides == {"dynamo.router": logging.DEBUG, "dynamo.runtime.request_plane": TRACE}
    with pytest.raises(ValueError, match="verbose"):
        parse_log_spec("verbose")


def test_configure_logging_applies_per_module_levels():
    configure_logging("warn,dynamo.router=trace")
    assert logging.getLogger().level == logging.WARNING
    assert logging.getLogger("dynamo.router").level == TRACE
    configure_logging("info")
