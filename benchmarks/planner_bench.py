"""Planner benchmark: a seeded load trace (idle, ramp up, plateau, ramp down, idle) replayed against
a mocker graph with the SLA planner and against static graphs sized for the trace's peak and mean.

    .venv/bin/python benchmarks/planner_bench.py --out benchmarks/results/planner_bench.md \
        --plot benchmarks/results/planner_bench.png

1. The mocker is profiled for real (``python3 -m dynamo.profiler --mocker``, one batch size), which
   writes the planner's profile.
2. The trace's peak rate is scaled to this machine through that profile: the rate at which the
   planner's own arithmetic (its SLA policy, aggregated: throughput and batch-slot terms) asks for
   ``--plateau-workers`` (default 5.5, so 6 workers) engines. The static graphs get that arithmetic's
   answer at the peak rate and at the trace's mean rate.
3. Each graph runs under the local runner (``python3 -m dynamo.deploy run``): a frontend, mocker
   workers with the profiled flags, and for the planner run a ``Planner`` service
   (``optimization_target: sla``, the SLA and profile of step 1, the Kalman predictor with the
   reference's documented tuning for rapid changes, everything else the defaults).
   The same arrivals (Poisson, seeded, open loop) are sent to each: streamed ``/v1/completions``
   with random token-id prompts of exactly ISL tokens and OSL output tokens (``ignore_eos``).

Printed and written: SLA attainment (share of requests with TTFT <= the target and mean ITL <= the
target), TTFT/ITL percentiles, failed requests, worker-seconds (worker processes alive, integrated
over the trace, from the runner's own "started"/"drained" lines), and for the planner run the time
from the load's fall to the decision to go back to the minimum and to the last drain.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
MODEL = "bench-planner"
SERVICE = "MockerWorker"


# --- the trace ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Trace:
    """Rate over time: idle, linear ramp up, plateau, linear ramp down, idle (seconds each)."""

    peak: float  # requests/s on the plateau
    phases: tuple[float, float, float, float, float]

    @property
    def duration(self) -> float:
        return sum(self.phases)

    @property
    def load_falls_at(self) -> float:
        """Start of the final idle phase."""
        return sum(self.phases[:4])

    def rate(self, t: float) -> float:
        idle1, up, plateau, down, _ = self.phases
        if t < idle1:
            return 0.0
        t -= idle1
        if t < up:
            return self.peak * t / up
        t -= up
        if t < plateau:
            return self.peak
        t -= plateau
        if t < down:
            return self.peak * (1 - t / down)
        return 0.0

    @property
    def mean(self) -> float:
        _, up, plateau, down, _ = self.phases
        return self.peak * (up / 2 + plateau + down / 2) / self.duration

    def arrivals(self, seed: int) -> list[float]:
        """Poisson arrivals of the rate (thinning), the same for a given seed."""
        rng = random.Random(seed)
        out: list[float] = []
        t = 0.0
        while True:
            t += rng.expovariate(self.peak)
            if t >= self.duration:
                return out
            if rng.random() < self.rate(t) / self.peak:
                out.append(t)


# --- the profile and sizing ---------------------------------------------------------------------


def profile_mocker(out: Path, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [
        PY, "-m", "dynamo.profiler", "--mocker", "--model", MODEL, "--isl", str(args.isl), "--osl",
        str(args.osl), "--ttft", str(args.ttft), "--itl", str(args.itl), "--request-rate", "1",
        "--batches", str(args.batch), "--output-dir", str(out),
    ]  # fmt: skip
    subprocess.run(
        cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, timeout=300
    )
    return {"command": " ".join(cmd[1:]), **json.loads((out / "planner_profile.json").read_text())}


def engines_needed(profile_path: Path, rate: float, args: argparse.Namespace) -> float:
    """The planner's own aggregated arithmetic (no corrections, no backlog) at ``rate``: one
    decision of its SLA policy, read back from the decision's inputs."""
    from dynamo.planner.config import PlannerConfig
    from dynamo.planner.observation import Observation, Traffic
    from dynamo.planner.policy import SlaPolicy
    from dynamo.planner.profile import load_profile

    cfg = PlannerConfig.model_validate(
        {
            "environment": "virtual", "backend": "mocker", "mode": "agg", "optimization_target": "sla",
            "ttft_ms": args.ttft, "itl_ms": args.itl, "load_predictor": "constant",
            "throughput_adjustment_interval_seconds": 1.0,
        }
    )  # fmt: skip
    traffic = Traffic(seconds=1.0, requests=rate, isl=float(args.isl), osl=float(args.osl))
    (decision,) = SlaPolicy(cfg, load_profile(profile_path)).propose(
        Observation(ready={"decode": 1}, traffic=traffic)
    )
    i = decision.inputs
    return max(i["prefill_engines_needed"] + i["decode_engines_needed"], i["decode_slot_engines_needed"])


