"""NATS restarted under KV routing: while KV events cannot flow, requests keep succeeding (routing
is approximate); once NATS is back the router's index catches up (its reconnect asks every worker
to replay what it missed; late events and gaps in event ids do the same) and prefix routing is
exact again. (Engine: the mocker, a stand-in for a GPU engine; each component on its own simulated
host.)"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import pytest

from tests.chaos.hosts import FrontendOnHost, Host, Lab
from tests.chaos.load import client, scrape, stream_completion, worker_completed
from tests.chaos.tally import Tally, record
from tests.support.graph import metric_value

pytestmark = [pytest.mark.timeout(180)]
MODEL = "chaos-mock"
LOST_PROMPTS = 24  # prompts served while NATS is down, each one probe of the router's recovery
PROBE_REPEATS = 5  # all of them on its home by chance (index not caught up): 1 in 32
WORDS = "harbor lantern keeper tide gull rope anchor storm beacon shore reef compass brine sail".split()


def prompt(seed: int, words: int = 400) -> str:
    """A long prompt (several KV blocks) that shares nothing with other seeds' prompts."""
    rng = random.Random(seed)
    return f"[{seed}] " + " ".join(rng.choice(WORDS) for _ in range(words))


async def served_by(http, fe: FrontendOnHost, workers: list[Host], text: str, tally: Tally) -> str | None:
    """Send one request and return the name of the worker that completed it."""
    before = [await asyncio.to_thread(worker_completed, w) for w in workers]
    out = await stream_completion(http, fe.url, MODEL, 8, prompt=text, timeout=30)
    tally.add(out)
    after = [await asyncio.to_thread(worker_completed, w) for w in workers]
    grew = [w.name for w, a, b in zip(workers, after, before, strict=True) if a > b]
    return grew[0] if len(grew) == 1 else None


async def test_nats_restart_kv_routing_degrades_then_recovers(lab: Lab, smollm2_tokenizer_dir: Path):
    lab.etcd(lab.host("etcd"))
    nats = lab.nats(lab.host("nats"))
    workers = [lab.host("w1"), lab.host("w2")]
    for host in workers:
        lab.mocker(host, smollm2_tokenizer_dir, "--model-name", MODEL, "--speedup-ratio", "10")
    fe = lab.frontend(lab.host("fe"), "--router-mode", "kv")
    fe.wait_for_instances(2)
    tally = Tally()
    async with client(timeout=30) as http:
        # Before: a prompt's repeats go where its blocks are.
        home = await served_by(http, fe, workers, prompt(1), tally)
        await asyncio.sleep(1)  # its KV events reach the router
        repeats = [await served_by(http, fe, workers, prompt(1), tally) for _ in range(3)]
        assert home is not None and repeats == [home] * 3, (home, repeats)

        resyncs_before = metric_value(scrape(f"{fe.url}/metrics"), "dynamo_frontend_router_kv_resyncs_total")
        assert nats.proc is not None
        nats.proc.kill9()
        nats.proc = None
        tally.fault("NATS killed (KV events cannot flow)")
        # During: every request still succeeds; each new prompt's blocks are stored on one worker,
        # unseen by the router. Each is a probe for later, used once: a probe that lands on the
        # other worker before the router has caught up leaves it cached on both, where either is
        # then a right answer.
        probes: list[tuple[int, str]] = []
        for seed in range(2, 2 + LOST_PROMPTS):
            holder = await served_by(http, fe, workers, prompt(seed), tally)
            if holder is not None:
                probes.append((seed, holder))
        await asyncio.sleep(3)

        nats.start()
        back_at = time.monotonic()
        tally.fault("NATS restarted")
        # After: fresh traffic makes both workers publish again; the router catches up: every
        # repeat of a probe goes to the one worker that cached it while NATS was down.
        recovered_at = None
        deadline = time.monotonic() + 45  # usually ~1 s (the first probe)
        seed = 100
        tried: list[tuple[str, list[str | None]]] = []
        while time.monotonic() < deadline and probes:
            for _ in range(4):
                seed += 1
                await served_by(http, fe, workers, prompt(seed), tally)
            await asyncio.sleep(1)
            probe, holder = probes.pop(0)
            repeats = [await served_by(http, fe, workers, prompt(probe), tally) for _ in range(PROBE_REPEATS)]
            tried.append((holder, repeats))
            if repeats == [holder] * PROBE_REPEATS:
                recovered_at = time.monotonic()
                break
        resyncs = metric_value(scrape(f"{fe.url}/metrics"), "dynamo_frontend_router_kv_resyncs_total")
    tally.recovery_s = None if recovered_at is None else round(recovered_at - back_at, 2)
    tally.notes.update(router_kv_resyncs_after_restart=resyncs - resyncs_before)
    record("nats_restart", tally)
    assert tally.losses == 0 and tally.completed == tally.sent, tally.summary()
    assert recovered_at is not None, f"prefix routing did not recover; probes (home, repeats): {tried}"
