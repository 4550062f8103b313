"""Overhead of our stack over vLLM's own OpenAI server: same model, engine settings, cores and load.

Starts vLLM's OpenAI server (``vllm.entrypoints.openai.api_server``) and our stack
(``dynamo.frontend`` + ``dynamo.vllm``, file discovery in a private folder) one after the other,
never together, each with the same engine flags (dtype, eager, max-model-len, max-num-seqs,
max-num-batched-tokens, prefix caching, ``VLLM_CPU_KVCACHE_SPACE``) and its engine bound to the
same cores. Each gets the same closed-loop load at every concurrency level, sent by
``benchmarks/loadgen.py``'s client: streaming chat requests with distinct prompts drawn from a
seeded generator (request k gets the same prompt on both stacks), ``temperature=0``,
``ignore_eos`` and ``min_tokens = max_tokens``, so every request yields exactly ``max_tokens``
tokens. Throughput is counted between the first and the last completion inside the measured
window; TTFT and ITL follow loadgen's (aiperf's) definitions.

Each stack is started, warmed up (every batch shape once at the top concurrency), sampled idle,
measured at each level and stopped; ``--rounds`` repeats that in ABBA order and the table shows
medians. Prints per level: requests/s, output tokens/s, TTFT and ITL p50/p99 for both stacks and
the ratios ours / vLLM; the CPU time per request of each process (HTTP server, our worker, vLLM's
engine core and model runner, the client; the cores each uses when idle are printed apart); and
the cores other jobs on the machine took meanwhile (on a shared machine, trust rows with little
of it). Once per stack: the engine config vLLM logged (differences are flagged) and one greedy
answer (both must agree).

Run (about 12 minutes with the defaults; the lock keeps other vLLM engines off the cores):

    flock /tmp/dynamo-vllm.lock .venv/bin/python benchmarks/vllm_overhead.py --out /tmp/vllm_overhead.md

Without ``flock`` the script takes that lock itself. ``--help`` lists the knobs.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import fcntl
import functools
import itertools
import json
import os
import platform
import random
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from urllib.parse import urlsplit

import uvloop

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.loadgen import LoadResult, LoadSpec, RequestResult, _Connection
from benchmarks.stacks import descendants, free_port, http_json, machine_busy, proc_cpu
from dynamo.vllm.args import (
    CPU_DEFAULT_DTYPE,
    CPU_DEFAULT_KVCACHE_SPACE_GIB,
    CPU_MAX_MODEL_LEN_CAP,
)

ROOT = Path(__file__).resolve().parents[1]
LOCK_PATH = "/tmp/dynamo-vllm.lock"
WORDS = (
    "harbor lantern river falcon copper meadow glacier whisper orchard canyon ember violet thunder "
    "compass saddle quartz willow beacon tunnel marble pepper shadow velvet anchor prairie cobalt "
    "lighthouse island bakery caravan fossil garden hammer jungle kettle ladder mirror needle "
    "oyster parrot quilt rocket silver timber umbrella valley wagon yarn zebra engine forest "
    "planet storm castle bridge dragon feather mountain ocean pirate scholar winter"
).split()


# ----- stacks ------------------------------------------------------------------------------------


@dataclass
class Engine:
    """Engine settings given to both stacks as explicit flags, so neither side's defaults decide."""

    model_path: str
    served_name: str
    cores: str
    dtype: str
    max_model_len: int
    max_num_seqs: int
    max_num_batched_tokens: int
    kv_cache_gib: str

    def flags(self) -> list[str]:
        return [
            "--model", self.model_path, "--served-model-name", self.served_name,
            "--dtype", self.dtype, "--enforce-eager", "--max-model-len", str(self.max_model_len),
            "--max-num-seqs", str(self.max_num_seqs),
            "--max-num-batched-tokens", str(self.max_num_batched_tokens),
            "--enable-prefix-caching", "--seed", "0",
        ]  # fmt: skip

    def env(self, root: Path = ROOT) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VLLM_CPU_", "DYN_"))}
        env.update({"VLLM_CPU_KVCACHE_SPACE": self.kv_cache_gib, "PYTHONUNBUFFERED": "1"})
        env["PYTHONPATH"] = str(root)
        return env