def rate_needing(profile_path: Path, workers: int, args: argparse.Namespace) -> float:
    """The middle of the range of request rates for which the arithmetic asks for ``workers``."""

    def first_rate(n: int) -> float:  # the least rate needing more than n - 1 workers (bisection)
        lo, hi = 0.0, 1.0
        while math.ceil(engines_needed(profile_path, hi, args) - 1e-9) < n:
            lo, hi = hi, hi * 2
        for _ in range(40):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if math.ceil(engines_needed(profile_path, mid, args) - 1e-9) < n else (lo, mid)
        return hi

    return (first_rate(workers) + first_rate(workers + 1)) / 2


# --- a graph under the local runner -------------------------------------------------------------


def graph_yaml(name: str, replicas: int, args: argparse.Namespace, profile_dir: Path | None) -> dict:
    ns = {"dynamoNamespace": name}
    mocker = (
        f'exec python3 -m dynamo.mocker --model-path "$(python3 -m dynamo.models prepare smollm2 '
        f'--tokenizer-only -q)" --model-name {MODEL} --max-num-seqs {args.batch}'
    )
    services: dict[str, Any] = {
        "Frontend": {
            **ns,
            "componentType": "frontend",
            "extraPodSpec": {"mainContainer": {"command": ["python3", "-m", "dynamo.frontend"]}},
        },
        SERVICE: {
            **ns,
            "componentType": "worker",
            "replicas": replicas,
            "readinessProbe": {"httpGet": {"path": "/health", "port": "system"}, "periodSeconds": 0.5},
            "extraPodSpec": {"mainContainer": {"command": ["/bin/sh", "-c"], "args": [mocker]}},
        },
    }
    if profile_dir is not None:
        config = {
            "environment": "kubernetes",  # the runner makes it virtual
            "backend": "mocker",
            "mode": "agg",
            "optimization_target": "sla",
            "ttft_ms": args.ttft,
            "itl_ms": args.itl,
            "throughput_adjustment_interval_seconds": args.interval,
            "min_endpoint": 1,
            "max_gpu_budget": args.budget,
            "profile_results_dir": str(profile_dir),
            # The reference's documented Kalman tuning "for workloads with rapid changes" (its
            # planner examples); the defaults' process noise lags a 30 s ramp by about an interval.
            "load_predictor": "kalman",
            "kalman_q_level": 2.0,
            "kalman_q_trend": 0.5,
            "kalman_r": 5.0,
            "kalman_min_points": 3,
        }
        services["Planner"] = {
            **ns,
            "componentType": "planner",
            "extraPodSpec": {
                "mainContainer": {
                    "command": ["python3", "-m", "dynamo.planner"],
                    "args": ["--config", json.dumps(config)],
                }
            },
        }
    return {
        "apiVersion": "nvidia.com/v1alpha1",
        "kind": "DynamoGraphDeployment",
        "metadata": {"name": name},
        "spec": {"envs": [{"name": "DYN_LOG", "value": "info"}], "services": services},
    }


