"""``--http-workers 2``: the shared port's ``/metrics`` answers for both processes (each sample
labelled ``http_worker``), so the planner's scrape of the one frontend URL counts every request
exactly once, whichever process served it. Real frontend processes, a real mocker, real HTTP."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from dynamo.frontend.metrics import merge_expositions
from dynamo.planner.traffic import ScrapeSource, parse_totals
from tests.support.graph import Frontend, discovery_env, start_mocker
from tests.support.procs import wait_until

pytestmark = [pytest.mark.timeout(150)]
MODEL = "smol-http-metrics"
REQUESTS = 40


def _requests_by_worker(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "dynamo_frontend_requests":
            for s in family.samples:
                if s.name.endswith("_total") and s.labels.get("model") == MODEL:
                    worker = s.labels["http_worker"]
                    out[worker] = out.get(worker, 0.0) + s.value
    return out


def test_merge_keeps_every_sample_with_its_process_label() -> None:
    one = '# HELP x_total a\n# TYPE x_total counter\nx_total{model="m"} 3.0\n'
    two = '# HELP x_total a\n# TYPE x_total counter\nx_total{model="m"} 4.0\n'
    merged = merge_expositions([one, two]).decode()
    assert 'x_total{http_worker="0",model="m"} 3.0' in merged
    assert 'x_total{http_worker="1",model="m"} 4.0' in merged
    assert merged.count("# TYPE x_total counter") == 1


async def test_planner_scrape_counts_each_request_once_across_http_workers(
    log_dir: Path, smollm2_tokenizer_dir: Path
) -> None:
    env = discovery_env("file")
    env["DYN_NAMESPACE"] = "http-metrics"
    env["DYN_FILE_DISCOVERY_DIR"] = str(log_dir / "discovery-http-metrics")
    mocker = start_mocker(
        log_dir,
        env,
        smollm2_tokenizer_dir,
        "mocker-http-metrics",
        "--model-name",
        MODEL,
        "--speedup-ratio",
        "50",
    )
    frontend = Frontend(log_dir, env, "--http-workers", "2", name="frontend-http-metrics")
    source = ScrapeSource([f"{frontend.url}/metrics"], model=MODEL)
    try:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}

        def one_request() -> int:
            # A new connection each time, so that the kernel may hand it to either process.
            with httpx.Client(timeout=10) as client:
                return client.post(f"{frontend.url}/v1/chat/completions", json=body).status_code

        wait_until(lambda: all(one_request() == 200 for _ in range(12)), 60, "both processes serving")
        wait_until(
            lambda: len(_requests_by_worker(frontend.metrics())) == 2, 30, "both processes in /metrics"
        )
        assert await source.sample() is None  # the baseline

        async with asyncio.TaskGroup() as tg:
            tasks = []
            for _ in range(REQUESTS):
                tasks.append(tg.create_task(asyncio.to_thread(one_request)))
        assert [t.result() for t in tasks] == [200] * REQUESTS

        counted = 0.0
        for _ in range(20):  # a request is counted as its response ends: let the last ones land
            t = await source.sample()
            counted += t.requests if t is not None else 0
            if counted >= REQUESTS:
                break
            await asyncio.sleep(0.25)
        await asyncio.sleep(0.5)
        t = await source.sample()
        counted += t.requests if t is not None else 0
        assert counted == REQUESTS

        # Both processes served some of them, and the shared URL shows each one's own totals.
        by_worker = _requests_by_worker(frontend.metrics())
        assert set(by_worker) == {"0", "1"} and all(v > 0 for v in by_worker.values())
        assert parse_totals(frontend.metrics(), MODEL).requests == sum(by_worker.values())
    finally:
        await source.close()
        frontend.stop()
        mocker.stop()
