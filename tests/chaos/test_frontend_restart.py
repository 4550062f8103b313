"""Frontend restart: the frontend is killed (-9) under load, a worker dies while it is down (its
lease still in etcd), and the frontend comes back: it serves as soon as it rediscovers (its
/health lists a worker), no request sent to it then fails, and the dead worker does not survive in its view beyond the lease TTL. (Engine:
the mocker, a stand-in for a GPU engine; each component on its own simulated host.)"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.chaos.hosts import Lab
from tests.chaos.load import client, stream_completion
from tests.chaos.tally import Tally, record
from tests.support.procs import wait_until

pytestmark = [pytest.mark.timeout(180)]
MODEL = "chaos-mock"
TTL = 6.0


async def test_frontend_restart_serves_at_once_and_drops_the_stale_worker(
    lab: Lab, smollm2_tokenizer_dir: Path
):
    lab.env["DYN_DISCOVERY_TTL"] = str(TTL)
    lab.etcd(lab.host("etcd"))
    args = ("--model-name", MODEL, "--speedup-ratio", "5")
    lab.mocker(lab.host("w1"), smollm2_tokenizer_dir, *args)
    doomed = lab.mocker(lab.host("w2"), smollm2_tokenizer_dir, *args)
    fe_host = lab.host("fe")
    fe = lab.frontend(fe_host, name="frontend-1")
    fe.wait_for_instances(2)

    tally = Tally()
    errors: list[str] = []
    async with client(timeout=30) as http:
        for _ in range(4):
            tally.add(await stream_completion(http, fe.url, MODEL, 16))
        fe.proc.kill9()
        doomed.kill9()  # dies while no frontend watches: its key stays in etcd until the lease lapses
        tally.fault("kill -9 the frontend")
        tally.fault("kill -9 a worker while the frontend is down")

        restarted_at = time.monotonic()
        fe = await asyncio.to_thread(lab.frontend, fe_host, name="frontend-2")
        # Traffic comes once /health lists a worker (what a readiness probe gates on); before it, a
        # request is refused with 503 + Retry-After while the model loads (counted refused, not lost).
        await asyncio.to_thread(wait_until, lambda: len(fe.instances()) >= 1, 30, "the frontend's readiness")
        first_ok: float | None = None
        saw_stale = False
        # Serve right away, through the window where the dead worker may still be listed.
        while time.monotonic() - restarted_at < TTL + 6:
            out = await stream_completion(http, fe.url, MODEL, 16, timeout=20)
            tally.add(out)
            if out.error:
                errors.append(out.error)
            if out.ok and first_ok is None:
                first_ok = time.monotonic()
            listed = len(await asyncio.to_thread(fe.instances))
            saw_stale = saw_stale or listed == 2
            if listed == 1 and first_ok is not None and time.monotonic() - restarted_at > 1:
                break
        instances = fe.instances()
    assert first_ok is not None, tally.summary()
    tally.recovery_s = round(first_ok - restarted_at, 2)
    tally.notes.update(lease_ttl_s=TTL, stale_worker_listed_after_restart=saw_stale)
    record("frontend_restart", tally)
    assert tally.losses == 0 and tally.completed == tally.sent, (tally.summary(), errors)
    assert len(instances) == 1, f"a stale worker survived: {instances}"