@dataclass
class Stack:
    """Processes serving ``model`` at ``url``; each in its own process group."""

    name: str
    url: str
    model: str
    tmp: str
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    root: Path = ROOT  # the checkout the stack's processes run from

    def spawn(self, role: str, argv: list[str], env: dict[str, str]) -> None:
        with open(Path(self.tmp) / f"{role}.log", "wb") as log:
            self.procs[role] = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.root, start_new_session=True
            )

    def log(self, role: str) -> str:
        try:
            return (Path(self.tmp) / f"{role}.log").read_text(errors="replace")
        except OSError:
            return ""

    def log_tails(self, lines: int = 40) -> str:
        return "\n".join(
            f"----- {self.name} {role} log (last {lines} lines) -----\n"
            + "\n".join(self.log(role).splitlines()[-lines:])
            for role in self.procs
        )

    def cpu(self) -> dict[str, float]:
        """CPU seconds per role; vLLM's own processes count as ``core`` (``VLLM::EngineCore``: scheduler)
        or ``model`` (``VLLM::Worker``: the forward passes), whoever started them."""
        out = dict.fromkeys([*self.procs, "core", "model"], 0.0)
        for role, proc in self.procs.items():
            for pid in descendants(proc.pid):
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        cmdline = f.read(64)
                except OSError:
                    continue
                if cmdline.startswith(b"VLLM::"):
                    role_of = "core" if b"EngineCore" in cmdline else "model"
                else:
                    role_of = role
                out[role_of] += proc_cpu(pid)
        return out

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for role, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{self.name}: {role} exited with code {proc.returncode}")
            try:
                data = http_json(f"{self.url}/v1/models")
                if isinstance(data, dict) and any(m.get("id") == self.model for m in data.get("data", [])):
                    return
            except Exception:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"{self.name} did not serve {self.model} within {timeout:.0f} s")

    def stop(self) -> None:
        """SIGTERM every process group, SIGKILL what is left after 30 s, remove the temp folder."""
        for proc in self.procs.values():
            if proc.poll() is None:
                _signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for proc in self.procs.values():  # the leader may be gone while its children (engine core) live
            _signal_group(proc.pid, signal.SIGKILL)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                print(f"warning: {self.name} pid {proc.pid} survived SIGKILL", file=sys.stderr)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def engine_config(self) -> dict[str, str]:
        """The ``key=value`` pairs of vLLM's 'Initializing a V1 LLM engine ... with config:' line."""
        for role in self.procs:
            m = re.search(r"with config: (.*)", self.log(role))
            if m:
                return dict(re.findall(r"(\w+)=((?:\{[^}]*\}|\[[^\]]*\]|[^,])*)", m.group(1)))
        return {}


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def start_vllm(engine: Engine, extra: list[str]) -> Stack:
    """vLLM's own OpenAI server, its engine bound with ``VLLM_CPU_OMP_THREADS_BIND``."""
    port = free_port()
    stack = Stack(
        "vllm", f"http://127.0.0.1:{port}", engine.served_name, tempfile.mkdtemp(prefix="ovh-vllm-")
    )
    env = {**engine.env(), "VLLM_CPU_OMP_THREADS_BIND": engine.cores}
    argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--host", "127.0.0.1"]
    argv += ["--port", str(port), *engine.flags(), "--disable-uvicorn-access-log"]
    argv += ["--uvicorn-log-level", "warning", *extra]
    stack.spawn("server", argv, env)
    return stack


