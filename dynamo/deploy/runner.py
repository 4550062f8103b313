"""Run a planned graph as local processes: start, probe readiness, report, stop, and apply a
planner's decisions.

Every replica runs in its own process group (its shell, its engine, its ``tee``), so stopping the
graph reaches every process a replica started: SIGTERM to each group, then SIGKILL to whatever is
left after the grace period. A replica that exits stops the graph and is reported with the tail of
its log (a pod would be restarted; on a laptop a crash is better shown than hidden) -- unless the
runner drained it itself.

With a planner in the graph (``componentType: planner``), the runner is its virtual connector's
other side: it reads the planner's decision from the graph's store (``dynamo.planner.connector``)
and makes each scaled service's replica count match. Scale-up starts new replicas (next index, new
port); scale-down drains: SIGTERM to the replica's main process, which deregisters, finishes what it
is serving and exits (the workers' drain path), not-ready replicas first, then the newest ready ones;
the group is killed if it has not exited ``drain_timeout`` + grace seconds later.
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
from dynamo.deploy.plan import Plan, Process, ScaledPools
from dynamo.runtime.config import RuntimeConfig

STARTING = "starting"
READY = "ready"
NOT_READY = "not ready"
EXITED = "exited"
TAIL_LINES = 30
DECISION_POLL = 0.5  # seconds between reads of a planner's decision


@dataclass
class Replica:
    """A started process and what we know about it."""

    plan: Process
    popen: asyncio.subprocess.Process | None = None
    state: str = STARTING
    returncode: int | None = None
    reported_state: str = STARTING
    started_at: float = field(default_factory=time.monotonic)
    draining: bool = False  # the runner is stopping it (scale-down): its exit is not a crash


def tail(path: Path, lines: int = TAIL_LINES) -> list[str]:
    """The last ``lines`` lines of a log file (empty if it does not exist)."""
    try:
        with path.open("r", errors="replace") as f:
            return [line.rstrip("\n") for line in deque(f, maxlen=lines)]
    except OSError:
        return []


class GraphRunner:
    """Supervises one graph's processes; ``run`` returns the exit code for the CLI."""

    def __init__(
        self, plan: Plan, out: IO[str] | None = None, grace: float = 10.0, drain_timeout: float = 30.0
    ) -> None:
        self.plan = plan
        self.out = out or sys.stdout
        self.grace = grace
        self.drain_timeout = drain_timeout
        self.replicas = [Replica(p) for p in plan.processes]
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._all_ready_reported = False
        self._next_index: dict[str, int] = {}
        for p in plan.processes:
            self._next_index[p.service] = max(self._next_index.get(p.service, 0), p.replica + 1)
        self._generations: dict[str, int] = {}  # planner -> last applied decision generation

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
        if replica.draining:
            _signal_group(replica.popen.pid, signal.SIGKILL)  # reap what the replica left behind
        self._changed.set()

    def _launch(self, replica: Replica) -> None:
        self._tasks.append(asyncio.create_task(self._watch_exit(replica)))
        self._tasks.append(asyncio.create_task(self._probe_loop(replica)))

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
            if r.draining and r.state != EXITED:
                state = "draining"
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
            if r.state != r.reported_state and r.state != EXITED and not r.draining:
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
                self._launch(replica)
            self.say(self.status_table())
            for pools in self.plan.scaled:
                self._tasks.append(asyncio.create_task(self._follow_planner(pools)))
            deadline = None if ready_timeout is None else time.monotonic() + ready_timeout
            while True:
                self._changed.clear()
                for r in [r for r in self.replicas if r.state == EXITED and r.draining]:
                    self.say(f"{r.plan.name}: drained (exit {r.returncode})")
                    self.replicas.remove(r)
                exited = [r for r in self.replicas if r.state == EXITED]
                if exited:
                    self.say(self.status_table())
                    for r in exited:
                        self._report_exit(r)
                    return 1
                if stop.is_set():
                    return 0
                all_ready = all(r.state == READY for r in self.replicas if not r.draining)
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

    # -- scaling (a planner's decisions) -------------------------------------------------------

    async def _follow_planner(self, pools: ScaledPools) -> None:
        """Apply the decisions of the planner ``pools.planner`` as they change, until cancelled."""
        from dynamo.planner.connector import read_decision
        from dynamo.runtime.discovery import create_discovery
        from dynamo.runtime.store import create_store

        planner = next(p for p in self.plan.processes if p.service == pools.planner)
        discovery = create_discovery(_runtime_config(planner.env, pools.namespace))
        while True:
            try:
                await discovery.start()
                break
            except Exception as exc:  # etcd not up yet: the planner cannot publish either
                self.say(f"cannot reach the graph's store for {pools.planner}'s decisions ({exc}); retrying")
                await asyncio.sleep(5)
        store = create_store(discovery)
        try:
            while True:
                try:
                    decision = await read_decision(store, pools.namespace)
                except Exception as exc:  # the store is the graph's discovery backend: retry
                    self.say(f"cannot read {pools.planner}'s decision: {exc}")
                    decision = None
                if decision is not None and decision.generation != self._generations.get(pools.planner):
                    self._generations[pools.planner] = decision.generation
                    for pool, target in sorted(decision.targets.items()):
                        service = pools.services.get(pool)
                        if service is None:
                            continue
                        try:
                            await self.scale(
                                service, target, f"{pools.planner} decision {decision.generation}"
                            )
                        except Exception as exc:  # e.g. a command that cannot start: say so, keep steering
                            self.say(f"cannot scale {service} to {target}: {exc}")
                await asyncio.sleep(DECISION_POLL)
        finally:
            await store.close()
            await discovery.close()

    def live_replicas(self, service: str) -> list[Replica]:
        """Replicas of ``service`` that are running and not being drained."""
        return [
            r for r in self.replicas if r.plan.service == service and r.state != EXITED and not r.draining
        ]

    async def scale(self, service: str, target: int, why: str = "") -> None:
        """Start or drain replicas of ``service`` until ``target`` are live."""
        live = self.live_replicas(service)
        if len(live) == target:
            return
        self.say(f"scaling {service}: {len(live)} -> {target}" + (f" ({why})" if why else ""))
        for _ in range(target - len(live)):
            index = self._next_index.get(service, 0)
            self._next_index[service] = index + 1
            replica = Replica(self.plan.add_replica(service, index))
            self.replicas.append(replica)
            await self._start(replica)
            self._launch(replica)
            self.say(f"{replica.plan.name}: started (pid {replica.popen.pid if replica.popen else '-'})")
        if len(live) > target:
            # Not-ready replicas first (they serve nothing), then the newest ready ones.
            newest = sorted(live, key=lambda r: r.plan.replica, reverse=True)
            order = [r for r in newest if r.state != READY] + [r for r in newest if r.state == READY]
            for replica in order[: len(live) - target]:
                self.drain(replica)
        self._changed.set()

    def drain(self, replica: Replica) -> None:
        """SIGTERM the replica's main process (its drain path); kill its group if it is still there
        ``drain_timeout`` + grace seconds later. Its exit is then not a crash."""
        replica.draining = True
        if replica.popen is None or replica.popen.returncode is not None:
            return
        self.say(f"{replica.plan.name}: draining (SIGTERM to pid {replica.popen.pid})")
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(replica.popen.pid, signal.SIGTERM)
        allowance = _float(replica.plan.env.get("DYN_DRAIN_TIMEOUT"), self.drain_timeout) + self.grace
        self._tasks.append(asyncio.create_task(self._kill_after(replica, allowance)))

    async def _kill_after(self, replica: Replica, seconds: float) -> None:
        assert replica.popen is not None
        try:
            await asyncio.wait_for(asyncio.shield(replica.popen.wait()), seconds)
        except TimeoutError:
            self.say(f"{replica.plan.name}: still running {seconds:g}s after SIGTERM; killing it")
            _signal_group(replica.popen.pid, signal.SIGKILL)

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


def _float(text: str | None, default: float) -> float:
    try:
        return float(text) if text else default
    except ValueError:
        return default


def _runtime_config(env: dict[str, str], namespace: str) -> RuntimeConfig:
    """The discovery settings a process with ``env`` uses (to read the graph's store)."""
    etcd = [e.strip() for e in env.get("ETCD_ENDPOINTS", "").split(",") if e.strip()]
    backend = env.get("DYN_DISCOVERY_BACKEND") or ("etcd" if etcd else "file")
    config = RuntimeConfig(namespace=namespace, discovery_backend=backend)
    if etcd:
        config = config.with_(etcd_endpoints=tuple(etcd))
    if env.get("DYN_FILE_DISCOVERY_DIR"):
        config = config.with_(file_discovery_dir=Path(env["DYN_FILE_DISCOVERY_DIR"]))
    return config


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
