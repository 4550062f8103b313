"""A hung worker (SIGSTOP, or its link cut without a FIN) while it serves streams: the frontend
notices within ``--request-plane-liveness-timeout`` (well under the lease TTL), stops routing to
it, and with ``--migration-limit`` the streams continue on the other worker with every token; without
migration they end with a clear error. No client waits unboundedly. (Engine: the mocker, a
stand-in for a GPU engine; every component on its own simulated host.)"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.chaos.hosts import FrontendOnHost, Host, HostProcess, Lab
from tests.chaos.load import client, stream_completion, worker_completed
from tests.chaos.tally import Outcome, Tally, record

pytestmark = [pytest.mark.timeout(150)]
MODEL = "chaos-mock"
LIVENESS = 1.5  # seconds: the frontend's --request-plane-liveness-timeout here
DEFAULT_LIVENESS = 5.0  # the flag's default
TTL = 10.0  # the discovery lease TTL: detection must come well before it
STREAMS = 8
MAX_TOKENS = 120
# A bound on how long a client may stall: detection (liveness + one check interval), the migrated
# continuation's prefill on the other worker, and slack for a 2-core machine shared with others.
STALL_BOUND = 1.25 * LIVENESS + 3.0


def graph(
    lab: Lab, model_dir: Path, migration_limit: int, liveness: float | None = LIVENESS
) -> tuple[FrontendOnHost, Host, HostProcess]:
    """etcd, a frontend and two mockers, each on its own host; returns the frontend and the victim.
    ``liveness`` None: the frontend's default timeout."""
    lab.env["DYN_DISCOVERY_TTL"] = str(TTL)
    lab.etcd(lab.host("etcd"))
    victim_host = lab.host("w1")
    victim = lab.mocker(victim_host, model_dir, "--model-name", MODEL, "--speedup-ratio", "1")
    lab.mocker(lab.host("w2"), model_dir, "--model-name", MODEL, "--speedup-ratio", "1")
    fe = lab.frontend(
        lab.host("fe"),
        "--router-mode",
        "round-robin",
        "--migration-limit",
        str(migration_limit),
        *(() if liveness is None else ("--request-plane-liveness-timeout", str(liveness))),
    )
    fe.wait_for_instances(2)
    return fe, victim_host, victim


@dataclass
class Tracked:
    """One stream's token arrival times (to measure the stall a fault causes) and its end."""

    times: list[float] = field(default_factory=list)
    ended: float = 0.0

    def on_token(self, n: int) -> None:
        now = time.monotonic()
        while len(self.times) < n:
            self.times.append(now)

    def stall_after(self, t: float) -> float:
        """The longest wait for a token after time ``t`` (0 if none came after it)."""
        after = [x for x in self.times if x >= t]
        if not after:
            return 0.0
        previous = max([x for x in self.times if x < t], default=t)
        gaps = [after[0] - previous] + [b - a for a, b in itertools.pairwise(after)]
        return max(gaps)


async def tracked_stream(http, fe: FrontendOnHost, t: Tracked) -> Outcome:
    out = await stream_completion(http, fe.url, MODEL, MAX_TOKENS, on_token=t.on_token, timeout=90)
    t.ended = time.monotonic()
    return out


async def streams_through_fault(fe: FrontendOnHost, inject) -> tuple[list[Outcome], list[Tracked], float]:
    """``STREAMS`` streams; once each has tokens, ``inject()``; returns outcomes, trackers, fault time."""
    tracked = [Tracked() for _ in range(STREAMS)]
    async with client(timeout=120) as http:
        tasks = [asyncio.create_task(tracked_stream(http, fe, t)) for t in tracked]
        deadline = time.monotonic() + 30
        while any(len(t.times) < 3 for t in tracked) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert all(len(t.times) >= 3 for t in tracked), "streams did not start"
        assert all(len(t.times) < MAX_TOKENS for t in tracked), "streams ended before the fault"
        fault_at = time.monotonic()
        inject()
        outcomes = list(await asyncio.gather(*tasks))
    return outcomes, tracked, fault_at


async def after_fault_requests_avoid_the_victim(
    fe: FrontendOnHost, tally: Tally, count: int = 4, liveness: float = LIVENESS
) -> None:
    """New requests right after the detection are served at once by the live worker."""
    async with client(timeout=30) as http:
        for _ in range(count):
            out = await stream_completion(http, fe.url, MODEL, 8, timeout=liveness)
            tally.add(out)
            assert out.ok, out