class Runner:
    """``python3 -m dynamo.deploy run`` with its output lines timestamped as they arrive."""

    def __init__(self, graph: Path, port: int, run_dir: Path, model: str = MODEL) -> None:
        self.port = port
        self.model = model
        self.lines: list[tuple[float, str]] = []
        self.proc = subprocess.Popen(
            [PY, "-m", "dynamo.deploy", "run", str(graph), "--port", str(port), "--run-dir", str(run_dir),
             "--grace", "5"],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
            env={**os.environ, "ETCD_ENDPOINTS": "", "DYN_FILE_DISCOVERY_DIR": ""},
        )  # fmt: skip
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def wait_for(self, pattern: str, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for at, line in list(self.lines):
                if re.search(pattern, line):
                    return at
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        tail = "\n".join(line for _, line in self.lines[-40:])
        raise RuntimeError(f"runner did not print /{pattern}/ in {timeout}s:\n{tail}")

    def ready_instances(self) -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                body = json.loads(r.read())
        except urllib.error.HTTPError as e:
            body = json.loads(e.read())
        except OSError:
            return 0
        return sum(1 for i in body.get("instances", []) if i.get("model") == self.model)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._reader.join(timeout=5)


# --- the client ---------------------------------------------------------------------------------


@dataclass
class Result:
    sent_at: float  # seconds into the trace
    ok: bool = False
    ttft: float = math.nan
    itl: float = math.nan
    tokens: int = 0
    error: str = ""


async def one_request(
    session: aiohttp.ClientSession, url: str, prompt: list[int], osl: int, r: Result, model: str = MODEL
) -> None:
    body = {
        "model": model, "prompt": prompt, "max_tokens": osl, "min_tokens": osl, "ignore_eos": True,
        "stream": True, "stream_options": {"include_usage": True},
    }  # fmt: skip
    start = time.monotonic()
    first = last = 0.0
    try:
        async with session.post(f"{url}/v1/completions", json=body) as resp:
            if resp.status != 200:
                r.error = f"HTTP {resp.status}: {(await resp.text())[:200]}"
                return
            async for raw in resp.content:
                line = raw.strip()
                if not line.startswith(b"data:") or line == b"data: [DONE]":
                    continue
                event = json.loads(line[5:])
                if "error" in event:
                    r.error = str(event["error"])[:200]
                    return
                if any(c.get("text") for c in event.get("choices") or []):
                    last = time.monotonic()
                    first = first or last
                if event.get("usage"):
                    r.tokens = event["usage"]["completion_tokens"]
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        r.error = repr(exc)[:200]
        return
    if not first or r.tokens != osl:
        r.error = f"{r.tokens} tokens of {osl}"
        return
    r.ok = True
    r.ttft = first - start
    r.itl = (last - first) / (r.tokens - 1) if r.tokens > 1 else 0.0


@dataclass
class RunResult:
    name: str
    initial_workers: int
    results: list[Result]
    samples: list[tuple[float, int, int]]  # (t, live worker processes, ready instances)
    lines: list[tuple[float, str]]  # (t into the trace, runner line)
    extra: dict[str, Any] = field(default_factory=dict)


def live_workers(lines: list[tuple[float, str]], initial: int, t: float) -> int:
    n = initial
    for at, line in lines:
        if at > t:
            break
        if re.search(rf"{SERVICE}\[\d+\]: started", line):
            n += 1
        elif re.search(rf"{SERVICE}\[\d+\]: drained", line):
            n -= 1
    return n


async def replay(
    runner: Runner, trace: Trace, seed: int, args: argparse.Namespace, initial: int
) -> RunResult:
    url = f"http://127.0.0.1:{runner.port}"
    arrivals = trace.arrivals(seed)
    rng = random.Random(seed + 1)
    prompts = [[rng.randrange(1000, 40000) for _ in range(args.isl)] for _ in arrivals]
    results = [Result(at) for at in arrivals]
    samples: list[tuple[float, int, int]] = []
    t0 = time.monotonic()
    stop_sampling = asyncio.Event()

    async def sample() -> None:
        while not stop_sampling.is_set():
            t = time.monotonic() - t0
            ready = await asyncio.to_thread(runner.ready_instances)
            lines = [(at - t0, line) for at, line in list(runner.lines)]
            samples.append((t, live_workers(lines, initial, t), ready))
            await asyncio.sleep(1.0)

    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        sampler = asyncio.create_task(sample())
        tasks = []
        for at, prompt, r in zip(arrivals, prompts, results, strict=True):
            delay = t0 + at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one_request(session, url, prompt, args.osl, r)))
        rest = t0 + trace.duration - time.monotonic()
        if rest > 0:
            await asyncio.sleep(rest)
        await asyncio.gather(*tasks)
        stop_sampling.set()
        await sampler
    lines = [(at - t0, line) for at, line in list(runner.lines)]
    return RunResult("", initial, results, samples, lines)


