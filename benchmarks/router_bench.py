"""Router benchmark: the same prefix-heavy workload under round-robin, random and kv routing, on our
frontend + mocker and on NVIDIA Dynamo 1.6.1's (reference, its own venv), side by side in one run.

Usage::

    python benchmarks/router_bench.py                       # 4 and 16 workers, ours + reference
    python benchmarks/router_bench.py --workers 4 --duration 30 --no-ref
    PYTHONPATH=/path/with/matplotlib python benchmarks/router_bench.py --plot benchmarks/results/router_bench.json

Stacks are real processes: ``python -m dynamo.frontend --router-mode MODE`` and one
``python -m dynamo.mocker --num-workers N`` process (N simulated engines, each its own instance),
file discovery in a private folder, TCP request plane, ZMQ event plane. Every stack starts fresh
(cold caches) and gets the identical request schedule.

Workload (``build_workload``, seeded): ``--system-prompts`` shared system prompts of
``--system-words`` words each (8 x 1,500 by default: about 1,700 tokens, 105 KV blocks of 16, so a
worker of 512 blocks holds about four of them). Conversations arrive as a Poisson process
(``--rate`` per second, default 1.5 per worker); each picks a system prompt uniformly and has 2-4
turns, each a 20-60 word user message; the next turn is sent after the previous answer plus an
exponential think time (mean 0.5 s) and carries the whole history (earlier user messages and a
fixed 30-word assistant reply per turn), so later turns also share a conversation-private prefix.
Answers are 16-48 tokens (``ignore_eos``).

Measured per stack, on the client: TTFT (send -> first content chunk) p50/p99, throughput
(requests/s and output tokens/s over the run), prefix-cache hit rate (sum of
``usage.prompt_tokens_details.cached_tokens`` / sum of prompt tokens, as the engines report it),
and load spread: each worker's time-averaged active requests (the chosen worker comes from our
``x-dynamo-instance`` header, or the reference's ``nvext.worker_id``), max over mean.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgspec

from dynamo.runtime.ports import free_port

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
REF_VENV = Path(os.environ.get("DYN_REF_VENV", "/work/ref-dynamo-venv"))
MODEL = "bench"
TRANSPORT = ["--discovery-backend", "file", "--request-plane", "tcp", "--event-plane", "zmq"]

WORDS = (
    "time year people way day man thing woman life child world school state family student group "
    "country problem hand part place case week company system program question work government "
    "number night point home water room mother area money story fact month lot right study book "
    "eye job word business issue side kind head house service friend father power hour game line "
    "end member law car city community name president team minute idea kid body information back "
    "parent face others level office door health person art war history party result change "
    "morning reason research girl guy moment air teacher force education foot boy age policy "
    "process music market sense nation plan college interest death experience effect use class "
    "control care field development role effort rate heart drug show leader light voice wife police "
    "mind price report decision son view relationship town road arm difference value building action"
).split()


# ----- workload ---------------------------------------------------------------------------------


@dataclass
class Turn:
    messages: list[dict[str, str]]
    max_tokens: int


@dataclass
class Conversation:
    start: float  # seconds after the run starts
    turns: list[Turn]
    think: list[float]  # pause after each turn's answer


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def build_workload(
    seed: int, duration: float, rate: float, system_prompts: int, system_words: int
) -> list[Conversation]:
    """Seeded conversations starting over ``duration`` seconds (see the module docstring)."""
    rng = random.Random(seed)
    systems = [f"You are assistant #{i}. Policy: " + _text(rng, system_words) for i in range(system_prompts)]
    conversations = []
    t = rng.expovariate(rate)
    while t < duration:
        system = rng.choice(systems)
        messages = [{"role": "system", "content": system}]
        turns = []
        for _ in range(rng.randint(2, 4)):
            messages = [*messages, {"role": "user", "content": _text(rng, rng.randint(20, 60))}]
            turns.append(Turn(messages, rng.randint(16, 48)))
            messages = [*messages, {"role": "assistant", "content": _text(rng, 30)}]
        think = [rng.expovariate(2.0) for _ in turns]
        conversations.append(Conversation(t, turns, think))
        t += rng.expovariate(rate)
    return conversations


# ----- stacks -----------------------------------------------------------------------------------


@dataclass
class Stack:
    """A frontend + one mocker process (N workers) of our code or the reference's."""

    impl: str  # "ours" | "ref"
    mode: str
    workers: int
    model_dir: Path
    mocker_args: list[str]
    port: int = field(default_factory=free_port)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="router-bench-")))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        env.update({"DYN_FILE_KV": str(self.tmp / "kv"), "DYN_FILE_DISCOVERY_DIR": str(self.tmp / "disc")})
        env.update({"DYN_NAMESPACE": "dynamo", "DYN_TCP_RPC_HOST": "127.0.0.1", "DYN_LOG": "warning"})
        env["RUST_LOG"] = "warn"
        return env

    def start(self) -> None:
        python = str(REF_VENV / "bin" / "python") if self.impl == "ref" else sys.executable
        mocker = [python, "-m", "dynamo.mocker", "--model-path", str(self.model_dir), "--model-name", MODEL]
        mocker += ["--num-workers", str(self.workers), *self.mocker_args, *TRANSPORT]
        frontend = [
            python,
            "-m",
            "dynamo.frontend",
            "--http-host",
            "127.0.0.1",
            "--http-port",
            str(self.port),
        ]
        frontend += ["--router-mode", self.mode, *TRANSPORT]
        env = self._env()
        for name, cmd in (("mocker", mocker), ("frontend", frontend)):
            log = open(self.tmp / f"{name}.log", "wb")
            self.procs.append(
                subprocess.Popen(
                    cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.tmp, start_new_session=True
                )
            )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"{self.impl} {self.mode}: a process exited; logs in {self.tmp}")
            if self._ready():
                return
            time.sleep(0.5)
        raise TimeoutError(f"{self.impl} {self.mode}: not ready in 120 s; logs in {self.tmp}")

    def _ready(self) -> bool:
        try:
            health = httpx.get(f"{self.url}/health", timeout=2).json()
            models = httpx.get(f"{self.url}/v1/models", timeout=2).json()
        except (httpx.HTTPError, ValueError):
            return False
        live = [i for i in health.get("instances", []) if str(i.get("endpoint", "")).endswith("generate")]
        served = any(m.get("id") == MODEL for m in models.get("data", []))
        return served and len(live) >= self.workers

    def cpu_seconds(self) -> list[float]:
        """User + system CPU seconds so far of the mocker and the frontend process (children included)."""
        tick = os.sysconf("SC_CLK_TCK")
        out = []
        for p in self.procs:
            try:
                fields = Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()
                out.append(sum(int(f) for f in fields[11:15]) / tick)
            except (OSError, ValueError):
                out.append(0.0)
        return out

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)


