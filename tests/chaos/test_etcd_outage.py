"""etcd unavailable for 30 s, then back with its data lost: serving continues on the workers the
frontend knows, every worker re-registers, and a worker started during the outage is served once
etcd returns. (Engine: the mocker, a stand-in for a GPU engine; each component on its own simulated
host.)"""

from __future__ import annotations

import asyncio
import time
from functools import partial
from pathlib import Path

import pytest

from tests.chaos.hosts import EtcdOnHost, FrontendOnHost, Host, HostProcess, Lab
from tests.chaos.load import client, steady_load, stream_completion, worker_completed
from tests.chaos.tally import Outcome, Tally, record

pytestmark = [pytest.mark.timeout(200)]
MODEL = "chaos-mock"
TTL = 6.0
OUTAGE = 30.0


async def outage(
    lab: Lab,
    etcd: EtcdOnHost,
    model_dir: Path,
    fe: FrontendOnHost,
    tally: Tally,
    during: list[tuple[float, Outcome]],
) -> tuple[float, float, int, HostProcess, Host, float]:
    """Kill etcd, start a worker meanwhile, bring etcd back empty; times and the late worker."""
    args = ("--model-name", MODEL, "--speedup-ratio", "5")
    await asyncio.sleep(1)
    assert etcd.proc is not None
    etcd.proc.kill9()
    etcd.proc = None
    down_at = time.monotonic()
    tally.fault(f"etcd killed for {OUTAGE:.0f} s")
    await asyncio.sleep(2)
    # A worker started while etcd is down: it must be served once etcd is back.
    late_host = lab.host("w3")
    late = lab.mocker(late_host, model_dir, *args, wait=False)
    await asyncio.sleep(max(0.0, OUTAGE - (time.monotonic() - down_at)))
    served_during = sum(1 for _, o in during if o.ok)
    await asyncio.to_thread(etcd.restart, False)  # back with an empty data dir
    back_at = time.monotonic()
    tally.fault("etcd restarted with its data lost")
    # Every worker re-registers (the two old ones, and the late one).
    await asyncio.to_thread(fe.wait_for_instances, 3, 30)
    registered_at = time.monotonic()
    late_served = 0.0
    deadline = time.monotonic() + 20
    while late_served < 1 and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        late_served = await asyncio.to_thread(worker_completed, late_host)
    return registered_at, back_at, served_during, late, late_host, late_served


async def test_etcd_outage_with_data_loss(lab: Lab, smollm2_tokenizer_dir: Path):
    lab.env["DYN_DISCOVERY_TTL"] = str(TTL)
    etcd = lab.etcd(lab.host("etcd"))
    args = ("--model-name", MODEL, "--speedup-ratio", "5")
    for name in ("w1", "w2"):
        lab.mocker(lab.host(name), smollm2_tokenizer_dir, *args)
    fe = lab.frontend(lab.host("fe"))
    fe.wait_for_instances(2)

    tally = Tally()
    during: list[tuple[float, Outcome]] = []
    stop = asyncio.Event()
    async with client(timeout=30) as http:
        send = partial(stream_completion, http, fe.url, MODEL, 24, timeout=30)
        load = asyncio.create_task(steady_load(send, tally, stop, 2, during))
        try:
            registered_at, back_at, served_during, late, late_host, late_served = await outage(
                lab, etcd, smollm2_tokenizer_dir, fe, tally, during
            )
        finally:
            stop.set()
            await asyncio.wait_for(load, 60)
    tally.recovery_s = round(registered_at - back_at, 2)
    tally.notes.update(
        outage_s=OUTAGE,
        lease_ttl_s=TTL,
        served_during_outage=served_during,
        late_worker_completed=late_served,
        late_worker_alive=late.alive(),
    )
    record("etcd_outage_data_lost", tally)
    assert served_during >= 10, tally.summary()
    assert tally.losses == 0 and tally.completed == tally.sent, tally.summary()
    assert late_served >= 1, late.tail()
