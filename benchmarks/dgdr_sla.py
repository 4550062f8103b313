"""Does a DynamoGraphDeploymentRequest run locally hold its own SLA? One run, printed and written.

    .venv/bin/python benchmarks/dgdr_sla.py deploy/examples/planner/dgdr/cpu.yaml \
        --seconds 120 --out benchmarks/results/dgdr_sla_vllm_cpu.md

``python3 -m dynamo.deploy run DGDR`` profiles the request's backend for real, generates the graph
and runs it with its planner; once the graph is ready, this client sends the request's own workload
(``spec.workload``: Poisson arrivals at ``requestRate``, prompts of exactly ``isl`` random token ids,
``osl`` output tokens with ``ignore_eos``, streamed ``/v1/completions``) for ``--seconds`` and counts
the requests within ``spec.sla`` (TTFT <= ``ttft`` ms and mean ITL <= ``itl`` ms), as the reference's
SLA is read: attainment, TTFT and ITL percentiles, failed requests, and the profiler's selection.
The machine's load is recorded, and so are the processes of other sessions (``python -m dynamo.*``
pytest and benchmarks outside this script's process tree) seen while the workload ran: a run beside them is not
a quiet-machine run, and the file says so. So is a CPU speed probe (a fixed pure-Python loop)
before and after: this VM's speed moves 2-3x over a day, and a vLLM-CPU engine's ITL with it.
``--out`` keeps a table of every run written to that file (date, probe, attainment, ITL), the
newest run's details around it, and a hand-written section headed ``## Runs and reading`` at the
file's end as it was.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import aiohttp
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from planner_bench import Result, Runner, machine, one_request, pct


async def send(
    port: int, model: str, rate: float, isl: int, osl: int, seconds: float, seed: int
) -> list[Result]:
    """Open-loop Poisson arrivals at ``rate`` for ``seconds``; every request waited for."""
    rng = random.Random(seed)
    arrivals, t = [], rng.expovariate(rate)
    while t < seconds:
        arrivals.append(t)
        t += rng.expovariate(rate)
    results = [Result(at) for at in arrivals]
    url = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
        t0, tasks = time.monotonic(), []
        for at, r in zip(arrivals, results, strict=True):
            await asyncio.sleep(max(0.0, t0 + at - time.monotonic()))
            prompt = [rng.randrange(1000, 32000) for _ in range(isl)]
            tasks.append(asyncio.create_task(one_request(session, url, prompt, osl, r, model)))
        await asyncio.gather(*tasks)
    return results


def others() -> set[str]:
    """Command lines of dynamo and pytest processes that are not this script's descendants."""
    procs: dict[int, tuple[int, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        procs[int(entry.name)] = (ppid, cmd)
    me, found = os.getpid(), set()
    mine, up = {me}, me  # this script and the wrappers that started it (timeout, flock)
    while up in procs and up not in (0, 1):
        up = procs[up][0]
        mine.add(up)
    for pid, (_, cmd) in procs.items():
        if pid in mine:
            continue
        ancestor, hops = pid, 0
        while ancestor not in (0, 1, me) and ancestor in procs and hops < 64:
            ancestor, hops = procs[ancestor][0], hops + 1
        if ancestor != me and re.search(r"-m (dynamo\.\w+|pytest)\b|benchmarks/\w+\.py", cmd):
            found.add(" ".join(cmd.split()[:8])[:160])
    return found


class Watch:
    """Samples the load average and other sessions' processes every ``every`` seconds."""

    def __init__(self, every: float = 5.0) -> None:
        self.every = every
        self.loads: list[float] = []
        self.seen: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.loads.append(os.getloadavg()[0])
            self.seen |= others()
            self._stop.wait(self.every)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


PROBE_LOOPS = 5_000_000
RUNS_HEADING = "## Every run written to this file"
RUNS_HEAD = [
    "| started | speed probe before / after ms | requests | failed | attainment | TTFT p50 ms | ITL p50 / p99 ms | goal |",
    "|---|---|---|---|---|---|---|---|",
]


def speed_probe() -> float:
    """Milliseconds a fixed pure-Python loop takes on one core, best of three (lower is faster)."""
    best = math.inf
    for _ in range(3):
        t0, total = time.perf_counter(), 0
        for i in range(PROBE_LOOPS):
            total += i
        best = min(best, time.perf_counter() - t0)
    return best * 1000


NOTES_HEADING = "## Runs and reading"


def kept_notes(previous: str) -> list[str]:
    """The hand-written section at the end of the previous ``--out`` text (from ``NOTES_HEADING``)."""
    if NOTES_HEADING not in previous:
        return []
    return ["", NOTES_HEADING + previous.split(NOTES_HEADING, 1)[1].rstrip("\n")]


def earlier_runs(previous: str) -> list[str]:
    """The run table's rows in the previous ``--out`` text (none if it has no such table)."""
    if RUNS_HEADING not in previous:
        return []
    table = previous.split(RUNS_HEADING, 1)[1].strip().split("\n\n", 1)[0].splitlines()
    return [row for row in table if row.startswith("| ") and row not in RUNS_HEAD]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dgdr", type=Path)
    p.add_argument("--seconds", type=float, default=120.0, help="how long the workload is sent")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--port", type=int, default=18531)
    p.add_argument("--ready-timeout", type=float, default=1200.0, help="profiling + start, s")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    spec = yaml.safe_load(args.dgdr.read_text())["spec"]
    model, work, sla = spec["model"], spec["workload"], spec["sla"]
    started, load_before, probe_before = time.strftime("%Y-%m-%d %H:%M:%S %Z"), machine(), speed_probe()
    run_dir = Path(tempfile.mkdtemp(prefix="dgdr-sla-"))
    runner = Runner(args.dgdr, args.port, run_dir, model=model)
    try:
        t0 = time.monotonic()
        runner.wait_for(r"is ready; frontend", args.ready_timeout)
        ready_after = time.monotonic() - t0
        selected = next(
            (line for _, line in runner.lines if re.search(r"^selected: ", line)), "(no selection line)"
        )
        print(f"ready after {ready_after:.0f} s; {selected}", flush=True)
        watch = Watch()
        try:
            results = asyncio.run(
                send(args.port, model, float(work["requestRate"]), int(work["isl"]), int(work["osl"]),
                     args.seconds, args.seed)
            )  # fmt: skip
        finally:
            watch.stop()
        generated = (
            (run_dir / "profile" / "dgd.yaml").read_text()
            if (run_dir / "profile" / "dgd.yaml").exists()
            else ""
        )
        profile = (run_dir / "profile" / "planner_profile.json").read_text() if generated else ""
        bindings = sorted(
            {
                line.split("dynamo.vllm.cpu: ", 1)[1]
                for log in run_dir.rglob("output.log")
                for line in log.read_text(errors="replace").splitlines()
                if "dynamo.vllm.cpu: CPU binding" in line
            }
        )
        planner_log = run_dir / "planner-0" / "output.log"
        decisions = (
            [ln for ln in planner_log.read_text().splitlines() if "planner decision" in ln]
            if planner_log.exists()
            else []
        )
    finally:
        runner.stop()
        shutil.rmtree(run_dir, ignore_errors=True)
    ok = [r for r in results if r.ok]
    failed = [r for r in results if not r.ok]
    within = [r for r in ok if r.ttft * 1000 <= sla["ttft"] and r.itl * 1000 <= sla["itl"]]
    attainment = len(within) / len(results) if results else math.nan
    ttfts, itls = [r.ttft * 1000 for r in ok], [r.itl * 1000 for r in ok]
    cmd = " ".join(["python", "benchmarks/dgdr_sla.py", *(argv if argv is not None else sys.argv[1:])])
    probe_after = speed_probe()
    goal = "met" if attainment >= 0.9 and not failed else "MISSED"
    previous = args.out.read_text() if args.out is not None and args.out.exists() else ""
    runs = [
        *earlier_runs(previous),
        f"| {started} | {probe_before:.0f} / {probe_after:.0f} | {len(results)} | {len(failed)} | "
        f"{attainment:.1%} | {pct(ttfts, 0.5):.0f} | {pct(itls, 0.5):.1f} / {pct(itls, 0.99):.1f} | {goal} |",
    ]
    lines = [
        f"# DGDR run locally against its own SLA: `{args.dgdr}`",
        "",
        f"Command: `{cmd}`  ",
        f"Started: {started}  ",
        f"Machine before: {load_before}  ",
        f"Machine after: {machine()}  ",
        f"CPU speed probe ({PROBE_LOOPS:,} additions in pure Python, best of 3): {probe_before:.0f} ms before, "
        f"{probe_after:.0f} ms after  ",
        f"Load average (1 min) while the workload ran: {min(watch.loads):.2f} to {max(watch.loads):.2f}  ",
        "Other sessions' processes while it ran: "
        + (
            f"{len(watch.seen)}, so the machine was **shared**: "
            + "; ".join(f"`{c}`" for c in sorted(watch.seen)[:8])
            if watch.seen
            else "none (a quiet machine)"
        ),
        "",
        f"Request: model `{model}`, backend `{spec.get('backend')}`, workload ISL {work['isl']} / OSL "
        f"{work['osl']} at {work['requestRate']} req/s; SLA TTFT <= {sla['ttft']} ms, ITL <= {sla['itl']} ms.",
        f"Graph ready {ready_after:.0f} s after `python3 -m dynamo.deploy run` started (profiling included); "
        f"`{selected}`.",
        "",
        "| requests | failed | within SLA | attainment | TTFT p50 / p99 ms | ITL p50 / p99 ms |",
        "|---|---|---|---|---|---|",
        f"| {len(results)} | {len(failed)} | {len(within)} | {attainment:.1%} | "
        f"{pct(ttfts, 0.5):.0f} / {pct(ttfts, 0.99):.0f} | {pct(itls, 0.5):.1f} / {pct(itls, 0.99):.1f} |",
        "",
        f"Goal: attainment >= 90% and 0 failed: **{goal}**.",
        "",
        RUNS_HEADING,
        "",
        *RUNS_HEAD,
        *runs,
        "",
        "Failures (first 5): " + ("; ".join(r.error for r in failed[:5]) or "none"),
        "",
        "vLLM-CPU core binding (profiling and serving engines): " + ("; ".join(bindings) or "none logged"),
        "",
        "Requests outside the SLA (sent at s: TTFT ms / ITL ms): "
        + (
            ", ".join(
                f"{r.sent_at:.1f}: {r.ttft * 1000:.0f} / {r.itl * 1000:.0f}"
                for r in ok
                if not (r.ttft * 1000 <= sla["ttft"] and r.itl * 1000 <= sla["itl"])
            )
            or "none"
        ),
        "",
        "The planner's decisions (last 5):",
        "",
        *[f"    {d}" for d in decisions[-5:]],
        "",
        "Profile the planner read (`planner_profile.json`):",
        "",
        *[f"    {ln}" for ln in profile.splitlines()],
        "",
        "Generated graph (`dgd.yaml`):",
        "",
        *[f"    {ln}" for ln in generated.splitlines()],
        *kept_notes(previous),
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        args.out.write_text(report)
    if ttfts:
        print(f"median TTFT {statistics.median(ttfts):.0f} ms, median ITL {statistics.median(itls):.1f} ms")


if __name__ == "__main__":
    main()
