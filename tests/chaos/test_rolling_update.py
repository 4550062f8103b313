"""Rolling replacement of every worker under steady load (start the new one, SIGTERM the old one):
no failed request and no short stream, with migration off, so the graceful drain alone must carry
the in-flight streams. (Engine: the mocker, a stand-in for a GPU engine; each component on its own
simulated host.)"""

from __future__ import annotations

import asyncio
import time
from functools import partial
from pathlib import Path

import pytest

from tests.chaos.hosts import Host, Lab
from tests.chaos.load import client, steady_load, stream_completion, worker_inflight
from tests.chaos.tally import Tally, record

pytestmark = [pytest.mark.timeout(180)]
MODEL = "chaos-mock"
WORKERS = 2
CONCURRENCY = 6
MAX_TOKENS = 160


async def _until_a_stream_starts(host: Host) -> None:
    """Return once the worker on ``host`` has just taken a new stream (its in-flight gauge rose):
    that stream has nearly all of its ~1 s still to run when the SIGTERM lands. (Waiting only for
    "one in flight" could catch a stream in its last milliseconds, gone before the drain looks.)"""
    deadline = time.monotonic() + 10
    before = await asyncio.to_thread(worker_inflight, host)
    while True:
        now = await asyncio.to_thread(worker_inflight, host)
        if now > before:
            return
        assert time.monotonic() < deadline, "the old worker got no new request"
        before = now
        await asyncio.sleep(0.02)


async def test_rolling_replacement_under_steady_load_loses_nothing(lab: Lab, smollm2_tokenizer_dir: Path):
    lab.env["DYN_DISCOVERY_TTL"] = "10"
    lab.env["DYN_DRAIN_TIMEOUT"] = "30"
    lab.etcd(lab.host("etcd"))
    mocker_args = ("--model-name", MODEL, "--speedup-ratio", "1")
    old_hosts = [lab.host(f"old{i}") for i in range(WORKERS)]
    old = [lab.mocker(h, smollm2_tokenizer_dir, *mocker_args) for h in old_hosts]
    fe = lab.frontend(lab.host("fe"), "--migration-limit", "0")
    fe.wait_for_instances(WORKERS)

    tally = Tally()
    stop = asyncio.Event()
    async with client(timeout=60) as http:
        send = partial(stream_completion, http, fe.url, MODEL, MAX_TOKENS, timeout=60)
        load = asyncio.create_task(steady_load(send, tally, stop, CONCURRENCY))
        await asyncio.sleep(2)  # steady state first
        started = time.monotonic()
        for i, victim in enumerate(old):
            # Off the event loop: the load keeps streaming while the replacement starts.
            host = await asyncio.to_thread(lab.host, f"new{i}")
            await asyncio.to_thread(lab.mocker, host, smollm2_tokenizer_dir, *mocker_args)
            await asyncio.to_thread(fe.wait_for_instances, WORKERS + 1, 60)
            await _until_a_stream_starts(old_hosts[i])  # the drain has work
            victim.sigterm()
            tally.fault(f"SIGTERM old worker {i + 1} of {WORKERS} after its replacement registered")
            await asyncio.to_thread(victim.proc.wait, 40)
            assert victim.proc.returncode == 0, victim.tail()
            await asyncio.to_thread(fe.wait_for_instances, WORKERS, 30)
        tally.notes["roll_s"] = round(time.monotonic() - started, 2)
        await asyncio.sleep(2)  # steady state after
        stop.set()
        await asyncio.wait_for(load, 90)
    # The drain had work to carry: every old worker still served streams at its SIGTERM.
    drained = sum("in-flight requests" in v.log_text() for v in old)
    tally.notes["old_workers_draining_streams"] = drained
    record("rolling_replacement", tally)
    assert drained == WORKERS, [v.tail() for v in old]
    assert tally.sent >= 20, tally.summary()
    assert tally.losses == 0 and tally.completed == tally.sent, tally.summary()