def run_graph(
    name: str, replicas: int, trace: Trace, args: argparse.Namespace, work: Path, profile_dir: Path | None
) -> RunResult:
    graph = work / f"{name}.yaml"
    graph.write_text(yaml.safe_dump(graph_yaml(name, replicas, args, profile_dir)))
    runner = Runner(graph, args.port, work / f"run-{name}")
    try:
        runner.wait_for(r"graph \S+ is ready", 180)
        deadline = time.monotonic() + 60
        while runner.ready_instances() < replicas and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(2)  # the planner's first (baseline) scrape
        print(f"{name}: {replicas} workers ready; replaying {trace.duration:g}s", flush=True)
        result = asyncio.run(replay(runner, trace, args.seed, args, replicas))
        result.name = name
        if profile_dir is not None:
            planner_log = work / f"run-{name}" / "planner-0" / "output.log"
            result.extra["planner_log_tail"] = (
                planner_log.read_text().splitlines()[-5:] if planner_log.exists() else []
            )
        return result
    finally:
        runner.stop()


# --- the report ---------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def summarize(r: RunResult, trace: Trace, args: argparse.Namespace) -> dict[str, Any]:
    ok = [x for x in r.results if x.ok]
    within = [x for x in ok if x.ttft * 1000 <= args.ttft and x.itl * 1000 <= args.itl]
    # Worker-seconds over the trace: live processes, integrated in 0.1 s steps.
    steps = int(trace.duration * 10)
    worker_s = sum(live_workers(r.lines, r.initial_workers, i / 10) for i in range(steps)) / 10
    out: dict[str, Any] = {
        "graph": r.name,
        "requests": len(r.results),
        "failed": len(r.results) - len(ok),
        "sla_attainment": len(within) / len(r.results) if r.results else math.nan,
        "ttft_p50_ms": pct([x.ttft * 1000 for x in ok], 0.5),
        "ttft_p99_ms": pct([x.ttft * 1000 for x in ok], 0.99),
        "itl_p50_ms": pct([x.itl * 1000 for x in ok], 0.5),
        "itl_p99_ms": pct([x.itl * 1000 for x in ok], 0.99),
        "worker_seconds": worker_s,
        "max_workers": max(s[1] for s in r.samples) if r.samples else r.initial_workers,
        "errors": sorted({x.error for x in r.results if not x.ok})[:3],
    }
    if r.extra.get("planner"):
        falls = trace.load_falls_at
        to_min = [
            at
            for at, line in r.lines
            if at >= falls - 1 and re.search(rf"scaling {SERVICE}: \d+ -> 1\b", line)
        ]
        # The decision to go back to the minimum may come before the trace's idle phase (the ramp
        # down's last requests): then it counts as 0.
        last_down = [at for at, line in r.lines if re.search(rf"scaling {SERVICE}: \d+ -> 1\b", line)]
        live_at_end = live_workers(r.lines, r.initial_workers, trace.duration)
        decided = None
        if live_workers(r.lines, r.initial_workers, falls) == 1 and last_down and last_down[-1] <= falls:
            decided = 0.0
        elif to_min:
            decided = max(0.0, to_min[0] - falls)
        drained = [
            at for at, line in r.lines if at >= falls and re.search(rf"{SERVICE}\[\d+\]: drained", line)
        ]
        out["scale_down_decision_s"] = decided
        out["last_drain_after_fall_s"] = (drained[-1] - falls) if drained else None
        out["workers_at_end"] = live_at_end
        out["scale_events"] = [
            (round(at, 1), line) for at, line in r.lines if re.search(rf"scaling {SERVICE}", line)
        ]
    return out