# ----- load -------------------------------------------------------------------------------------


@dataclass
class Result:
    start: float
    ttft: float
    end: float
    worker: str
    prompt_tokens: int
    cached_tokens: int
    output_tokens: int


class _Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    prompt_tokens_details: dict[str, Any] | None = None


class _Chunk(msgspec.Struct):
    choices: list[dict[str, Any]] = []
    usage: _Usage | None = None
    nvext: dict[str, Any] | None = None


_decode = msgspec.json.Decoder(_Chunk).decode


async def _one(http: httpx.AsyncClient, impl: str, turn: Turn, t0: float) -> Result:
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": turn.messages,
        "max_tokens": turn.max_tokens,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    headers = {"x-dynamo-routing-debug": "1"}
    if impl == "ref":
        body["nvext"] = {"extra_fields": ["worker_id"]}
    start = time.monotonic()
    ttft = math.nan
    worker = "?"
    usage = _Usage()
    async with http.stream("POST", "/v1/chat/completions", json=body, headers=headers) as resp:
        if resp.status_code != 200:
            raise RuntimeError(f"HTTP {resp.status_code}: {(await resp.aread())[:200]!r}")
        if "x-dynamo-instance" in resp.headers:
            worker = resp.headers["x-dynamo-instance"].split(";")[0]
        async for line in resp.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            if math.isnan(ttft):
                ttft = time.monotonic() - start
                chunk = _decode(line[6:])
                if chunk.nvext and isinstance(chunk.nvext.get("worker_id"), dict):
                    worker = str(chunk.nvext["worker_id"].get("decode_worker_id"))
            elif '"usage":{' in line:
                chunk = _decode(line[6:])
                usage = chunk.usage or usage
    cached = int((usage.prompt_tokens_details or {}).get("cached_tokens") or 0)
    return Result(
        start - t0, ttft, time.monotonic() - t0, worker, usage.prompt_tokens, cached, usage.completion_tokens
    )