def start_ours(
    engine: Engine,
    worker_extra: list[str],
    frontend_extra: list[str],
    name: str = "ours",
    root: Path = ROOT,
) -> Stack:
    """``dynamo.frontend`` + one ``dynamo.vllm`` worker (``--cpu-core``), file discovery in a temp dir;
    ``root``: another checkout (e.g. a ``git worktree`` of an older commit) to compare a change."""
    port = free_port()
    tmp = tempfile.mkdtemp(prefix=f"ovh-{name}-")
    stack = Stack(name, f"http://127.0.0.1:{port}", engine.served_name, tmp, root=root)
    env = {**engine.env(root), "DYN_FILE_DISCOVERY_DIR": str(Path(tmp) / "discovery"), "DYN_LOG": "info"}
    common = ["--discovery-backend", "file", "--request-plane", "tcp", "--event-plane", "zmq"]
    frontend = [sys.executable, "-m", "dynamo.frontend", "--http-host", "127.0.0.1", "--http-port", str(port)]
    stack.spawn("frontend", [*frontend, *common, *frontend_extra], env)
    worker = [sys.executable, "-m", "dynamo.vllm", *engine.flags(), "--cpu-core", engine.cores, *common]
    stack.spawn("worker", [*worker, *worker_extra], env)
    return stack


# ----- load --------------------------------------------------------------------------------------


def make_prompt(seed: int, k: int, words: int) -> str:
    """Request ``k``'s prompt: the same on every stack, distinct between requests (no prefix hits)."""
    rng = random.Random(seed * 1_000_003 + k)
    return f"Write a short story using these words: {' '.join(rng.choices(WORDS, k=words))}."


def request_spec(url: str, model: str, prompt: str, max_tokens: int) -> LoadSpec:
    return LoadSpec(url, model, max_tokens, prompt=prompt, extra={"temperature": 0.0})


@dataclass
class Level:
    """One stack at one concurrency level."""

    stack: str
    round: int
    res: LoadResult
    cpu_ms: dict[str, float]  # role -> CPU ms per request
    other_cores: float  # cores busy with processes that are neither the stack nor the client

    @property
    def s(self) -> dict[str, float]:
        return self.res.summary()


async def run_level(stack: Stack, conc: int, args: argparse.Namespace, seq: itertools.count[int]) -> Level:
    """``conc`` users send back-to-back requests for ``warmup + duration`` s; requests that complete
    between the first and the last completion inside the measured window are counted."""
    loop = asyncio.get_running_loop()
    parts = urlsplit(stack.url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    done: list[tuple[float, RequestResult]] = []  # (completion time, result)
    t_start = time.perf_counter() + args.warmup
    t_end = t_start + args.duration

    async def user() -> None:
        _, conn = await loop.create_connection(_Connection, host, port)
        try:
            while time.perf_counter() < t_end:
                if conn.lost:
                    _, conn = await loop.create_connection(_Connection, host, port)
                prompt = make_prompt(args.seed, next(seq), args.prompt_words)
                _, _, head, body = request_spec(
                    stack.url, stack.model, prompt, args.max_tokens
                ).request_bytes()
                try:
                    res = await conn.request(head, body)
                except (ConnectionError, OSError) as exc:
                    res = RequestResult(time.perf_counter(), error=f"{type(exc).__name__}: {exc}")
                    conn.lost = True
                done.append((time.perf_counter(), res))
        finally:
            if conn.transport is not None:
                conn.transport.close()

    tasks = [asyncio.create_task(user()) for _ in range(conc)]
    try:
        await asyncio.sleep(max(0.0, t_start - time.perf_counter()))
        cpu0, busy0, client0 = stack.cpu(), machine_busy(), time.process_time()
        await asyncio.sleep(max(0.0, t_end - time.perf_counter()))
        cpu1, busy1, client1 = stack.cpu(), machine_busy(), time.process_time()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=args.max_tokens * 2 + 60)
    finally:
        for t in tasks:
            t.cancel()
    inside = sorted((t, r) for t, r in done if t_start <= t <= t_end)
    if len(inside) < 2:
        raise RuntimeError(
            f"{stack.name}: fewer than 2 requests completed in the {args.duration:.0f} s window"
        )
    (t_a, _), (t_b, _) = inside[0], inside[-1]
    counted = [r for t, r in inside[1:]]
    errors = [r.error for r in counted if r.error]
    res = LoadResult(conc, t_b - t_a, counted, len(errors), errors[0] if errors else None, client1 - client0)
    rate = res.requests_per_s * args.duration  # requests the measured window holds
    cpu_ms = {role: 1e3 * (cpu1[role] - cpu0[role]) / max(rate, 1e-9) for role in cpu1}
    cpu_ms["client"] = 1e3 * (client1 - client0) / max(rate, 1e-9)
    measured = sum(cpu1[r] - cpu0[r] for r in cpu1) + (client1 - client0)
    return Level(stack.name, 0, res, cpu_ms, ((busy1 - busy0) - measured) / args.duration)