def table(rows: list[dict[str, Any]], peak_ws: float) -> str:
    head = (
        "| graph | requests | failed | SLA attainment | TTFT p50 / p99 ms | ITL p50 / p99 ms | "
        "worker-seconds | vs peak-sized | most workers |\n|---|---|---|---|---|---|---|---|---|\n"
    )
    body = ""
    for s in rows:
        body += (
            f"| {s['graph']} | {s['requests']} | {s['failed']} | {s['sla_attainment']:.1%} | "
            f"{s['ttft_p50_ms']:.0f} / {s['ttft_p99_ms']:.0f} | {s['itl_p50_ms']:.1f} / {s['itl_p99_ms']:.1f} | "
            f"{s['worker_seconds']:.0f} | {s['worker_seconds'] / peak_ws:.0%} | {s['max_workers']} |\n"
        )
    return head + body


def plot(runs: list[RunResult], trace: Trace, path: Path, interval: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 5))
    for r in runs:
        ts = [s[0] for s in r.samples]
        ax.step(ts, [s[1] for s in r.samples], where="post", label=f"{r.name}: worker processes")
        if r.extra.get("planner"):
            ax.step(
                ts, [s[2] for s in r.samples], where="post", linestyle=":", label=f"{r.name}: ready workers"
            )
    ax.set_xlabel("seconds into the trace")
    ax.set_ylabel("workers")
    ax.axvline(trace.load_falls_at, color="grey", linewidth=0.8)
    ax.axvline(trace.load_falls_at + 3 * interval, color="grey", linewidth=0.8, linestyle="--")
    ax2 = ax.twinx()
    xs = [i * 0.5 for i in range(int(trace.duration * 2) + 1)]
    ax2.plot(xs, [trace.rate(x) for x in xs], color="black", linewidth=1, label="offered rate (req/s)")
    sent = runs[0].results
    bins = [0] * (int(trace.duration // interval) + 1)
    for x in sent:
        bins[int(x.sent_at // interval)] += 1
    ax2.step([i * interval for i in range(len(bins))], [b / interval for b in bins], where="post",
             color="black", alpha=0.4, label=f"sent (req/s, per {interval:g}s)")  # fmt: skip
    ax2.set_ylabel("requests/s")
    lines, labels = ax.get_legend_handles_labels()
    l2, lb2 = ax2.get_legend_handles_labels()
    ax.legend(lines + l2, labels + lb2, loc="upper left", fontsize=8)
    ax.set_title("planner vs static graphs: workers and load over time")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def machine() -> str:
    cpus = os.cpu_count()
    load = os.getloadavg()
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{cpus} CPUs ({model}); load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=14)
    p.add_argument("--phases", default="30,30,30,30,30", help="idle,ramp up,plateau,ramp down,idle seconds")
    p.add_argument("--plateau-workers", type=int, default=6, help="engines the peak rate needs (profile)")
    p.add_argument("--isl", type=int, default=512)
    p.add_argument("--osl", type=int, default=64)
    p.add_argument("--ttft", type=float, default=200.0, help="TTFT target, ms")
    p.add_argument("--itl", type=float, default=20.0, help="ITL target, ms")
    p.add_argument("--batch", type=int, default=2, help="the mocker's --max-num-seqs")
    p.add_argument("--interval", type=float, default=5.0, help="the planner's adjustment interval, s")
    p.add_argument("--budget", type=int, default=8, help="the planner's max_gpu_budget")
    p.add_argument("--port", type=int, default=18431)
    p.add_argument("--only", default="planner,static-peak,static-mean")
    p.add_argument("--out", type=Path)
    p.add_argument("--plot", type=Path)
    args = p.parse_args(argv)
    phases = tuple(float(x) for x in args.phases.split(","))
    assert len(phases) == 5, "--phases takes five numbers"

    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    load_before = machine()
    work = Path(tempfile.mkdtemp(prefix="planner-bench-"))
    try:
        profile_dir = work / "profile"
        prof = profile_mocker(profile_dir, args)
        profile_path = profile_dir / "planner_profile.json"
        peak = rate_needing(profile_path, args.plateau_workers, args)
        per_rps = engines_needed(profile_path, peak, args) / peak
        trace = Trace(peak, phases)  # type: ignore[arg-type]
        peak_n = math.ceil(engines_needed(profile_path, peak, args) - 1e-9)
        mean_n = math.ceil(engines_needed(profile_path, trace.mean, args) - 1e-9)
        print(f"profile: {per_rps:.3f} engines per req/s; peak {peak:.1f} req/s -> {peak_n} workers, "
              f"mean {trace.mean:.1f} req/s -> {mean_n} workers", flush=True)  # fmt: skip
        runs: list[RunResult] = []
        wanted = args.only.split(",")
        if "planner" in wanted:
            r = run_graph("planner", 1, trace, args, work, profile_dir)
            r.extra["planner"] = True
            runs.append(r)
        if "static-peak" in wanted:
            runs.append(run_graph("static-peak", peak_n, trace, args, work, None))
        if "static-mean" in wanted:
            runs.append(run_graph("static-mean", mean_n, trace, args, work, None))
        summaries = [summarize(r, trace, args) for r in runs]
        peak_ws = peak_n * trace.duration
        report = render(args, argv, trace, prof, per_rps, peak_n, mean_n, summaries, peak_ws, started,
                        load_before, machine(), runs)  # fmt: skip
        print(report)
        if args.out:
            args.out.write_text(report)
        if args.plot:
            plot(runs, trace, args.plot, args.interval)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def render(
    args: argparse.Namespace, argv: list[str] | None, trace: Trace, prof: dict[str, Any], per_rps: float,
    peak_n: int, mean_n: int, summaries: list[dict[str, Any]], peak_ws: float, started: str,
    load_before: str, load_after: str, runs: list[RunResult],
) -> str:  # fmt: skip
    cmd = " ".join(["benchmarks/planner_bench.py", *(argv if argv is not None else sys.argv[1:])])
    out = [
        "# Planner benchmark",
        "",
        f"Command: `.venv/bin/python {cmd}`  ",
        f"Started: {started}  ",
        f"Machine before: {load_before}  ",
        f"Machine after: {load_after}",
        "",
        f"Trace (seed {args.seed}): phases {'/'.join(f'{x:g}' for x in trace.phases)} s (idle, ramp up, plateau, "
        f"ramp down, idle), peak {trace.peak:.1f} req/s, mean {trace.mean:.1f} req/s, "
        f"{len(runs[0].results) if runs else 0} requests; ISL {args.isl}, OSL {args.osl}; SLA TTFT <= {args.ttft:g} ms "
        f"and mean ITL <= {args.itl:g} ms per request.",
        "",
        f"Profile (measured: `{prof['command']}`): prefill {prof['prefill']['points']}, decode "
        f"{prof['decode']['points']}. The planner's arithmetic asks for {per_rps:.3f} engines per req/s: "
        f"the peak needs {peak_n} workers, the mean {mean_n}.",
        "",
        table(summaries, peak_ws),
    ]
    for s in summaries:
        if "scale_down_decision_s" in s:
            d = s["scale_down_decision_s"]
            ld = s["last_drain_after_fall_s"]
            out += [
                f"Planner (interval {args.interval:g} s): back to the minimum decided "
                f"{'never' if d is None else f'{d:.1f} s'} after the load fell (goal: within "
                f"{3 * args.interval:g} s = 3 intervals); last drain done "
                f"{'-' if ld is None else f'{ld:.1f} s'} after; workers at the end: {s['workers_at_end']}.",
                "",
                "Scale events (s into the trace):",
                "",
                *[f"    {at:7.1f}  {line}" for at, line in s["scale_events"]],
                "",
            ]
        if s["errors"]:
            out += [f"{s['graph']} errors: {s['errors']}", ""]
    planner = next((s for s in summaries if "scale_down_decision_s" in s), None)
    if planner is not None:
        ws = planner["worker_seconds"] / peak_ws
        d = planner["scale_down_decision_s"]
        goals = [
            ("SLA attainment >= 90%", planner["sla_attainment"] >= 0.9, f"{planner['sla_attainment']:.1%}"),
            ("worker-seconds <= 60% of the peak-sized graph's", ws <= 0.6, f"{ws:.0%}"),
            ("back to the minimum within 3 intervals", d is not None and d <= 3 * args.interval,
             "never" if d is None else f"{d:.1f} s"),
            ("0 failed requests", planner["failed"] == 0, str(planner["failed"])),
        ]  # fmt: skip
        out += ["Goals (planner run):", ""]
        out += [f"- {name}: {'met' if ok else 'MISSED'} ({value})" for name, ok, value in goals]
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    main()
