"""Frontend benchmark: a concurrency sweep of streaming chat requests against frontend + mocker.

Starts our stack (``dynamo.frontend`` + ``dynamo.mocker --speedup-ratio 100``), optionally NVIDIA
Dynamo 1.6.1's (``--reference``, from its own virtual environment) and measures any other
OpenAI-compatible URLs (``--url NAME=URL``) with the same client in the same run. Targets take
turns at each concurrency level (order alternating between repeats), so machine noise hits them
alike; every row also reports the CPU time per request of each process of the stack and of the
load generator, and the CPU other processes on the machine took meanwhile.

Run: ``.venv/bin/python benchmarks/frontend_bench.py --reference`` (about 3 minutes; see --help).
Prints numbers and ratios only; ``--out FILE.md`` also writes them as markdown.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import platform
import statistics
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.loadgen import LoadSpec, run_load
from benchmarks.stacks import (
    Stack,
    machine_busy,
    model_dir,
    start_ours,
    start_reference,
)


@dataclass
class Row:
    target: str
    concurrency: int
    rep: int
    s: dict[str, float]
    cpu_ms_per_req: dict[str, float] = field(default_factory=dict)  # role -> ms/request
    other_cores: float = 0.0  # cores used by everything not measured (other engineers' jobs)
    busy_cores: float = 0.0


def _median(rows: list[Row], key: str) -> float:
    return statistics.median(r.s[key] for r in rows)


async def measure(
    stack: Stack, all_stacks: list[Stack], conc: int, rep: int, args: argparse.Namespace
) -> Row:
    spec = LoadSpec(stack.url, stack.model, args.max_tokens, endpoint=args.endpoint)
    if args.isl_words:
        spec.prompt = " ".join(["word"] * args.isl_words)
    marks: dict[str, Any] = {}

    def on_window(edge: str) -> None:
        marks[edge] = ({s.name: s.cpu() for s in all_stacks}, machine_busy())

    res = await run_load(spec, conc, args.duration, args.warmup, on_window)
    s = res.summary()
    n = max(1, int(s["requests"]))
    (cpu0, busy0), (cpu1, busy1) = marks["start"], marks["end"]
    per_req = {role: 1e3 * (cpu1[stack.name][role] - cpu0[stack.name][role]) / n for role in cpu1[stack.name]}
    per_req["loadgen"] = 1e3 * res.loadgen_cpu / n
    measured = res.loadgen_cpu + sum(
        cpu1[name][role] - cpu0[name][role] for name in cpu1 for role in cpu1[name]
    )
    busy = busy1 - busy0
    row = Row(stack.name, conc, rep, s, per_req, (busy - measured) / args.duration, busy / args.duration)
    if res.error_sample:
        print(f"  {stack.name}: {res.errors} errors, first: {res.error_sample}", file=sys.stderr)
    return row


def fmt_row(r: Row) -> str:
    s = r.s
    cpu = " ".join(f"{k}={v:.3f}" for k, v in r.cpu_ms_per_req.items())
    return (
        f"{r.target:<10} c={r.concurrency:<4} rep={r.rep} {s['req_s']:8.1f} req/s {s['tok_s']:8.0f} tok/s "
        f"ttft p50 {s['ttft_p50_ms']:7.2f} p99 {s['ttft_p99_ms']:7.2f}  itl p50 {s['itl_p50_ms']:5.2f} "
        f"p99 {s['itl_p99_ms']:5.2f} ms  tok/req {s['tokens_per_request']:.1f} events/req "
        f"{s['events_per_request']:.1f}  cpu ms/req {cpu}  busy {r.busy_cores:.2f} other {r.other_cores:.2f} cores"
    )


def summarize(rows: list[Row], targets: list[str], base: str | None) -> list[str]:
    out = [
        "| target | conc | req/s (median, min-max) | out tok/s | TTFT p50 / p99 ms | ITL p50 / p99 ms "
        "| SSE events/req | CPU ms/req: frontend / mocker / loadgen | other load (cores) | req/s ratio | TTFT p50 ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for conc in sorted({r.concurrency for r in rows}):
        base_rows = [r for r in rows if r.concurrency == conc and r.target == base]
        for t in targets:
            rs = [r for r in rows if r.concurrency == conc and r.target == t]
            if not rs:
                continue
            rq = [r.s["req_s"] for r in rs]
            cpu = {
                k: statistics.median(r.cpu_ms_per_req.get(k, float("nan")) for r in rs)
                for k in ("frontend", "mocker", "loadgen")
            }
            ratio = ttft_ratio = "-"
            if base_rows and t != base:
                ratio = f"{statistics.median(rq) / _median(base_rows, 'req_s'):.2f}"
                ttft_ratio = f"{_median(rs, 'ttft_p50_ms') / _median(base_rows, 'ttft_p50_ms'):.2f}"
            out.append(
                f"| {t} | {conc} | {statistics.median(rq):.0f} ({min(rq):.0f}-{max(rq):.0f}) "
                f"| {_median(rs, 'tok_s'):.0f} | {_median(rs, 'ttft_p50_ms'):.1f} / {_median(rs, 'ttft_p99_ms'):.1f} "
                f"| {_median(rs, 'itl_p50_ms'):.2f} / {_median(rs, 'itl_p99_ms'):.2f} "
                f"| {_median(rs, 'events_per_request'):.1f} "
                f"| {cpu['frontend']:.3f} / {cpu['mocker']:.3f} / {cpu['loadgen']:.3f} "
                f"| {statistics.median(r.other_cores for r in rs):.2f} | {ratio} | {ttft_ratio} |"
            )
    return out


def machine_facts() -> list[str]:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = os.getloadavg()
    return [
        f"- date: {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {os.cpu_count()} CPUs ({cpu}), {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}",
        f"- load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
    ]


def start_stacks(args: argparse.Namespace) -> list[Stack]:
    """Start every stack asked for and wait until each serves the model."""
    path = args.model_path or model_dir()
    stacks: list[Stack] = []
    try:
        if not args.no_ours:
            stacks.append(
                start_ours(
                    path,
                    args.model,
                    args.speedup_ratio,
                    args.http_workers,
                    tuple(args.frontend_arg),
                    mocker_args=tuple(args.mocker_arg),
                )
            )
        for n in args.also_http_workers:
            stacks.append(
                start_ours(
                    path,
                    args.model,
                    args.speedup_ratio,
                    n,
                    tuple(args.frontend_arg),
                    name=f"ours-w{n}",
                    mocker_args=tuple(args.mocker_arg),
                )
            )
        for spec in args.variant:
            name, _, root = spec.partition("=")
            stacks.append(
                start_ours(
                    path,
                    args.model,
                    args.speedup_ratio,
                    args.http_workers,
                    tuple(args.frontend_arg),
                    root=Path(root).resolve(),
                    name=name,
                    mocker_args=tuple(args.mocker_arg),
                )
            )
        if args.reference:
            stacks.append(start_reference(path, args.model, args.speedup_ratio))
        for spec in args.url:
            name, _, url = spec.partition("=")
            stacks.append(Stack(name, url.rstrip("/"), args.url_model or args.model))
        for st in stacks:
            st.wait_ready()
    except BaseException:
        for st in stacks:
            st.stop()
        raise
    return stacks


async def wait_quiet(stacks: list[Stack], below: float, max_wait: float) -> None:
    """Wait (up to ``max_wait`` s) until other processes use fewer than ``below`` cores."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max_wait
    while True:
        cpu0, busy0 = sum(sum(s.cpu().values()) for s in stacks), machine_busy()
        await asyncio.sleep(1.0)
        other = machine_busy() - busy0 - (sum(sum(s.cpu().values()) for s in stacks) - cpu0)
        if other < below or loop.time() > deadline:
            return