async def run_load(url: str, impl: str, workload: list[Conversation]) -> tuple[list[Result], float, int]:
    """Play the schedule; returns the results, the wall time and the number of failed requests."""
    results: list[Result] = []
    failures = 0
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
        t0 = time.monotonic()

        async def conversation(conv: Conversation) -> None:
            nonlocal failures
            await asyncio.sleep(max(0.0, conv.start - (time.monotonic() - t0)))
            for turn, think in zip(conv.turns, conv.think, strict=True):
                try:
                    results.append(await _one(http, impl, turn, t0))
                except (httpx.HTTPError, RuntimeError) as exc:
                    failures += 1
                    if failures <= 3:
                        print(f"  request failed: {exc}", file=sys.stderr)
                await asyncio.sleep(think)

        await asyncio.gather(*(conversation(c) for c in workload))
        return results, time.monotonic() - t0, failures


# ----- summary ----------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    k = (len(ordered) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summarize(results: list[Result], wall: float, failures: int, workers: int) -> dict[str, float]:
    ttfts = [r.ttft for r in results if not math.isnan(r.ttft)]
    busy: dict[str, float] = defaultdict(float)
    for r in results:
        busy[r.worker] += r.end - r.start
    # Time-averaged active requests per worker; workers that got nothing count as zero.
    active = [busy.get(w, 0.0) / wall for w in busy] + [0.0] * max(0, workers - len(busy))
    mean_active = sum(active) / workers
    prompt = sum(r.prompt_tokens for r in results)
    return {
        "requests": len(results),
        "failures": failures,
        "ttft_p50_ms": 1000 * percentile(ttfts, 0.5),
        "ttft_p99_ms": 1000 * percentile(ttfts, 0.99),
        "req_per_s": len(results) / wall,
        "output_tok_per_s": sum(r.output_tokens for r in results) / wall,
        "hit_rate": sum(r.cached_tokens for r in results) / prompt if prompt else 0.0,
        "load_spread": max(active) / mean_active if mean_active else math.nan,
        "workers_used": len(busy),
        "prompt_tokens_mean": prompt / len(results) if results else 0.0,
    }


def print_table(workers: int, rows: dict[str, dict[str, float]]) -> str:
    head = f"{'stack':<14}{'TTFT p50 ms':>12}{'TTFT p99 ms':>12}{'req/s':>8}{'tok/s':>8}{'hit rate':>9}{'spread':>8}{'fail':>6}"
    lines = [f"== {workers} workers", head]
    for name, r in rows.items():
        lines.append(
            f"{name:<14}{r['ttft_p50_ms']:>12.1f}{r['ttft_p99_ms']:>12.1f}{r['req_per_s']:>8.1f}"
            f"{r['output_tok_per_s']:>8.0f}{r['hit_rate']:>9.2f}{r['load_spread']:>8.2f}{r['failures']:>6.0f}"
        )
    ratios = []
    for impl in ("ours", "ref"):
        kv, rr = rows.get(f"{impl} kv"), rows.get(f"{impl} round-robin")
        if kv and rr:
            ratios.append(
                f"{impl}: kv/round-robin TTFT p50 {kv['ttft_p50_ms'] / rr['ttft_p50_ms']:.2f} (target <= 0.6), "
                f"spread {kv['load_spread'] / rr['load_spread']:.2f}x round-robin's (target <= 1.5)"
            )
    if "ours kv" in rows and "ref kv" in rows:
        ratio = rows["ours kv"]["ttft_p50_ms"] / rows["ref kv"]["ttft_p50_ms"]
        ratios.append(f"ours kv / reference kv TTFT p50 {ratio:.2f} (target <= 1.0)")
    text = "\n".join(lines + ratios)
    print(text, flush=True)
    return text


