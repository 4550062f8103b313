"""Long-prompt frontend benchmark: ours vs NVIDIA Dynamo 1.6.1 on 2k-32k-token prompts, side by side.

Each stack is one frontend process + one mocker (real processes, file discovery, TCP request plane,
ZMQ events; ``benchmarks/stacks.py``), both on one derived SmolLM2 model folder whose context is
``--context`` tokens (SmolLM2's own is 8,192; the tokenizer and template are SmolLM2's), and both
mockers get the same sizing flags (``--mocker-flags``: enough KV blocks and batch budget that 128
concurrent 32k prompts never queue, so the run measures the frontends). Rows: every ISL x prefix
kind x concurrency, each stack in turn (order alternating between repeats). Each ISL and prefix kind
runs on freshly started stacks, so that no workload inherits the caches another one filled
(``--keep-stacks``: one set for the whole sweep).

Prompts (``PromptMaker``), built from SmolLM2's tokenizer to ``ISL`` tokens of English-like words:

- ``shared``: every request carries the same long text (chat: the system message; completions: the
  head of the prompt) and a short per-request question after it;
- ``unique``: every request's text starts with a nonce and the word list rotated to a random place,
  so no prefix is shared with any earlier request (no cache of any kind can help).

Measured per row: requests/s, TTFT p50/p99 (client side), frontend CPU ms per request (``/proc``,
children included; the mocker's too, in the run log: on two cores the stacks' mockers and the load
generator take CPU from the same machine), and the
event-loop lag: ours from ``dynamo_frontend_event_loop_lag_seconds``
(the highest histogram bucket that filled during the window, so "<= N ms"), and for both stacks an
HTTP probe (``GET /v1/models`` every 20 ms on its own connection: its max and p99 latency, a lag
any server shows, Rust or Python), with the frontend main threads' run-queue wait (ms per second
the event loop was runnable but had no core: ``/proc/<pid>/task/<pid>/schedstat``), which tells
lag the loop's own work caused from lag a saturated machine caused; ``--also-nice -10`` adds a
target whose frontend outranks the load generator and the mocker for a core (its lag is then the
loop's own). Ratios are ours / reference. "ours" runs this checkout's
working tree, uncommitted edits included (``--variant`` runs a clean ``git worktree``).

Run: see ``benchmarks/README.md`` ("Long-prompt benchmark"); ``--quick`` is a small smoke run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import signal
import statistics
import sys
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.frontend_bench import in_turn, machine_facts
from benchmarks.loadgen import LoadSpec, _Connection, run_load
from benchmarks.stacks import Stack, descendants, machine_busy, model_dir, start_ours, start_reference

LAG_METRIC = "dynamo_frontend_event_loop_lag_seconds"
LAG_GOAL = 0.02  # seconds: the bound on event-loop lag under load (a bucket edge of LAG_METRIC)
MOCKER_FLAGS = (
    "--block-size 16 --num-gpu-blocks-override 400000 --max-num-seqs 512 --max-num-batched-tokens 1048576"
)


# --- the model folder ------------------------------------------------------------------------------


def long_context_model(base: str, context: int) -> str:
    """A copy of ``base``'s config and tokenizer files with a context of ``context`` tokens (made once,
    beside ``base``; the weights are not copied: the mockers need none)."""
    src = Path(base)
    dst = src.with_name(f"{src.name}-ctx{context}")
    marker = dst / ".complete"
    if marker.exists():
        return str(dst)
    dst.mkdir(exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and f.suffix == ".json":
            shutil.copy2(f, dst / f.name)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["max_position_embeddings"] = context
    (dst / "config.json").write_text(json.dumps(cfg, indent=2))
    tcfg_path = dst / "tokenizer_config.json"
    if tcfg_path.exists():
        tcfg = json.loads(tcfg_path.read_text())
        tcfg["model_max_length"] = context
        tcfg_path.write_text(json.dumps(tcfg, indent=2))
    marker.touch()
    return str(dst)


# --- prompts -------------------------------------------------------------------------------------


class PromptMaker:
    """Request bodies of about ``isl`` prompt tokens (the template's few extra tokens aside)."""

    def __init__(
        self,
        tokenizer_json: str,
        isl: int,
        shared: bool,
        endpoint: str,
        model: str,
        max_tokens: int,
        seed: int,
    ) -> None:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(tokenizer_json)
        rng = random.Random(seed)
        vocab = [tok.id_to_token(i) or "" for i in range(300, 20000)]
        words = [w[1:] for w in vocab if re.fullmatch(r"Ġ[a-z]{3,9}", w)]  # whole words after a space
        body_tokens = max(16, isl - 40)  # room for the template and the per-request question
        text_words: list[str] = []
        while True:  # grow, then trim to the token budget
            text_words += [rng.choice(words) for _ in range(max(64, body_tokens // 2))]
            if len(tok.encode(" ".join(text_words), add_special_tokens=False).ids) >= body_tokens:
                break
        lo, hi = 1, len(text_words)
        while lo < hi:  # the most words within the budget
            mid = (lo + hi + 1) // 2
            if len(tok.encode(" ".join(text_words[:mid]), add_special_tokens=False).ids) <= body_tokens:
                lo = mid
            else:
                hi = mid - 1
        self.words = text_words[:lo]
        self.text = " ".join(self.words)
        self.tokens = len(tok.encode(self.text, add_special_tokens=False).ids)
        self.shared = shared
        self.endpoint = endpoint
        self.rng = random.Random(seed + 1)
        self.count = 0
        # A body is head + JSON string + tail: only the string changes between requests.
        fixed: dict[str, Any] = {
            "model": model,
            "max_tokens": max_tokens,
            "min_tokens": max_tokens,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        self._fixed = json.dumps(fixed)[:-1]
        self._text_json = json.dumps(self.text)[1:-1]
        # word boundaries of the JSON-escaped text (the words are plain ASCII letters)
        self._starts = [0]
        for w in self.words[:-1]:
            self._starts.append(self._starts[-1] + len(w) + 1)

    def body(self) -> bytes:
        self.count += 1
        n = self.count
        if self.shared:
            question = f"Question {n}: which word comes after word {n % 997}?"
            if self.endpoint == "chat":
                messages = (
                    f'[{{"role": "system", "content": "{self._text_json}"}}, '
                    f'{{"role": "user", "content": "{question}"}}]'
                )
                return f'{self._fixed}, "messages": {messages}}}'.encode()
            return f'{self._fixed}, "prompt": "{self._text_json}\\n{question}"}}'.encode()
        cut = self._starts[self.rng.randrange(len(self._starts))]
        text = f"{n}-{self.rng.getrandbits(48):x} {self._text_json[cut:]} {self._text_json[:cut]}"
        if self.endpoint == "chat":
            return f'{self._fixed}, "messages": [{{"role": "user", "content": "{text}"}}]}}'.encode()
        return f'{self._fixed}, "prompt": "{text}"}}'.encode()


# --- event-loop lag ------------------------------------------------------------------------------


def scrape_lag(url: str) -> dict[float, float]:
    """Cumulative bucket counts of our lag histogram, summed over ``--http-workers`` processes
    (empty when the server has no such metric, e.g. the reference)."""
    try:
        with urllib.request.urlopen(f"{url}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out: dict[float, float] = {}
    for line in text.splitlines():
        if line.startswith(LAG_METRIC + "_bucket"):
            le = re.search(r'le="([^"]+)"', line)
            if le:
                bound = float(le.group(1))
                out[bound] = out.get(bound, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def lag_samples_over(before: dict[float, float], after: dict[float, float], bound: float) -> tuple[int, int]:
    """Of the lag samples taken between two scrapes: how many exceeded ``bound`` (s; a bucket
    edge), and how many there were."""
    if not after or bound not in after:
        return 0, 0
    total = after[float("inf")] - before.get(float("inf"), 0.0)
    within = after[bound] - before.get(bound, 0.0)
    return int(total - within), int(total)


def max_lag_bound(before: dict[float, float], after: dict[float, float]) -> float | None:
    """The upper bound (s) of the highest bucket that gained samples between two scrapes."""
    if not after:
        return None
    bounds = sorted(after)
    prev_delta = 0.0
    highest = bounds[0]
    for b in bounds:  # cumulative counts: a bucket gained samples if its delta grew past the previous
        delta = after[b] - before.get(b, 0.0)
        if delta > prev_delta:
            highest = b
        prev_delta = delta
    return highest


async def probe(url: str, stop: asyncio.Event, interval: float = 0.02) -> list[float]:
    """Latencies (s) of ``GET /v1/models`` sent every ``interval`` until ``stop``."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    head = f"GET /v1/models HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(_Connection, host, port)
    out: list[float] = []
    try:
        while not stop.is_set():
            res = await conn.request(head, b"")
            out.append(res.latency)
            await asyncio.sleep(interval)
    finally:
        if conn.transport is not None:
            conn.transport.close()
    return out


# --- one row -------------------------------------------------------------------------------------


@dataclass
class Row:
    target: str
    isl: int
    prefix: str
    concurrency: int
    rep: int
    s: dict[str, float]
    frontend_cpu_ms: float
    mocker_cpu_ms: float
    lag_bound_ms: float | None  # ours: the highest lag bucket that filled, ms
    probe_p99_ms: float
    probe_max_ms: float
    other_cores: float
    frontend_runq_ms_s: float = float("nan")  # the frontend's loop waiting for a core, ms per second
    lag_over_goal: tuple[int, int] = (0, 0)  # ours: lag samples above LAG_GOAL, of all taken
    extra: dict[str, Any] = field(default_factory=dict)


STALL_LINE = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<func>\S+)')
STALL_HEADER = "its thread is at (most recent call last):"


def stalls_in(log_text: str) -> Counter[str]:
    """``DYN_LOOP_STALL_DUMP_MS`` stall warnings in a frontend's log -> where its event-loop thread
    was at each (its innermost frame: the last of the logged stack), counted."""
    where: Counter[str] = Counter()
    for block in log_text.split(STALL_HEADER)[1:]:
        frames = []
        for line in block.splitlines()[1:]:
            if not line.startswith(" "):
                break
            if m := STALL_LINE.search(line):
                frames.append(m)
        if frames:
            top = frames[-1]
            where[f"{top['func']} ({top['file'].rsplit('/', 1)[-1]}:{top['line']})"] += 1
    return where


@dataclass
class LongTurns:
    """``--trace-turns``: the loop turns of a row's window at or over the threshold."""

    count: int = 0
    ms: float = 0.0
    by_what: Counter[str] = field(default_factory=Counter)  # ms of those turns, by what resumed
    calls: Counter[str] = field(default_factory=Counter)


TURN_PART = re.compile(r"(?P<what>.+) x(?P<n>\d+) (?P<ms>[\d.]+)$")


def turns_in(log_text: str) -> LongTurns:
    """``TURN <ms> <callbacks> | <what> x<n> <ms> | ...`` lines (benchmarks/turn_trace) -> totals."""
    out = LongTurns()
    for line in log_text.splitlines():
        if not line.startswith("TURN "):
            continue
        head, *parts = line.split(" | ")
        out.count += 1
        out.ms += float(head.split()[1])
        for part in parts:
            if m := TURN_PART.match(part):
                out.by_what[m["what"]] += float(m["ms"])
                out.calls[m["what"]] += int(m["n"])
    return out


def turn_lines(rows: list[Row], ms: float) -> list[str]:
    """``--trace-turns``: per row, the long loop turns and what their time went to."""

    def describe(r: Row, t: LongTurns) -> str:
        top = "; ".join(f"{what} x{t.calls[what]} {v:.0f} ms" for what, v in t.by_what.most_common(6)) or "-"
        return f"{t.count} turns, {t.ms:.0f} ms in {r.s.get('requests', 0):.0f} requests; {top}"

    header = (
        f"Loop turns of {ms:g} ms or more (`--trace-turns {ms:g}`: our frontends on asyncio's own loop, "
        "slower than uvloop; `benchmarks/turn_trace`), with what their callbacks resumed (a task: the "
        "coroutine it was suspended in), by time:"
    )
    return per_row_section(header, rows, "turns", describe)


def per_row_section(header: str, rows: list[Row], key: str, describe: Any) -> list[str]:
    """A report section: ``header``, then a line per row that has ``extra[key]``: ``describe(row, it)``,
    then a blank line."""
    out = [header, ""]
    for r in rows:
        if key in r.extra:
            out.append(
                f"- ISL {r.isl} {r.prefix} c={r.concurrency} {r.target} rep {r.rep}: {describe(r, r.extra[key])}"
            )
    return [*out, ""]


def log_size(stack: Stack) -> int:
    path = stack.log_path("frontend")
    return path.stat().st_size if path is not None and path.exists() else 0


def log_window(stack: Stack, start: int, end: int) -> str:
    """The frontend's log between two ``log_size`` marks."""
    path = stack.log_path("frontend")
    if path is None or not path.exists():
        return ""
    with path.open("rb") as f:
        f.seek(start)
        return f.read(max(0, end - start)).decode(errors="replace")


async def measure(
    stack: Stack,
    stacks: list[Stack],
    maker: PromptMaker,
    isl: int,
    prefix: str,
    conc: int,
    rep: int,
    args: Any,
) -> Row:
    spec = LoadSpec(stack.url, stack.model, args.max_tokens, endpoint=args.endpoint, make_body=maker.body)
    marks: dict[str, Any] = {}
    stop_probe = asyncio.Event()
    probe_task: asyncio.Task[list[float]] | None = None

    def on_window(edge: str) -> None:
        nonlocal probe_task
        fe_cpu = sum(stack_cpu(s) for s in stacks)
        marks[edge] = (stack.cpu(), scrape_lag(stack.url), machine_busy(), fe_cpu, stack.runq_wait())
        marks[edge + "-log"] = log_size(stack)
        if edge == "start":
            probe_task = asyncio.ensure_future(probe(stack.url, stop_probe))
        else:
            stop_probe.set()

    res = await run_load(spec, conc, args.duration, args.warmup, on_window)
    latencies = await probe_task if probe_task is not None else []
    s = res.summary()
    n = max(1, int(s["requests"]))
    (cpu0, lag0, busy0, all0, rq0), (cpu1, lag1, busy1, all1, rq1) = marks["start"], marks["end"]
    runq = 1e3 * (rq1.get("frontend", 0.0) - rq0.get("frontend", 0.0)) / args.duration
    bound = max_lag_bound(lag0, lag1)
    over = lag_samples_over(lag0, lag1, LAG_GOAL)
    latencies.sort()
    other = ((busy1 - busy0) - (all1 - all0) - res.loadgen_cpu) / args.duration
    if res.error_sample:
        print(f"  {stack.name}: {res.errors} errors, first: {res.error_sample}", file=sys.stderr)
    extra: dict[str, Any] = {}
    if args.stall_dump and stack.name != "reference":
        extra["stalls"] = stalls_in(log_window(stack, marks["start-log"], marks["end-log"]))
    if args.trace_turns and stack.name != "reference":
        extra["turns"] = turns_in(log_window(stack, marks["start-log"], marks["end-log"]))
    return Row(
        stack.name,
        isl,
        prefix,
        conc,
        rep,
        s,
        1e3 * (cpu1.get("frontend", 0.0) - cpu0.get("frontend", 0.0)) / n,
        1e3 * (cpu1.get("mocker", 0.0) - cpu0.get("mocker", 0.0)) / n,
        None if bound is None else bound * 1e3,
        1e3 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] if latencies else float("nan"),
        1e3 * latencies[-1] if latencies else float("nan"),
        other,
        runq,
        over,
        extra,
    )


def stack_cpu(stack: Stack) -> float:
    return sum(stack.cpu().values())


def fmt_row(r: Row) -> str:
    s = r.s
    lag = (
        "-"
        if r.lag_bound_ms is None
        else f"<={r.lag_bound_ms:.0f} ({r.lag_over_goal[0]}/{r.lag_over_goal[1]} >{LAG_GOAL * 1e3:.0f})"
    )
    return (
        f"{r.target:<10} isl={r.isl:<6} {r.prefix:<6} c={r.concurrency:<4} rep={r.rep} {s['req_s']:7.1f} req/s "
        f"ttft p50 {s['ttft_p50_ms']:8.1f} p99 {s['ttft_p99_ms']:8.1f} ms  fe cpu {r.frontend_cpu_ms:6.2f} mocker {r.mocker_cpu_ms:6.2f} "
        f"loadgen {s.get('loadgen_cpu_ms_per_req', float('nan')):5.2f} ms/req "
        f"loop lag {lag} ms  probe p99/max {r.probe_p99_ms:.1f}/{r.probe_max_ms:.1f} ms  "
        f"err {int(s['errors'])}  other {r.other_cores:.2f} cores  fe runq {r.frontend_runq_ms_s:.0f} ms/s"
        + (f"  stalls {sum(r.extra['stalls'].values())}" if "stalls" in r.extra else "")
    )


def stall_lines(rows: list[Row], ms: float) -> list[str]:
    """``--stall-dump``: per row, how many times the loop was held ``ms`` or more, and where."""

    def describe(r: Row, where: Counter[str]) -> str:
        top = ", ".join(f"{frame} x{n}" for frame, n in where.most_common(6)) or "-"
        return f"{sum(where.values())} in {r.s.get('requests', 0):.0f} requests; {top}"

    header = (
        f"Loop stalls of {ms:g} ms or more (`--stall-dump {ms:g}`: `DYN_LOOP_STALL_DUMP_MS`), and where the "
        "event-loop thread was when each was caught (its innermost Python frame; `run (runners.py)` "
        "is uvloop's own C code: callbacks, sockets, epoll):"
    )
    return per_row_section(header, rows, "stalls", describe)


def _med(rows: list[Row], get: Any) -> float:
    vals = [v for r in rows if (v := get(r)) is not None]
    return statistics.median(vals) if vals else float("nan")


def summarize(rows: list[Row], targets: list[str], base: str) -> list[str]:
    out = [
        "| ISL | prefix | conc | target | req/s | TTFT p50 / p99 ms | frontend CPU ms/req | loop lag (ours) ms "
        "| frontend run-queue wait ms/s | probe p99 / max ms | req/s ratio | TTFT p50 ratio | TTFT p99 ratio "
        "| CPU/req ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    keys = sorted({(r.isl, r.prefix, r.concurrency) for r in rows})
    for isl, prefix, conc in keys:
        sel = [r for r in rows if (r.isl, r.prefix, r.concurrency) == (isl, prefix, conc)]
        base_rows = [r for r in sel if r.target == base]
        for t in targets:
            rs = [r for r in sel if r.target == t]
            if not rs:
                continue
            req = _med(rs, lambda r: r.s["req_s"])
            p50 = _med(rs, lambda r: r.s["ttft_p50_ms"])
            p99 = _med(rs, lambda r: r.s["ttft_p99_ms"])
            cpu = _med(rs, lambda r: r.frontend_cpu_ms)
            lags = [r.lag_bound_ms for r in rs if r.lag_bound_ms is not None]
            over = sum(r.lag_over_goal[0] for r in rs), sum(r.lag_over_goal[1] for r in rs)
            lag = f"<= {max(lags):.0f} ({over[0]} of {over[1]} > {LAG_GOAL * 1e3:.0f})" if lags else "-"
            ratios = ["-"] * 4
            if base_rows and t != base:
                ratios = [
                    f"{req / _med(base_rows, lambda r: r.s['req_s']):.2f}",
                    f"{p50 / _med(base_rows, lambda r: r.s['ttft_p50_ms']):.2f}",
                    f"{p99 / _med(base_rows, lambda r: r.s['ttft_p99_ms']):.2f}",
                    f"{cpu / _med(base_rows, lambda r: r.frontend_cpu_ms):.2f}",
                ]
            out.append(
                f"| {isl} | {prefix} | {conc} | {t} | {req:.1f} | {p50:.1f} / {p99:.1f} | {cpu:.2f} | {lag} "
                f"| {_med(rs, lambda r: r.frontend_runq_ms_s):.0f} "
                f"| {_med(rs, lambda r: r.probe_p99_ms):.1f} / {max(r.probe_max_ms for r in rs):.1f} "
                f"| {' | '.join(ratios)} |"
            )
    return out


# --- stacks and the sweep -------------------------------------------------------------------------


def start_stacks(args: argparse.Namespace, path: str) -> list[Stack]:
    mocker = tuple(args.mocker_flags.split())
    frontend = ("--router-mode", args.router_mode, *args.frontend_arg)
    stacks: list[Stack] = []

    def ours(name: str, http_workers: int = args.http_workers, **kw: Any) -> None:
        stacks.append(
            start_ours(
                path,
                args.model,
                args.speedup_ratio,
                http_workers,
                frontend,
                name=name,
                mocker_args=mocker,
                trace_turns_ms=args.trace_turns,
                **kw,
            )
        )

    try:
        if not args.no_ours:
            ours("ours")
        for n in args.also_http_workers:
            ours(f"ours-w{n}", http_workers=n)
        for nice in args.also_nice:
            ours(f"ours-nice{nice}", frontend_nice=nice)
        for spec in args.variant:
            name, _, root = spec.partition("=")
            ours(name, root=Path(root).resolve())
        if args.reference:
            ref_frontend = ("--router-mode", args.router_mode)
            stacks.append(
                start_reference(
                    path, args.model, args.speedup_ratio, frontend_args=ref_frontend, mocker_args=mocker
                )
            )
        for st in stacks:
            st.wait_ready()
    except BaseException:
        for st in stacks:
            st.stop()
        raise
    return stacks


async def sweep(args: argparse.Namespace, path: str, tokenizer_json: str) -> tuple[list[Row], list[str]]:
    """Every row; fresh stacks for each prompt length and prefix kind (``--keep-stacks``: one set for
    the whole sweep), so that no workload inherits another's caches."""
    rows: list[Row] = []
    names: list[str] = []
    stacks: list[Stack] = []
    try:
        for isl in [int(x) for x in args.isl.split(",")]:
            for prefix in args.prefix.split(","):
                if not stacks or not args.keep_stacks:
                    for st in stacks:
                        st.stop()
                    stacks = []
                    stacks = start_stacks(args, path)
                    names = [s.name for s in stacks]
                maker = PromptMaker(
                    tokenizer_json,
                    isl,
                    prefix == "shared",
                    args.endpoint,
                    args.model,
                    args.max_tokens,
                    args.seed,
                )
                print(f"# ISL {isl} ({maker.tokens} tokens of text), {prefix}", flush=True)
                for conc in [int(c) for c in args.concurrency.split(",")]:
                    for rep in range(args.repeats):
                        async for st in in_turn(stacks, rep, args):
                            spy = start_py_spy(st, args, isl, prefix, conc, rep)
                            row = await measure(st, stacks, maker, isl, prefix, conc, rep, args)
                            stop_py_spy(spy)
                            rows.append(row)
                            print(fmt_row(row), flush=True)
    finally:
        for st in stacks:
            st.stop()
    return rows, names


def py_spy() -> str | None:
    """The py-spy executable: on PATH, else beside this Python; None if neither."""
    beside = Path(sys.executable).with_name("py-spy")
    return shutil.which("py-spy") or (str(beside) if beside.exists() else None)


def start_py_spy(stack: Stack, args: argparse.Namespace, isl: int, prefix: str, conc: int, rep: int) -> Any:
    """``--py-spy DIR``: record our frontend processes and our mocker during the row (raw collapsed stacks)."""
    if not args.py_spy or stack.name == "reference":
        return None
    import subprocess

    os.makedirs(args.py_spy, exist_ok=True)
    pids = descendants(stack.procs["frontend"].pid)
    serving = pids[-1:] if len(pids) == 1 else pids[1:]  # the serving processes, not a supervisor
    targets = [("", pid) for pid in serving] + [("mocker-", stack.procs["mocker"].pid)]
    procs = []
    for role, pid in targets:
        out = (
            Path(args.py_spy)
            / f"{role}{stack.name}-{args.endpoint}-{args.router_mode}-isl{isl}-{prefix}-c{conc}-r{rep}-{pid}.txt"
        )
        cmd = [
            str(py_spy()),
            "record", "--pid", str(pid), "--format", "raw", "--rate", "200", "--nonblocking",
            "--threads", "--duration", str(int(args.warmup + args.duration)), "--output", str(out),
        ]  # fmt: skip
        procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return procs


def stop_py_spy(procs: Any) -> None:
    for p in procs or []:
        try:
            p.wait(timeout=30)
        except Exception:
            p.kill()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--quick", action="store_true", help="smoke run: ISL 2000, c=1,8, 3 s rows, 1 repeat (unless given)"
    )
    p.add_argument("--isl", default="2000,6000,32000", help="comma-separated prompt lengths (tokens)")
    p.add_argument("--prefix", default="shared,unique", help="comma-separated: shared, unique")
    p.add_argument("--concurrency", default="1,32,128", help="comma-separated levels")
    p.add_argument("--endpoint", choices=("chat", "completions"), default="chat")
    p.add_argument("--router-mode", default="round-robin", help="both frontends' --router-mode (kv, ...)")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per row")
    p.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds before each row")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--max-tokens", type=int, default=8, help="output tokens per request")
    p.add_argument("--context", type=int, default=40960, help="context of the derived model folder")
    p.add_argument("--speedup-ratio", type=float, default=1000.0, help="mockers' --speedup-ratio")
    p.add_argument("--mocker-flags", default=MOCKER_FLAGS, help="sizing flags given to both mockers")
    p.add_argument("--model", default="smollm2")
    p.add_argument("--http-workers", type=int, default=1, help="our frontend's --http-workers")
    p.add_argument("--also-http-workers", type=int, action="append", default=[], help="also ours-wN")
    p.add_argument(
        "--also-nice",
        type=int,
        action="append",
        default=[],
        help="also ours-niceN: our frontend under nice -n N (e.g. -10: its loop never waits for a core)",
    )
    p.add_argument("--frontend-arg", action="append", default=[], help="extra flag for our frontend")
    p.add_argument(
        "--keep-stacks",
        action="store_true",
        help="one set of stacks for the whole sweep (default: fresh ones per ISL and prefix kind; a "
        "kept stack's caches carry over: NVIDIA Dynamo 1.6.1's tokenizer cache, after the unique rows, "
        "stopped serving the next ISL's shared prefix)",
    )
    p.add_argument("--reference", action="store_true", help="also run NVIDIA Dynamo 1.6.1 (DYN_REF_VENV)")
    p.add_argument("--no-ours", action="store_true")
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        help="NAME=DIR: also our stack from another checkout (e.g. a git worktree of the code before a change)",
    )
    p.add_argument("--base", default=None, help="target the ratios divide by (default: reference, else ours)")
    p.add_argument("--quiet-below", type=float, default=None, help="wait until other load < this (cores)")
    p.add_argument("--quiet-max-wait", type=float, default=60.0)
    p.add_argument("--seed", type=int, default=12)
    p.add_argument(
        "--stall-dump",
        type=float,
        default=0.0,
        metavar="MS",
        help="our frontends dump their stacks when the loop is held MS ms (DYN_LOOP_STALL_DUMP_MS); "
        "each row counts the dumps and where the loop was",
    )
    p.add_argument(
        "--trace-turns",
        type=float,
        default=0.0,
        metavar="MS",
        help="our frontends run on asyncio's own loop and log every loop turn of MS ms or more "
        "(benchmarks/turn_trace); each row sums what those turns' time went to",
    )
    p.add_argument(
        "--py-spy", default=None, metavar="DIR", help="record our frontend and mocker with py-spy per row"
    )
    p.add_argument("--out", default=None, help="also write the report as markdown here")
    return p


def _interrupt(_sig: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    import uvloop

    parser = build_parser()
    args = parser.parse_args()
    if args.py_spy and py_spy() is None:
        parser.error("--py-spy needs py-spy (not in the dev extras): .venv/bin/pip install py-spy")
    signal.signal(signal.SIGTERM, _interrupt)  # so that the stacks are stopped
    if args.quick:  # smaller defaults; flags given explicitly still win
        defaults = build_parser().parse_args([])
        quick = {"isl": "2000", "concurrency": "1,8", "duration": 3.0, "warmup": 1.0, "repeats": 1}
        for name, value in quick.items():
            if getattr(args, name) == getattr(defaults, name):
                setattr(args, name, value)
    path = long_context_model(model_dir(), args.context)
    if args.stall_dump:
        os.environ["DYN_LOOP_STALL_DUMP_MS"] = f"{args.stall_dump:g}"  # read by our frontends only
    facts = machine_facts()
    print("\n".join(facts))
    started = time.monotonic()
    rows, names = uvloop.run(sweep(args, path, os.path.join(path, "tokenizer.json")))
    print(f"sweep took {time.monotonic() - started:.0f} s")
    base = args.base or ("reference" if "reference" in names else names[0])
    table = summarize(rows, names, base)
    diagnostics = [  # the loop-lag diagnostics asked for, a section each
        *(stall_lines(rows, args.stall_dump) if args.stall_dump else []),
        *(turn_lines(rows, args.trace_turns) if args.trace_turns else []),
    ]
    print()
    print("\n".join(table))
    if diagnostics:
        print("\n".join(["", *diagnostics]))
    if args.out:
        lines = [
            "# long_prompt_bench",
            "",
            *facts,
            f"- command: `{' '.join(sys.argv)}`",
            f"- load: streaming {args.endpoint}, {args.max_tokens} output tokens (ignore_eos), router mode "
            f"{args.router_mode}, {args.duration:.0f} s measured after {args.warmup:.0f} s warm-up per row, "
            f"{args.repeats} repeats; mockers: --speedup-ratio {args.speedup_ratio:g} {args.mocker_flags}",
            "",
            *table,
            "",
            f"Ratios are target / {base}. Loop lag: the highest bucket of "
            f"`{LAG_METRIC}` that filled during the window (ours only). Run-queue wait: ms per second the "
            "frontend's event-loop thread waited for a core (ours and the reference's frontend process; "
            "summed over processes with --http-workers). Probe: `GET /v1/models` every 20 ms.",
            "",
            *diagnostics,
            "<details><summary>every run</summary>",
            "",
            "```",
            *(fmt_row(r) for r in rows),
            "```",
            "</details>",
            "",
        ]
        Path(args.out).write_text("\n".join(lines))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
