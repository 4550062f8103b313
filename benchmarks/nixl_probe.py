"""Raw NIXL READs between two processes, shaped like vLLM's prefill -> decode KV transfer.

Run::

    .venv/bin/python benchmarks/nixl_probe.py --desc-bytes 1072400 --n-desc 55 --reps 30

A "prefill" process registers a source buffer and then only calls ``get_new_notifs`` every
``--target-poll-ms`` (as a prefill engine does once per step; 0 = continuously); the "decode"
process (this one) READs ``--n-desc`` descriptors of ``--desc-bytes`` with a completion
notification, through prepped descriptor lists (``make_prepped_xfer``, as vLLM does), checking
completion every ``--poll-ms`` (0 = continuously). Both agents are made the way Dynamo's vLLM
connector makes them (``dynamo.vllm.nixl_agent.new_nixl_agent``: ``DYN_NIXL_PROGRESS_DELAY_MS``
applies; UCX backend, ``num_threads=4`` and telemetry as vLLM passes them). Optional pinning
(``--decode-core``, ``--prefill-core``) and a competing busy process on the decode core
(``--busy-core``). Prints one JSON line: per-transfer medians of descriptor preparation, the post
(wall and the thread's CPU time), the time until completion was seen, NIXL's telemetry (what vLLM
reports as transfer time), how many posts returned in progress, and the notification's delay.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_agent(name: str) -> Any:
    from nixl._api import nixl_agent_config

    from dynamo.vllm.nixl_agent import new_nixl_agent

    return new_nixl_agent(name, nixl_agent_config(num_threads=4, capture_telemetry=True))


def prefill_side(conn: Connection, total: int, poll_ms: float, core: int | None) -> None:
    if core is not None:
        os.sched_setaffinity(0, {core})
    agent = make_agent("probe-prefill")
    src = np.ones(total, dtype=np.uint8)
    agent.register_memory([(src.ctypes.data, src.nbytes, 0, "")], "DRAM")
    conn.send((agent.get_agent_metadata(), src.ctypes.data))
    agent.add_remote_agent(conn.recv())
    conn.send("ready")
    seen: list[tuple[str, float]] = []
    while not conn.poll():
        now = time.perf_counter()
        for msgs in agent.get_new_notifs().values():
            seen.extend((bytes(m).decode(), now) for m in msgs)
        time.sleep(poll_ms / 1000 if poll_ms else 0.0002)
    conn.recv()
    conn.send(seen)


def busy(core: int) -> None:
    os.sched_setaffinity(0, {core})
    while True:
        pass


FACTORS: list[tuple[str, dict[str, str], list[str]]] = [
    ("raw: unpinned, huge pages, peer polls continuously", {}, []),
    ("4 kB pages (as vLLM's KV cache tensors)", {"NUMPY_MADVISE_HUGEPAGE": "0"}, []),
    (
        "4 kB pages, pinned like the engines (decode 1, prefill 0)",
        {"NUMPY_MADVISE_HUGEPAGE": "0"},
        ["--decode-core", "1", "--prefill-core", "0"],
    ),
    (
        "4 kB pages, pinned, a busy process on the decode core",
        {"NUMPY_MADVISE_HUGEPAGE": "0"},
        ["--decode-core", "1", "--prefill-core", "0", "--busy-core", "1"],
    ),
    (
        "peer polls every 500 ms, no progress thread (before)",
        {"DYN_NIXL_PROGRESS_DELAY_MS": "off"},
        ["--target-poll-ms", "500", "--reps", "8", "--warmup", "1"],
    ),
    (
        "peer polls every 500 ms, progress thread (after)",
        {},
        ["--target-poll-ms", "500", "--reps", "8", "--warmup", "1"],
    ),
]


def run_factors(base: list[str], rounds: int) -> None:
    """Each FACTORS variant in turn, ``rounds`` times interleaved; prints a markdown table of medians."""
    import subprocess

    results: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in FACTORS}
    for _ in range(rounds):
        for name, env, extra in FACTORS:
            out = subprocess.run(
                [sys.executable, __file__, *base, *extra],
                capture_output=True,
                text=True,
                timeout=600,
                check=True,
                env={**os.environ, "UCX_RCACHE_MAX_UNRELEASED": "1024", **env},
            )
            results[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    base_gbps = statistics.median(r["gbps_tel_median"] for r in results[FACTORS[0][0]])
    print(f"load average {os.getloadavg()[0]:.1f}; {rounds} interleaved round(s); medians over rounds")
    print(
        "| variant | post ms | post CPU ms | NIXL time ms (median) | GB/s (median) | vs raw | GB/s by CPU time | posts in progress |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, _, _ in FACTORS:
        rows = results[name]

        def med(key: str, rows: list[dict[str, Any]] = rows) -> float:
            return float(statistics.median(r[key] for r in rows))

        print(
            f"| {name} | {med('post_ms'):.1f} | {med('post_cpu_ms'):.1f} | {med('tel_ms_median'):.1f} | "
            f"{med('gbps_tel_median'):.2f} | {med('gbps_tel_median') / base_gbps:.2f} | {med('gbps_post_cpu'):.2f} | "
            f"{sum(r['posts_in_progress'] for r in rows)}/{sum(r['transfers'] for r in rows)} |"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--desc-bytes", type=int, default=1072400)
    p.add_argument("--n-desc", type=int, default=55)
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--poll-ms", type=float, default=0.0, help="decode side: time between completion checks")
    p.add_argument(
        "--target-poll-ms", type=float, default=0.0, help="prefill side: time between notification polls"
    )
    p.add_argument("--decode-core", type=int, default=None)
    p.add_argument("--prefill-core", type=int, default=None)
    p.add_argument("--busy-core", type=int, default=None, help="run a spinning process pinned to this core")
    p.add_argument("--gap-ms", type=float, default=20.0, help="pause between transfers")
    p.add_argument(
        "--factors", type=int, default=0, metavar="ROUNDS", help="run every FACTORS variant ROUNDS times"
    )
    args = p.parse_args()
    if args.factors:
        run_factors(["--desc-bytes", str(args.desc_bytes), "--n-desc", str(args.n_desc)], args.factors)
        return

    total = args.desc_bytes * args.n_desc
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    peer = ctx.Process(
        target=prefill_side, args=(child, total, args.target_poll_ms, args.prefill_core), daemon=True
    )
    peer.start()
    spinner = None
    if args.busy_core is not None:
        spinner = ctx.Process(target=busy, args=(args.busy_core,), daemon=True)
        spinner.start()
    if args.decode_core is not None:
        os.sched_setaffinity(0, {args.decode_core})
    try:
        agent = make_agent("probe-decode")
        dst = np.zeros(total, dtype=np.uint8)
        agent.register_memory([(dst.ctypes.data, dst.nbytes, 0, "")], "DRAM")
        meta, remote_addr = parent.recv()
        name = agent.add_remote_agent(meta)
        parent.send(agent.get_agent_metadata())
        parent.recv()
        step = args.desc_bytes
        local = agent.prep_xfer_dlist(
            "NIXL_INIT_AGENT", [(dst.ctypes.data + i * step, step, 0) for i in range(args.n_desc)], "DRAM"
        )
        remote = agent.prep_xfer_dlist(
            name, [(remote_addr + i * step, step, 0) for i in range(args.n_desc)], "DRAM"
        )
        idx = np.arange(args.n_desc)
        rows = []
        for rep in range(args.warmup + args.reps):
            t0 = time.perf_counter()
            handle = agent.make_prepped_xfer("READ", local, idx, remote, idx, notif_msg=f"r{rep}:1".encode())
            t1 = time.perf_counter()
            cpu0 = time.thread_time()
            state = first = agent.transfer(handle)
            t2 = time.perf_counter()
            cpu1 = time.thread_time()
            while state == "PROC":
                if args.poll_ms:
                    time.sleep(args.poll_ms / 1000)
                state = agent.check_xfer_state(handle)
            t3 = time.perf_counter()
            tel = agent.get_xfer_telemetry(handle)
            agent.release_xfer_handle(handle)
            if state != "DONE":
                raise RuntimeError(f"transfer {rep}: {state}")
            if rep >= args.warmup:
                rows.append(
                    {
                        "rep": rep,
                        "prep": t1 - t0,
                        "post": t2 - t1,
                        "post_cpu": cpu1 - cpu0,
                        "seen": t3 - t1,
                        "done_at": t3,
                        "tel": tel.xferDuration / 1e6,
                        "proc": first == "PROC",
                    }
                )
            time.sleep(args.gap_ms / 1000)
        if not (dst[0] == 1 and dst[-1] == 1):
            raise RuntimeError("the READ did not copy the data")
        time.sleep(0.2)
        parent.send("stop")
        seen = dict(parent.recv())
    finally:
        peer.join(10)
        if peer.is_alive():
            peer.kill()
        if spinner is not None:
            spinner.kill()

    def med(key: str) -> float:
        return statistics.median(r[key] for r in rows)

    notif = [seen[f"r{r['rep']}:1"] - r["done_at"] for r in rows if f"r{r['rep']}:1" in seen]
    print(
        json.dumps(
            {
                "bytes": total,
                "n_desc": args.n_desc,
                "prep_ms": med("prep") * 1e3,
                "post_ms": med("post") * 1e3,
                "post_cpu_ms": med("post_cpu") * 1e3,
                "seen_ms": med("seen") * 1e3,
                "tel_ms_median": med("tel") * 1e3,
                "gbps_tel": total * len(rows) / sum(r["tel"] for r in rows) / 1e9,
                "gbps_tel_median": total / med("tel") / 1e9,
                "gbps_post_cpu": total / med("post_cpu") / 1e9,
                "posts_in_progress": sum(r["proc"] for r in rows),
                "transfers": len(rows),
                "first_ms": rows[0]["tel"] * 1e3,
                "first_in_progress": rows[0]["proc"],
                "notif_after_done_ms_median": statistics.median(notif) * 1e3 if notif else None,
                "progress_delay_ms": os.environ.get("DYN_NIXL_PROGRESS_DELAY_MS", "default"),
            }
        )
    )


if __name__ == "__main__":
    main()
