"""The lab itself: a frontend on one simulated host serves through a mocker on another, with etcd
on a third, and a cut link really cuts (a stand-in for a GPU engine: the mocker)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.chaos.hosts import HTTP_PORT, Lab
from tests.chaos.load import client, stream_completion
from tests.chaos.tally import Tally
from tests.support.procs import wait_until

pytestmark = [pytest.mark.timeout(120)]
MODEL = "chaos-mock"


async def test_frontend_serves_through_mocker_on_other_hosts(lab: Lab, smollm2_tokenizer_dir: Path):
    etcd_host, fe_host, worker_host = lab.host("etcd"), lab.host("fe"), lab.host("w1")
    assert len({etcd_host.ip, fe_host.ip, worker_host.ip, lab.client_ip}) == 4
    lab.etcd(etcd_host)
    lab.mocker(worker_host, smollm2_tokenizer_dir, "--model-name", MODEL, "--speedup-ratio", "20")
    fe = lab.frontend(fe_host)
    fe.wait_for_instances(1)
    # The instance is reached at the worker host's own address, not a loopback one.
    addresses = [inst["address"] for inst in fe.instances()]
    assert len(addresses) == 1 and addresses[0].startswith(f"{worker_host.ip}:"), addresses

    # Nothing listens on the frontend's port in the test's own namespace or the worker's.
    probe = worker_host.run(
        ["python3", "-c", f"import socket; socket.create_connection(('127.0.0.1', {HTTP_PORT}), 2)"]
    )
    assert probe.returncode != 0

    tally = Tally()
    async with client() as http:
        for _ in range(3):
            tally.add(await stream_completion(http, fe.url, MODEL, 16))
    assert (tally.sent, tally.completed, tally.losses) == (3, 3, 0), tally.summary()


def test_cut_link_drops_packets_and_restore_brings_them_back(lab: Lab):
    a, b = lab.host("a"), lab.host("b")
    listener = b.spawn("listener", [sys.executable, "-m", "http.server", "--bind", b.ip, "8080"])
    connect = f"import socket; socket.create_connection(('{b.ip}', 8080), timeout=1.5).close()"

    def reachable() -> bool:
        return a.run([sys.executable, "-c", connect]).returncode == 0

    wait_until(reachable, 20, "the listener on host b")
    b.cut()
    assert not reachable()
    b.restore()
    wait_until(reachable, 10, "host b after its link is restored")
    listener.stop()