def measure_idle(stack: Stack, seconds: float) -> dict[str, float]:
    """Cores each role uses with no request in flight (timers, heartbeats, polling), and ``other``:
    what the rest of the machine used meanwhile."""
    cpu0, busy0 = stack.cpu(), machine_busy()
    time.sleep(seconds)
    cpu1, busy1 = stack.cpu(), machine_busy()
    idle = {role: (cpu1[role] - cpu0[role]) / seconds for role in cpu1}
    idle["other"] = (busy1 - busy0) / seconds - sum(idle.values())
    return idle


def probe(stack: Stack, args: argparse.Namespace) -> dict[str, object]:
    """One non-streaming greedy request (request 0's prompt): prompt/completion tokens and text."""
    spec = request_spec(stack.url, stack.model, make_prompt(args.seed, 0, args.prompt_words), args.max_tokens)
    body = {
        "model": stack.model,
        "messages": [{"role": "user", "content": spec.prompt}],
        "max_tokens": args.max_tokens,
        "temperature": 0.0,
    }
    req = urllib.request.Request(
        f"{stack.url}/v1/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=120) as r:
        data = json.loads(r.read())
    usage = data.get("usage") or {}
    return {
        "prompt_tokens": usage.get("prompt_tokens"),
        "completion_tokens": usage.get("completion_tokens"),
        "text": data["choices"][0]["message"]["content"],
    }


# ----- report ------------------------------------------------------------------------------------


def fmt_level(lv: Level) -> str:
    s = lv.s
    cpu = " ".join(f"{k}={v:.1f}" for k, v in lv.cpu_ms.items())
    return (
        f"{lv.stack:<5} r{lv.round} c={lv.res.concurrency:<3} "
        f"{s['req_s']:6.3f} req/s {s['tok_s']:7.1f} tok/s  "
        f"ttft p50 {s['ttft_p50_ms']:7.1f} p99 {s['ttft_p99_ms']:7.1f}  itl p50 {s['itl_p50_ms']:6.2f} "
        f"p99 {s['itl_p99_ms']:6.2f} ms  n={int(s['requests'])} err={int(s['errors'])} "
        f"tok/req {s['tokens_per_request']:.1f} events/req {s['events_per_request']:.1f}  "
        f"cpu ms/req {cpu}  other {lv.other_cores:.2f} cores"
    )


METRICS = (
    ("req/s", "req_s", "{:.3f}"),
    ("out tok/s", "tok_s", "{:.1f}"),
    ("TTFT p50 ms", "ttft_p50_ms", "{:.1f}"),
    ("TTFT p99 ms", "ttft_p99_ms", "{:.1f}"),
    ("ITL p50 ms", "itl_p50_ms", "{:.2f}"),
    ("ITL p99 ms", "itl_p99_ms", "{:.2f}"),
)


def summarize(levels: list[Level], base: str = "vllm") -> list[str]:
    """Markdown table: medians over rounds per stack and level, and each stack's ratios to ``base``."""
    head = "| conc | stack | " + " | ".join(m[0] for m in METRICS)
    head += " | CPU ms/req: HTTP / dynamo.vllm / EngineCore / model runner / client | other load (cores) |"
    out = [head, "|" + "---|" * (len(METRICS) + 4)]
    for conc in sorted({lv.res.concurrency for lv in levels}):
        med: dict[str, dict[str, float]] = {}
        names = list(dict.fromkeys(lv.stack for lv in levels))
        for name in names:
            rows = [lv for lv in levels if lv.stack == name and lv.res.concurrency == conc]
            if not rows:
                continue
            med[name] = {key: statistics.median(lv.s[key] for lv in rows) for _, key, _ in METRICS}
            cpu = {
                k: statistics.median(lv.cpu_ms.get(k, 0.0) for lv in rows)
                for k in ("server", "frontend", "worker", "core", "model", "client")
            }
            http = cpu["server"] + cpu["frontend"]
            worker = f"{cpu['worker']:.1f}" if name != "vllm" else "-"
            other = statistics.median(lv.other_cores for lv in rows)
            cells = " | ".join(fmt.format(med[name][key]) for _, key, fmt in METRICS)
            out.append(
                f"| {conc} | {name} | {cells} | {http:.1f} / {worker} / "
                f"{cpu['core']:.1f} / {cpu['model']:.1f} / "
                f"{cpu['client']:.1f} | {other:.2f} |"
            )
        for name in med:
            if name == base or base not in med:
                continue
            ratios = " | ".join(
                f"**{med[name][key] / med[base][key]:.2f}**" if med[base][key] else "-"
                for _, key, _ in METRICS
            )
            out.append(f"| {conc} | {name} / {base} | {ratios} | | |")
    return out


def config_diff(configs: dict[str, dict[str, str]], base: str = "vllm") -> list[str]:
    if len(configs) < 2 or not all(configs.values()) or base not in configs:
        return ["(engine config not found in a log)"]
    out: list[str] = []
    a = configs[base]
    for name, b in configs.items():
        if name == base:
            continue
        diff = [
            f"  {k}: {base}={a.get(k)!r} {name}={b.get(k)!r}"
            for k in sorted(a.keys() | b.keys())
            if a.get(k) != b.get(k)
        ]
        out += (
            [f"engine config {name} vs {base}: identical"]
            if not diff
            else [f"engine config {name} vs {base}:", *diff]
        )
    return out


def machine_facts() -> list[str]:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    with open("/proc/meminfo") as f:
        mem_gib = int(f.readline().split()[1]) / 2**20
    import vllm

    load = os.getloadavg()
    return [
        f"- date: {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {os.cpu_count()} CPUs ({cpu}), {mem_gib:.0f} GiB, "
        f"{platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, vLLM {vllm.__version__}",
        f"- load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
    ]


# ----- main --------------------------------------------------------------------------------------


def hold_engine_lock() -> int | None:
    """Hold ``LOCK_PATH`` for the whole run, unless a parent ``flock`` already does (its fd is ours)."""
    for entry in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{entry}") == LOCK_PATH:
                return None
        except OSError:
            continue
    fd = os.open(LOCK_PATH, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"waiting for {LOCK_PATH} (another vLLM engine is running) ...", flush=True)
        fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def _raise_exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def model_folder() -> str:
    out = subprocess.run(
        [sys.executable, "-m", "dynamo.models", "prepare", "smollm2"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return out.stdout.strip().splitlines()[-1]


def run(args: argparse.Namespace) -> None:
    engine = Engine(
        model_path=args.model_path or model_folder(),
        served_name=args.model,
        cores=args.cores,
        dtype=args.dtype,
        max_model_len=args.max_model_len,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        kv_cache_gib=args.kv_cache_gib,
    )
    starters: dict[str, Callable[[], Stack]] = {
        "vllm": lambda: start_vllm(engine, args.vllm_arg),
        "ours": lambda: start_ours(engine, args.worker_arg, args.frontend_arg),
    }
    for spec in args.ours_variant:  # NAME=FLAGS: ours with other worker flags
        vname, _, flags = spec.partition("=")
        starters[vname] = functools.partial(
            start_ours, engine, [*args.worker_arg, *shlex.split(flags)], args.frontend_arg, vname
        )
    for spec in args.variant:  # NAME=DIR: ours from another checkout
        vname, _, root = spec.partition("=")
        starters[vname] = functools.partial(
            start_ours, engine, args.worker_arg, args.frontend_arg, vname, Path(root).resolve()
        )
    order = [s.strip() for s in args.stacks.split(",")]
    facts = machine_facts()
    print("\n".join(facts), flush=True)
    levels: list[Level] = []
    configs: dict[str, dict[str, str]] = {}
    probes: dict[str, dict[str, object]] = {}
    startup: dict[str, list[float]] = {}
    idles: dict[str, list[dict[str, float]]] = {}
    concs = [int(c) for c in args.concurrency.split(",")]
    for rnd in range(args.rounds):
        for name in order if rnd % 2 == 0 else order[::-1]:  # ABBA: drift hits both alike
            t0 = time.monotonic()
            stack = starters[name]()
            try:
                try:
                    stack.wait_ready(args.start_timeout)
                except (RuntimeError, TimeoutError) as exc:
                    print(f"error: {exc}\n{stack.log_tails()}", file=sys.stderr)
                    raise SystemExit(1) from exc
                startup.setdefault(name, []).append(time.monotonic() - t0)
                probes[name] = probe(stack, args)
                configs[name] = stack.engine_config()
                print(f"{name} ready in {time.monotonic() - t0:.0f} s; probe: {probes[name]}", flush=True)
                seq = itertools.count()  # request k gets prompt k on every stack and round
                warm = argparse.Namespace(**{**vars(args), "warmup": 0.0, "duration": 2 * args.warmup})
                try:  # every batch shape once (the CPU kernels are built on first use)
                    uvloop.run(run_level(stack, max(concs), warm, seq))
                except RuntimeError:
                    pass
                idle = measure_idle(stack, args.idle_seconds)
                idles.setdefault(name, []).append(idle)
                print(f"{name} idle cores: " + " ".join(f"{k}={v:.3f}" for k, v in idle.items()), flush=True)
                for conc in concs:
                    lv = uvloop.run(run_level(stack, conc, args, seq))
                    lv.round = rnd
                    levels.append(lv)
                    print(fmt_level(lv), flush=True)
                    if lv.res.error_sample:
                        print(f"  first error: {lv.res.error_sample}", file=sys.stderr)
            except Exception:
                print(stack.log_tails(), file=sys.stderr)
                raise
            finally:
                stack.stop()
    notes = config_diff(configs, args.base)
    if len(probes) >= 2:
        same = len({repr(v) for v in probes.values()}) == 1
        notes.append(f"greedy probe: {'identical' if same else 'DIFFERENT'} on all stacks")
        if not same:
            notes += [f"  {k}: {v}" for k, v in probes.items()]
    notes.append("startup s: " + ", ".join(f"{k} {statistics.median(v):.0f}" for k, v in startup.items()))
    for name, runs in idles.items():
        idle = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        notes.append(f"{name} idle cores (median): " + " ".join(f"{k}={v:.3f}" for k, v in idle.items()))
    table = summarize(levels, args.base)
    print("\n" + "\n".join(notes) + "\n\n" + "\n".join(table))
    if args.out:
        write_markdown(args, engine, facts, notes, table, levels)


def write_markdown(
    args: argparse.Namespace,
    engine: Engine,
    facts: list[str],
    notes: list[str],
    table: list[str],
    levels: list[Level],
) -> None:
    lines = [
        "# vllm_overhead (generated)",
        "",
        *facts,
        f"- command: `{' '.join(sys.argv)}`",
        f"- engine (both stacks): `{' '.join(engine.flags()[2:])}`, "
        f"`VLLM_CPU_KVCACHE_SPACE={engine.kv_cache_gib}`, "
        f"cores {engine.cores}",
        f"- load: streaming chat, {args.prompt_words}-word seeded prompts (seed {args.seed}), "
        f"{args.max_tokens} output tokens (ignore_eos), {args.warmup:.0f} s warm-up + "
        f"{args.duration:.0f} s measured per level, "
        f"{args.rounds} round(s) per stack",
        "",
        "```",
        *notes,
        "```",
        "",
        *table,
        "",
        "<details><summary>every run</summary>",
        "",
        "```",
        *(fmt_level(lv) for lv in levels),
        "```",
        "</details>",
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print(f"wrote {args.out}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-path", default=None, help="model folder (default: the prepared smollm2)")
    p.add_argument("--model", default="smollm2", help="served model name")
    p.add_argument("--stacks", default="ours,vllm", help="order of the first round (later rounds alternate)")
    p.add_argument("--rounds", type=int, default=2, help="start/measure/stop cycles per stack")
    p.add_argument("--concurrency", default="1,4,8", help="comma-separated levels")
    p.add_argument("--duration", type=float, default=30.0, help="measured seconds per level")
    p.add_argument("--warmup", type=float, default=6.0, help="unmeasured seconds before each level")
    p.add_argument("--max-tokens", type=int, default=64, help="output tokens per request (ignore_eos)")
    p.add_argument("--prompt-words", type=int, default=48, help="random words per prompt")
    p.add_argument("--seed", type=int, default=0, help="prompt generator seed")
    p.add_argument(
        "--cores", default="0-1", help="engine cores (our --cpu-core, vLLM's VLLM_CPU_OMP_THREADS_BIND)"
    )
    p.add_argument("--dtype", default=CPU_DEFAULT_DTYPE)
    p.add_argument("--max-model-len", type=int, default=CPU_MAX_MODEL_LEN_CAP)
    p.add_argument("--max-num-seqs", type=int, default=16)
    p.add_argument("--max-num-batched-tokens", type=int, default=2048)
    p.add_argument("--kv-cache-gib", default=CPU_DEFAULT_KVCACHE_SPACE_GIB, help="VLLM_CPU_KVCACHE_SPACE")
    p.add_argument("--worker-arg", action="append", default=[], help="extra flag for dynamo.vllm")
    p.add_argument(
        "--ours-variant",
        action="append",
        default=[],
        help="NAME=FLAGS: also a stack of ours whose worker gets these extra flags (name it in --stacks)",
    )
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        help="NAME=DIR: also a stack of ours from another checkout, e.g. a git worktree of an older commit",
    )
    p.add_argument("--base", default="vllm", help="the stack the ratios compare with")
    p.add_argument("--frontend-arg", action="append", default=[], help="extra flag for dynamo.frontend")
    p.add_argument("--vllm-arg", action="append", default=[], help="extra flag for vLLM's server")
    p.add_argument("--idle-seconds", type=float, default=5.0, help="idle CPU sample before each sweep")
    p.add_argument("--start-timeout", type=float, default=300.0, help="seconds for a stack to serve")
    p.add_argument("--out", default=None, help="also write the results as markdown here")
    return p


def main() -> None:
    args = build_parser().parse_args()
    signal.signal(signal.SIGTERM, _raise_exit)
    signal.signal(signal.SIGHUP, _raise_exit)
    lock = hold_engine_lock()
    try:
        run(args)
    finally:
        if lock is not None:
            os.close(lock)


if __name__ == "__main__":
    main()