async def victim_served_again(
    fe: FrontendOnHost, victim_host: Host, tally: Tally, timeout: float = 20
) -> float:
    """Once the victim answers again, requests reach it again; returns how long that took."""
    start = time.monotonic()
    before = await asyncio.to_thread(worker_completed, victim_host)
    async with client(timeout=30) as http:
        while time.monotonic() - start < timeout:
            out = await stream_completion(http, fe.url, MODEL, 8, timeout=10)
            tally.add(out)
            if await asyncio.to_thread(worker_completed, victim_host) > before:
                return time.monotonic() - start
            await asyncio.sleep(0.2)
    raise AssertionError(f"the resumed worker got no request within {timeout:.0f}s")


async def hung_worker_with_migration(lab: Lab, model_dir: Path, fault: str, liveness: float | None) -> None:
    bound = 1.25 * (liveness or DEFAULT_LIVENESS) + 3.0
    fe, victim_host, victim = graph(lab, model_dir, migration_limit=2, liveness=liveness)
    tally = Tally()
    inject, undo = (
        (victim.pause, victim.resume) if fault == "sigstop" else (victim_host.cut, victim_host.restore)
    )
    tally.fault(f"{'SIGSTOP' if fault == 'sigstop' else 'link cut of'} 1 of 2 workers mid-stream")
    outcomes, tracked, fault_at = await streams_through_fault(fe, inject)
    for out in outcomes:
        tally.add(out)
    stall = max(t.stall_after(fault_at) for t in tracked)
    tally.recovery_s = round(stall, 2)
    await after_fault_requests_avoid_the_victim(fe, tally, liveness=liveness or DEFAULT_LIVENESS)
    undo()  # seen alive again (a PONG to the frontend's probe, or a re-registration): served again
    back_s = await victim_served_again(fe, victim_host, tally)
    tally.notes.update(
        liveness_timeout_s=liveness or DEFAULT_LIVENESS,
        lease_ttl_s=TTL,
        max_tokens=MAX_TOKENS,
        victim_served_again_after_s=round(back_s, 2),
        recovery_is="the longest wait for a token on any stream after the fault (detection + migration)",
    )
    name = f"hung_worker_{fault}_migration" + ("" if liveness else "_default_timeout")
    record(name, tally)
    assert tally.losses == 0 and tally.completed == tally.sent, (tally.summary(), [o.error for o in outcomes])
    assert stall <= bound, f"a stream stalled {stall:.1f}s (bound {bound:.1f}s)"
    assert stall > 0.8 * (liveness or DEFAULT_LIVENESS), (
        f"no stall at all ({stall:.2f}s): did the fault hit a stream?"
    )


@pytest.mark.parametrize("fault", ["sigstop", "link_cut"])
async def test_hung_worker_streams_migrate_token_for_token(lab: Lab, smollm2_tokenizer_dir: Path, fault: str):
    await hung_worker_with_migration(lab, smollm2_tokenizer_dir, fault, LIVENESS)


@pytest.mark.chaos_slow
@pytest.mark.parametrize("fault", ["sigstop", "link_cut"])
async def test_hung_worker_with_the_default_liveness_timeout(
    lab: Lab, smollm2_tokenizer_dir: Path, fault: str
):
    """The frontend's defaults (5 s liveness, 10 s lease TTL): detected before the lease lapses."""
    await hung_worker_with_migration(lab, smollm2_tokenizer_dir, fault, None)


async def test_hung_worker_without_migration_ends_streams_with_a_clear_error(
    lab: Lab, smollm2_tokenizer_dir: Path
):
    fe, _, victim = graph(lab, smollm2_tokenizer_dir, migration_limit=0)
    tally = Tally()
    tally.fault("SIGSTOP 1 of 2 workers mid-stream, no migration")
    outcomes, tracked, fault_at = await streams_through_fault(fe, victim.pause)
    for out in outcomes:
        tally.add(out)
    ended = [o for o in outcomes if o.error is not None]
    # Each client hears of the failure within the bound, with a message that says what happened.
    assert ended and len(ended) < STREAMS, [o.error for o in outcomes]
    for out in ended:
        assert "stopped answering" in (out.error or ""), out.error
    # How long the failed clients waited from the fault to their error: bounded by the liveness.
    worst = max(t.ended for t, o in zip(tracked, outcomes, strict=True) if o.error is not None) - fault_at
    tally.recovery_s = round(worst, 2)
    assert worst <= STALL_BOUND, f"a client waited {worst:.1f}s for its error (bound {STALL_BOUND:.1f}s)"
    await after_fault_requests_avoid_the_victim(fe, tally)
    tally.notes.update(
        expected_failures=len(ended),
        liveness_timeout_s=LIVENESS,
        lease_ttl_s=TTL,
        recovery_is="fault -> the last failed client got its error",
    )
    record("hung_worker_sigstop_no_migration", tally)
    assert all(o.ok for o in outcomes if o.error is None)
    assert tally.completed == tally.sent - len(ended)
