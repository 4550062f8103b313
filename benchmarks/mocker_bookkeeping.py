"""CPU per long request in the mocker worker's own bookkeeping, in one process (no network).

What it runs, per request, is what the mocker worker process does for one request of
``long_prompt_bench.py``'s unique rows, minus the sockets: decode the request from msgpack (as the
request plane hands it over), run it through ``MockEngine.generate`` to its last chunk (8 output
tokens, ignore_eos), and hand every KV event batch the engine emits to the worker's
``KvEventPublisher.sink`` (history, cached-block set) and encode it as the publisher does for the
event plane. The figure is process CPU time (``time.process_time``) per request, so a shared
machine changes it little; wall time is not reported.

Three phases per ISL: ``fresh`` (the cache has room: blocks are stored, then released to the LRU),
``shared`` (every prompt is one long shared text plus its own ~40-token question, as in the shared
rows: ``concurrency`` sequences hold the prefix at once) and ``full`` (the cache is full of other
prompts' blocks: every new block also evicts one, and its ``removed`` event is published).

    python benchmarks/mocker_bookkeeping.py                       # this tree
    python benchmarks/mocker_bookkeeping.py --variant before=/tmp/wt-before   # plus another tree
    python benchmarks/mocker_bookkeeping.py --breakdown           # plus CPU per bookkeeping step
    python benchmarks/mocker_bookkeeping.py --profile 32000       # cProfile of the full phase
                                                                  # (PROFILE_SORT=cumulative)

``--variant NAME=DIR`` runs the same measurement with ``DIR`` first on ``sys.path`` (a
``git worktree`` of another commit) in a child process, interleaved with this tree's runs.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import os
import pstats
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

DEFAULT_ISLS = (2000, 6000, 32000)
# long_prompt_bench.py's mocker flags
BLOCK_SIZE = 16
NUM_BLOCKS = 400_000
MAX_NUM_SEQS = 512
MAX_BATCHED = 1_048_576
SPEEDUP = 1000.0
OSL = 8


def _measure(isl: int, requests: int, concurrency: int, profile: bool) -> dict[str, Any]:
    """Run in the importing tree: returns CPU ms per request for the fresh and full phases."""
    from dynamo.llm import kv_events
    from dynamo.llm.protocols import PreprocessedRequest, StopConditions, request_from_wire, request_to_wire
    from dynamo.llm.token_ids import as_token_ids
    from dynamo.mocker.config import MockerConfig
    from dynamo.mocker.engine import MockEngine
    from dynamo.runtime import EndpointId
    from dynamo.worker.kv_publisher import KvEventPublisher

    publisher = KvEventPublisher(None, EndpointId("bench", "mocker", "generate"))  # type: ignore[arg-type]
    published = 0

    def sink(batch: kv_events.KvEventBatch) -> None:
        nonlocal published
        publisher.sink(batch)
        queue = publisher._queue
        while not queue.empty():  # what the publisher task does with each batch
            published += len(kv_events.encode(queue.get_nowait()))

    config = MockerConfig(
        num_gpu_blocks=NUM_BLOCKS,
        block_size=BLOCK_SIZE,
        max_num_seqs=MAX_NUM_SEQS,
        max_num_batched_tokens=MAX_BATCHED,
        speedup_ratio=SPEEDUP,
    )
    rng = random.Random(isl)
    counter = 0

    shared_prefix = [rng.randrange(3, 49152) for _ in range(max(0, isl - 40))]

    def payload(shared: bool = False) -> bytes:
        nonlocal counter
        counter += 1
        if shared:
            ids = shared_prefix + [rng.randrange(3, 49152) for _ in range(isl - len(shared_prefix))]
        else:
            ids = [rng.randrange(3, 49152) for _ in range(isl)]
        req = PreprocessedRequest(
            request_id=f"r{counter}",
            model="bench",
            token_ids=as_token_ids(ids),
            stop=StopConditions(max_tokens=OSL, ignore_eos=True),
        )
        return request_to_wire(req)

    async def run_batch(engine: MockEngine, payloads: list[bytes]) -> float:
        todo = list(reversed(payloads))

        async def client() -> None:
            while todo:
                req = request_from_wire(todo.pop())
                async for _ in engine.generate(req):
                    pass

        cpu0 = time.process_time()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        return time.process_time() - cpu0

    async def main() -> dict[str, Any]:
        engine = MockEngine(config, worker_id=1, vocab_size=49152, eos_token_id=2, kv_event_sink=sink)
        if hasattr(publisher, "use_block_source"):
            # As dynamo.worker.run wires a mocker worker: snapshots come from the engine (none
            # is asked for here), and the publisher keeps no copy of the block set.
            publisher.use_block_source(_no_snapshot)
        await engine.start()
        blocks_per_req = isl // BLOCK_SIZE
        await run_batch(engine, [payload() for _ in range(min(5, requests))])  # warm-up
        fresh_payloads = [payload() for _ in range(requests)]
        fresh = await run_batch(engine, fresh_payloads)
        await run_batch(engine, [payload(shared=True) for _ in range(min(5, requests))])  # warm-up
        shared = await run_batch(engine, [payload(shared=True) for _ in range(requests)])
        # Fill the cache with other prompts' blocks, then measure with eviction.
        while engine.kv.num_free > 2 * blocks_per_req:
            n = min(200, max(1, (engine.kv.num_free - blocks_per_req) // blocks_per_req))
            await run_batch(engine, [payload() for _ in range(n)])
        full_payloads = [payload() for _ in range(requests)]
        prof = cProfile.Profile() if profile else None
        if prof is not None:
            prof.enable()
        full = await run_batch(engine, full_payloads)
        if prof is not None:
            prof.disable()
        await engine.stop()
        out: dict[str, Any] = {
            "isl": isl,
            "requests": requests,
            "fresh_ms": fresh * 1000 / requests,
            "shared_ms": shared * 1000 / requests,
            "full_ms": full * 1000 / requests,
        }
        if prof is not None:
            s = io.StringIO()
            pstats.Stats(prof, stream=s).sort_stats(os.environ.get("PROFILE_SORT", "tottime")).print_stats(40)
            out["profile"] = s.getvalue()
        return out

    return asyncio.run(main())


BREAKDOWN = ("decode", "block hashes", "admission checks", "acquire", "events to relay", "release")


def _breakdown(isl: int, requests: int) -> dict[str, float]:
    """CPU ms per request of each bookkeeping step, called directly (no engine loop), with the
    cache full: what the engine does for one request besides scheduling and streaming."""
    from dynamo.llm import kv_events
    from dynamo.llm.kv_events import compute_block_hashes, compute_sequence_hashes
    from dynamo.llm.protocols import PreprocessedRequest, StopConditions, request_from_wire, request_to_wire
    from dynamo.llm.token_ids import as_token_ids
    from dynamo.mocker.event_log import KvEventLog
    from dynamo.mocker.kv_manager import KvManager
    from dynamo.runtime import EndpointId
    from dynamo.worker.kv_publisher import KvEventPublisher

    publisher = KvEventPublisher(None, EndpointId("bench", "mocker", "generate"))  # type: ignore[arg-type]
    if hasattr(publisher, "use_block_source"):
        publisher.use_block_source(_no_snapshot)

    def sink(batch: kv_events.KvEventBatch) -> None:
        publisher.sink(batch)
        queue = publisher._queue
        while not queue.empty():
            kv_events.encode(queue.get_nowait())

    log = KvEventLog(1, sink)
    kv = KvManager(NUM_BLOCKS, BLOCK_SIZE, log)
    rng = random.Random(isl)
    spent = dict.fromkeys(BREAKDOWN, 0.0)
    clock = time.process_time
    blocks_per_req = isl // BLOCK_SIZE
    warm = NUM_BLOCKS // blocks_per_req + 5  # fill the cache first
    for i in range(warm + requests):
        ids = [rng.randrange(3, 49152) for _ in range(isl)]
        payload = request_to_wire(
            PreprocessedRequest(f"r{i}", "bench", as_token_ids(ids), stop=StopConditions(max_tokens=OSL))
        )
        t0 = clock()
        req = request_from_wire(payload)
        t1 = clock()
        local = compute_block_hashes(req.token_ids, BLOCK_SIZE)
        hashes = compute_sequence_hashes(local)
        t2 = clock()
        kv.cached_prefix(hashes)
        kv.can_admit(kv.blocks_to_activate(hashes, 1))
        t3 = clock()
        kv.acquire(hashes, local, 1)
        t4 = clock()
        log.flush()
        t5 = clock()
        kv.release(hashes, 1)
        log.flush()
        t6 = clock()
        if i >= warm:
            for name, d in zip(
                BREAKDOWN, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5), strict=True
            ):
                spent[name] += d
    return {name: v * 1000 / requests for name, v in spent.items()}


def _no_snapshot(worker_id: int, dp_rank: int) -> Any:
    raise RuntimeError("no snapshot is taken in this benchmark")


def _child(tree: Path, isl: int, requests: int, concurrency: int, mode: str = "--child") -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(tree))
    cmd = [sys.executable, str(Path(__file__).resolve()), mode, str(isl), "--requests", str(requests)]
    cmd += ["--concurrency", str(concurrency)]
    proc = subprocess.run(cmd, env=env, cwd=tree, capture_output=True, text=True, timeout=900, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--isl", type=int, nargs="+", default=list(DEFAULT_ISLS))
    p.add_argument("--requests", type=int, default=50, help="measured requests per phase")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3, help="runs per tree and ISL (the minimum is reported)")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=DIR")
    p.add_argument("--profile", type=int, metavar="ISL", help="print a cProfile of the full phase at ISL")
    p.add_argument("--breakdown", action="store_true", help="also time each bookkeeping step (full cache)")
    p.add_argument("--child", type=int, help=argparse.SUPPRESS)
    p.add_argument("--child-breakdown", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child is not None:
        print(json.dumps(_measure(args.child, args.requests, args.concurrency, False)))
        return
    if args.child_breakdown is not None:
        print(json.dumps(_breakdown(args.child_breakdown, args.requests)))
        return
    if args.profile is not None:
        out = _measure(args.profile, args.requests, args.concurrency, True)
        print(
            f"isl {out['isl']}: fresh {out['fresh_ms']:.2f} ms, shared {out['shared_ms']:.2f} ms,"
            f" full {out['full_ms']:.2f} ms CPU a request"
        )
        print(out["profile"])
        return
    trees = [("ours", ROOT)]
    for spec in args.variant:
        name, _, path = spec.partition("=")
        trees.append((name, Path(path).resolve()))
    with open("/proc/loadavg") as f:
        print(f"load average at start: {' '.join(f.read().split()[:3])}")
    print(f"requests {args.requests} a phase, concurrency {args.concurrency}, min of {args.repeats} runs")
    phases = ("fresh_ms", "shared_ms", "full_ms")
    print("| ISL | tree | fresh cache ms/req | shared prefix ms/req | full cache (evicting) ms/req |")
    print("|---|---|---|---|---|")
    for isl in args.isl:
        best: dict[str, dict[str, float]] = {name: {} for name, _ in trees}
        for _ in range(args.repeats):
            for name, tree in trees:  # interleaved, so a burst of load hits every tree alike
                r = _child(tree, isl, args.requests, args.concurrency)
                for phase in phases:
                    if phase in r:  # an older tree's script may lack a phase
                        best[name][phase] = min(best[name].get(phase, float("inf")), r[phase])
        for name, _ in trees:
            cells = " | ".join(f"{best[name][ph]:.2f}" if ph in best[name] else "-" for ph in phases)
            print(f"| {isl} | {name} | {cells} |", flush=True)
    if args.breakdown:
        _print_breakdown(args, trees)
    with open("/proc/loadavg") as f:
        print(f"load average at end: {' '.join(f.read().split()[:3])}")


def _print_breakdown(args: argparse.Namespace, trees: list[tuple[str, Path]]) -> None:
    print()
    print(f"Per step, full cache, CPU ms a request (min of {args.repeats} runs of {args.requests} requests):")
    print()
    print("| ISL | tree | " + " | ".join(BREAKDOWN) + " | sum |")
    print("|---|---|" + "---|" * (len(BREAKDOWN) + 1))
    for isl in args.isl:
        best: dict[str, dict[str, float]] = {name: {} for name, _ in trees}
        for _ in range(args.repeats):
            for name, tree in trees:
                r = _child(tree, isl, args.requests, args.concurrency, "--child-breakdown")
                for step, v in r.items():
                    best[name][step] = min(best[name].get(step, float("inf")), v)
        for name, _ in trees:
            row = best[name]
            cells = " | ".join(f"{row[step]:.2f}" for step in BREAKDOWN)
            print(f"| {isl} | {name} | {cells} | {sum(row.values()):.2f} |", flush=True)


if __name__ == "__main__":
    main()