def plot(data: dict[str, Any], path: Path) -> None:
    """Bars of TTFT p50 / hit rate / load spread per stack, one row per worker count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = data["runs"]
    fig, axes = plt.subplots(len(runs), 3, figsize=(13, 3.6 * len(runs)), squeeze=False)
    for row, run in enumerate(runs):
        names = list(run["stacks"])
        colors = ["#4c72b0" if n.startswith("ours") else "#dd8452" for n in names]
        for col, (key, title) in enumerate(
            [
                ("ttft_p50_ms", "TTFT p50 (ms)"),
                ("hit_rate", "prefix cache hit rate"),
                ("load_spread", "load spread (max/mean)"),
            ]
        ):
            ax = axes[row][col]
            values = [run["stacks"][n][key] for n in names]
            ax.bar(range(len(names)), values, color=colors)
            ax.set_xticks(range(len(names)), [n.replace(" ", "\n") for n in names], fontsize=8)
            ax.set_title(f"{run['workers']} workers: {title}", fontsize=10)
            for i, v in enumerate(values):
                ax.text(i, v, f"{v:.2f}" if v < 10 else f"{v:.0f}", ha="center", va="bottom", fontsize=8)
    fig.suptitle("kv vs round-robin vs random routing (blue: ours, orange: NVIDIA Dynamo 1.6.1)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


# ----- main -------------------------------------------------------------------------------------


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, nargs="+", default=[4, 16])
    p.add_argument("--duration", type=float, default=40.0, help="seconds over which conversations start")
    p.add_argument(
        "--rate", type=float, default=None, help="conversations per second (default 1.5 per worker)"
    )
    p.add_argument("--system-prompts", type=int, default=8)
    p.add_argument("--system-words", type=int, default=1500)
    p.add_argument("--blocks", type=int, default=512, help="KV blocks per mocker worker")
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--speedup-ratio", type=float, default=1.0)
    p.add_argument("--modes", nargs="+", default=["round-robin", "random", "kv"])
    p.add_argument("--ref-modes", nargs="+", default=["round-robin", "kv"], help="modes run on the reference")
    p.add_argument("--no-ref", action="store_true", help="skip NVIDIA Dynamo 1.6.1")
    p.add_argument("--ref-only", action="store_true", help="only NVIDIA Dynamo 1.6.1")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", type=Path, default=RESULTS / "router_bench")
    p.add_argument("--plot", type=Path, default=None, help="only draw the PNG from a results JSON")
    args = p.parse_args()
    if args.plot:
        plot(json.loads(args.plot.read_text()), args.plot.with_suffix(".png"))
        return

    model_dir = Path(
        subprocess.run(
            [sys.executable, "-m", "dynamo.models", "prepare", "smollm2", "--tokenizer-only", "--quiet"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()[-1]
    )
    impls = ["ours"] if args.no_ref or not (REF_VENV / ".ready").exists() else ["ours", "ref"]
    if args.ref_only:
        impls = ["ref"]
    mocker_args = ["--block-size", str(args.block_size), "--num-gpu-blocks-override", str(args.blocks)]
    mocker_args += ["--speedup-ratio", str(args.speedup_ratio)]
    data: dict[str, Any] = {"config": {k: str(v) for k, v in vars(args).items()}, "runs": []}
    texts = []
    for workers in args.workers:
        rate = args.rate if args.rate is not None else 1.5 * workers
        workload = build_workload(args.seed, args.duration, rate, args.system_prompts, args.system_words)
        turns = sum(len(c.turns) for c in workload)
        print(
            f"-- {workers} workers: {len(workload)} conversations, {turns} requests, rate {rate}/s",
            flush=True,
        )
        rows: dict[str, dict[str, float]] = {}
        for impl in impls:
            for mode in args.modes if impl == "ours" else args.ref_modes:
                stack = Stack(impl, mode, workers, model_dir, mocker_args)
                stack.start()
                try:
                    cpu0 = stack.cpu_seconds()
                    results, wall, failures = asyncio.run(run_load(stack.url, impl, workload))
                    cpu = [(b - a) / wall for a, b in zip(cpu0, stack.cpu_seconds(), strict=True)]
                finally:
                    stack.stop()
                rows[f"{impl} {mode}"] = summarize(results, wall, failures, workers)
                rows[f"{impl} {mode}"].update(mocker_cpu=cpu[0], frontend_cpu=cpu[1])
                print(
                    f"   {impl} {mode}: {json.dumps({k: round(v, 3) for k, v in rows[f'{impl} {mode}'].items()})}",
                    flush=True,
                )
        texts.append(print_table(workers, rows))
        data["runs"].append({"workers": workers, "rate": rate, "requests": turns, "stacks": rows})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(data, indent=1))
    args.out.with_suffix(".txt").write_text("\n\n".join(texts) + "\n")
    try:
        plot(data, args.out.with_suffix(".png"))
    except ImportError:
        print("matplotlib is not installed: no PNG (run again with --plot once it is)")


if __name__ == "__main__":
    main()
