"""The frontend's link cut while its streams run on a worker: no FIN reaches the worker, so only
the worker's own liveness check of its callers ends that work (its PINGs go unanswered) — the
engine does not keep generating, or holding KV blocks, for a caller that is gone. (Engine: the
mocker, a stand-in for a GPU engine; each component on its own simulated host.)"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.chaos.hosts import Lab
from tests.chaos.load import client, stream_completion, worker_inflight

pytestmark = [pytest.mark.timeout(120)]
MODEL = "chaos-mock"
WORKER_LIVENESS = 2.0  # the worker's DYN_REQUEST_PLANE_LIVENESS_TIMEOUT here (default 30 s)


async def test_worker_frees_the_work_of_a_partitioned_frontend(lab: Lab, smollm2_tokenizer_dir: Path):
    lab.etcd(lab.host("etcd"))
    worker_host = lab.host("w1")
    lab.mocker(
        worker_host,
        smollm2_tokenizer_dir,
        "--model-name",
        MODEL,
        "--speedup-ratio",
        "0.5",
        env={"DYN_REQUEST_PLANE_LIVENESS_TIMEOUT": str(WORKER_LIVENESS)},
    )
    fe_host = lab.host("fe")
    fe = lab.frontend(fe_host)
    fe.wait_for_instances(1)

    async with client(timeout=60) as http:
        streams = [
            asyncio.create_task(stream_completion(http, fe.url, MODEL, 2000, timeout=WORKER_LIVENESS * 6))
            for _ in range(4)
        ]
        deadline = time.monotonic() + 30
        while await asyncio.to_thread(worker_inflight, worker_host) < 4:
            assert time.monotonic() < deadline, "the streams did not start"
            await asyncio.sleep(0.1)
        fe_host.cut()
        cut_at = time.monotonic()
        while await asyncio.to_thread(worker_inflight, worker_host) > 0:
            assert time.monotonic() - cut_at < 1.25 * WORKER_LIVENESS + 3, (
                "the worker kept serving a lost caller"
            )
            await asyncio.sleep(0.1)
        freed_s = time.monotonic() - cut_at
        outcomes = await asyncio.gather(*streams)
    assert all(o.error for o in outcomes)  # the client lost its frontend too: none completed
    assert freed_s >= 0.9 * WORKER_LIVENESS, freed_s