async def in_turn(stacks: list[Stack], rep: int, args: argparse.Namespace) -> AsyncIterator[Stack]:
    """The stacks one by one, the order alternating between repeats, each once the machine is quiet
    (``--quiet-below``)."""
    for st in stacks if rep % 2 == 0 else stacks[::-1]:
        if args.quiet_below is not None:
            await wait_quiet(stacks, args.quiet_below, args.quiet_max_wait)
        yield st


async def sweep(stacks: list[Stack], args: argparse.Namespace) -> list[Row]:
    """Every level, every repeat, every stack in turn (order alternating between repeats)."""
    rows: list[Row] = []
    for conc in [int(c) for c in args.concurrency.split(",")]:
        for rep in range(args.repeats):
            async for st in in_turn(stacks, rep, args):
                row = await measure(st, stacks, conc, rep, args)
                rows.append(row)
                print(fmt_row(row), flush=True)
    return rows


def write_markdown(args: argparse.Namespace, facts: list[str], table: list[str], rows: list[Row]) -> None:
    lines = [
        "# frontend_bench",
        "",
        *facts,
        f"- command: `{' '.join(sys.argv)}`",
        f"- load: streaming chat, {args.max_tokens} output tokens (ignore_eos), "
        f"{args.duration:.0f} s measured after {args.warmup:.0f} s warm-up per row, {args.repeats} repeats",
        "",
        *table,
        "",
        f"Ratios are target / {args.base or 'reference'} (req/s: higher is better; TTFT: lower is better).",
        "",
        "<details><summary>every run</summary>",
        "",
        "```",
        *(fmt_row(r) for r in rows),
        "```",
        "</details>",
        "",
    ]
    with open(args.out, "w") as f:
        f.write("\n".join(lines))
    print(f"wrote {args.out}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-path", default=None, help="model folder (default: the prepared smollm2)")
    p.add_argument("--model", default="smollm2", help="served model name")
    p.add_argument("--concurrency", default="1,16,64,128", help="comma-separated levels")
    p.add_argument("--duration", type=float, default=8.0, help="measured seconds per run")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each run")
    p.add_argument("--repeats", type=int, default=2, help="runs per target and level")
    p.add_argument("--max-tokens", type=int, default=32, help="output tokens per request")
    p.add_argument("--isl-words", type=int, default=0, help="prompt of N words (default: one sentence)")
    p.add_argument("--endpoint", choices=("chat", "completions"), default="chat")
    p.add_argument("--speedup-ratio", type=float, default=100.0, help="mocker --speedup-ratio")
    p.add_argument("--http-workers", type=int, default=1, help="our frontend's --http-workers")
    p.add_argument("--frontend-arg", action="append", default=[], help="extra flag for our frontend")
    p.add_argument("--mocker-arg", action="append", default=[], help="extra flag for our mocker")
    p.add_argument("--reference", action="store_true", help="also run NVIDIA Dynamo 1.6.1 (DYN_REF_VENV)")
    p.add_argument("--no-ours", action="store_true", help="do not start our stack")
    p.add_argument(
        "--also-http-workers",
        type=int,
        action="append",
        default=[],
        help="N: also run our stack with --http-workers N (target ours-wN)",
    )
    p.add_argument(
        "--quiet-below",
        type=float,
        default=None,
        help="before each run, wait until other processes use fewer cores than this",
    )
    p.add_argument("--quiet-max-wait", type=float, default=60.0, help="longest such wait, seconds")
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        help="NAME=DIR: also run our stack from another checkout (e.g. a git worktree of an older commit)",
    )
    p.add_argument("--url", action="append", default=[], help="NAME=URL of another OpenAI server")
    p.add_argument("--url-model", default=None, help="model name at the --url targets")
    p.add_argument("--base", default=None, help="target the ratios compare with (default: reference)")
    p.add_argument("--out", default=None, help="also write a markdown report here")
    return p


def main() -> None:
    import uvloop

    args = build_parser().parse_args()
    stacks = start_stacks(args)
    try:
        facts = machine_facts()
        print("\n".join(facts))
        rows = uvloop.run(sweep(stacks, args))
    finally:
        for st in stacks:
            st.stop()
    names = [s.name for s in stacks]
    base = args.base or ("reference" if "reference" in names else None)
    table = summarize(rows, names, base)
    print()
    print("\n".join(table))
    if args.out:
        write_markdown(args, facts, table, rows)


if __name__ == "__main__":
    main()
