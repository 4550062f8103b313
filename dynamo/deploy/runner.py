"""Run a planned graph as local processes: start, probe readiness, report, stop.

Every replica runs in its own process group (its shell, its engine, its ``tee``), so stopping the
graph reaches every process a replica started: SIGTERM to each group, then SIGKILL to whatever is
left after the grace period. A replica that exits stops the graph and is reported with the tail of
its log (a pod would be restarted; on a laptop a crash is better shown than hidden).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from dynamo.deploy import probes
from dynamo.deploy.plan import Plan, Process

STARTING = "starting"
READY = "ready"
NOT_READY = "not ready"
EXITED = "exited"
TAIL_LINES = 30


@dataclass
class Replica:
    """A started process and what we know about it."""

    plan: Process
    popen: asyncio.subprocess.Process | None = None
    state: str = STARTING
    returncode: int | None = None
    reported_state: str = STARTING
    started_at: float = field(default_factory=time.monotonic)


def tail(path: Path, lines: int = TAIL_LINES) -> list[str]:
    """The last ``lines`` lines of a log file (empty if it does not exist)."""
    try:
        with path.open("r", errors="replace") as f:
            return [line.rstrip("\n") for line in deque(f, maxlen=lines)]
    except OSError:
        return []


class GraphRunner:
    """Supervises one graph's processes; ``run`` returns the exit code for the CLI."""

    def __init__(self, plan: Plan, out: IO[str] | None = None, grace: float = 10.0) -> None:
        self.plan = plan
        self.out = out or sys.stdout
        self.grace = grace
        self.replicas = [Replica(p) for p in plan.processes]
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._all_ready_reported = False

    def say(self, text: str = "") -> None:
        self.out.write(text + "\n")
        self.out.flush()

    # -- start ---------------------------------------------------------------------------------

    async def _start(self, replica: Replica) -> None:
        p = replica.plan
        p.tmp_dir.mkdir(parents=True, exist_ok=True)
        p.log_path.parent.mkdir(parents=True, exist_ok=True)
        with p.log_path.open("ab") as log_file:
            replica.popen = await asyncio.create_subprocess_exec(
                *p.argv,
                cwd=p.cwd,
                env=p.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        replica.started_at = time.monotonic()
        if p.readiness is None:
            replica.state = replica.reported_state = READY

    async def _watch_exit(self, replica: Replica) -> None:
        assert replica.popen is not None
        replica.returncode = await replica.popen.wait()
        replica.state = EXITED
        self._changed.set()

    async def _probe_loop(self, replica: Replica) -> None:
        probe = replica.plan.readiness
        if probe is None:
            return
        timing = probes.ProbeTiming.of(probe)
        await asyncio.sleep(timing.initial_delay)
        successes = failures = 0
        while replica.state != EXITED:
            ok = await probes.check(probe, replica.plan.env, replica.plan.cwd)
            if replica.state == EXITED:
                return
            if ok:
                successes, failures = successes + 1, 0
                if successes >= timing.success_threshold and replica.state != READY:
                    replica.state = READY
                    self._changed.set()
            else:
                successes, failures = 0, failures + 1
                if replica.state == READY and failures >= timing.failure_threshold:
                    replica.state = NOT_READY
                    self._changed.set()
            # Until first ready, probe at least every second: same verdicts, less waiting on a laptop.
            first_wait = replica.state == STARTING
            await asyncio.sleep(min(timing.period, 1.0) if first_wait else timing.period)

    # -- report --------------------------------------------------------------------------------

    def status_table(self) -> str:
        rows = [("SERVICE", "REPLICA", "PID", "PORT", "STATE", "READINESS")]
        for r in self.replicas:
            state = r.state if r.state != EXITED else f"exited ({r.returncode})"
            pid = str(r.popen.pid) if r.popen else "-"
            rows.append(
                (
                    r.plan.service,
                    str(r.plan.replica),
                    pid,
                    str(r.plan.port),
                    state,
                    probes.describe(r.plan.readiness),
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
        return "\n".join(
            "  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1]
            for row in rows
        )

    def frontend_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{p.port}" for p in self.plan.frontends()]

    def _report_transitions(self) -> None:
        for r in self.replicas:
            if r.state != r.reported_state and r.state != EXITED:
                elapsed = time.monotonic() - r.started_at
                self.say(f"{r.plan.name}: {r.reported_state} -> {r.state} ({elapsed:.1f}s after start)")
                r.reported_state = r.state

    def _report_exit(self, replica: Replica) -> None:
        p = replica.plan
        self.say(f"\n{p.name} exited with code {replica.returncode}; last lines of {p.log_path}:")
        for line in tail(p.log_path) or ["(no output)"]:
            self.say(f"  | {line}")

    def _report_not_ready(self, timeout: float) -> None:
        self.say(f"\nnot ready after {timeout:g}s:")
        for r in self.replicas:
            if r.state != READY:
                self.say(
                    f"{r.plan.name} ({probes.describe(r.plan.readiness)}); last lines of {r.plan.log_path}:"
                )
                for line in tail(r.plan.log_path, 15) or ["(no output)"]:
                    self.say(f"  | {line}")

    # -- run / stop ----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event | None = None, ready_timeout: float | None = None) -> int:
        """Start everything and supervise until ``stop`` is set (0) or a replica exits (1)."""
        stop = stop or asyncio.Event()
        graph = self.plan.graph
        self.say(f"graph {graph.name}: {len(self.replicas)} processes; logs under {self.plan.run_dir}")
        for warning in self.plan.warnings + [w for p in self.plan.processes for w in p.warnings]:
            self.say(f"warning: {warning}")
        if not self.replicas:
            self.say("nothing to run (every service has replicas: 0)")
            return 0
        stop_task = asyncio.create_task(stop.wait())
        try:
            for replica in self.replicas:
                await self._start(replica)
                self._tasks.append(asyncio.create_task(self._watch_exit(replica)))
                self._tasks.append(asyncio.create_task(self._probe_loop(replica)))
            self.say(self.status_table())
            deadline = None if ready_timeout is None else time.monotonic() + ready_timeout
            while True:
                self._changed.clear()
                exited = [r for r in self.replicas if r.state == EXITED]
                if exited:
                    self.say(self.status_table())
                    for r in exited:
                        self._report_exit(r)
                    return 1
                if stop.is_set():
                    return 0
                all_ready = all(r.state == READY for r in self.replicas)
                if all_ready and not self._all_ready_reported:
                    self._all_ready_reported = True
                    urls = ", ".join(self.frontend_urls()) or "no frontend"
                    self.say(self.status_table())
                    self.say(f"graph {graph.name} is ready; frontend: {urls} (Ctrl-C stops it)")
                wait_for: float | None = None
                if deadline is not None and not self._all_ready_reported:
                    wait_for = deadline - time.monotonic()
                    if wait_for <= 0:
                        self.say(self.status_table())
                        self._report_not_ready(ready_timeout or 0)
                        return 1
                changed = asyncio.create_task(self._changed.wait())
                await asyncio.wait(
                    {changed, stop_task}, timeout=wait_for, return_when=asyncio.FIRST_COMPLETED
                )
                changed.cancel()
                self._report_transitions()
        finally:
            stop_task.cancel()
            await self.stop_all()

    async def stop_all(self) -> None:
        """SIGTERM every replica's process group, SIGKILL what is left after the grace period."""
        live = [r for r in self.replicas if r.popen is not None and r.popen.returncode is None]
        if live:
            self.say(f"stopping {len(live)} processes (SIGTERM, SIGKILL after {self.grace:g}s)")
        for r in self.replicas:
            if r.popen is not None:
                _signal_group(r.popen.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        for r in live:
            assert r.popen is not None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(r.popen.wait(), max(0.0, deadline - time.monotonic()))
        for r in self.replicas:
            if r.popen is not None:
                # Also reaps the group's stragglers (a `tee`, an engine's children) after a clean exit.
                _signal_group(r.popen.pid, signal.SIGKILL)
                await r.popen.wait()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
