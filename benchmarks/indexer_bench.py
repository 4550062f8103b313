"""KV indexer benchmark: find_matches latency on a large tree and KV event application rate.

Setup: 64 workers holding 1,000,000 (worker, block) pairs in total, built from KV ``stored``
events the way engines report them: each worker caches prompts made of one of 32 shared system
prefixes (8-64 blocks) followed by a private continuation; one 256-block document is cached on
every worker (the deepest possible walk). Queries are 4,096-token prompts (block size 16: 256
blocks), distinct per call unless noted. Event application replays 100,000 fresh events per row
(stores extending cached prompts, removals of cached blocks) on that tree, on one core; a
KvRouter.select row shows the whole per-request cost with 64 candidates.

Run: ``.venv/bin/python benchmarks/indexer_bench.py`` (about 30 s). Prints numbers only.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import random
import resource
import statistics
import struct
import sys
import time
from collections.abc import Callable

import xxhash

from dynamo.llm.kv_events import (
    HASH_SEED,
    KvEvent,
    KvEventBatch,
    KvRemoved,
    KvStored,
    StoredBlock,
    compute_block_hashes,
    compute_sequence_hashes,
    decode_event_batch,
    encode,
)
from dynamo.router.indexer import KvIndexer
from dynamo.router.kv_router import KvRouter, KvRouterConfig

BLOCK_SIZE = 16
PROMPT_TOKENS = 4096


class Fleet:
    """Generates engine-like KV events for many workers and remembers what each one holds.

    Engine block hashes are deterministic per content path (as vLLM's are with a fixed hash seed)
    but differ from ours; an engine reports only blocks it did not hold yet.
    """

    ENGINE_SALT = 0x9E3779B97F4A7C15

    def __init__(self, workers: int, rng: random.Random) -> None:
        self.rng = rng
        self.workers = list(range(1, workers + 1))
        self.next_event = dict.fromkeys(self.workers, 1)
        self.held: dict[int, list[int]] = {w: [] for w in self.workers}  # engine hashes, for sampling
        self.holds: dict[int, set[int]] = {w: set() for w in self.workers}
        self.system_prefixes = [[rng.getrandbits(64) for _ in range(rng.randint(8, 64))] for _ in range(32)]
        self.prompts: list[list[int]] = []  # local hashes of every prompt some worker cached

    def _event(self, worker: int, data: KvStored | KvRemoved) -> KvEventBatch:
        event = KvEvent(self.next_event[worker], data)
        self.next_event[worker] += 1
        return KvEventBatch(worker, [event])

    def _store(self, worker: int, parent_seq: int | None, local_hashes: list[int]) -> KvEventBatch | None:
        held, holds = self.held[worker], self.holds[worker]
        salt = self.ENGINE_SALT
        parent = None if parent_seq is None else parent_seq ^ salt
        blocks: list[StoredBlock] = []
        seq = parent_seq
        for h in local_hashes:
            seq = h if seq is None else xxhash.xxh3_64_intdigest(struct.pack("<QQ", seq, h), seed=HASH_SEED)
            engine = seq ^ salt
            if engine in holds and not blocks:
                parent = engine  # already cached: the new blocks hang below it
                continue
            blocks.append(StoredBlock(engine, h))
            if engine not in holds:
                holds.add(engine)
                held.append(engine)
        return self._event(worker, KvStored(blocks, parent)) if blocks else None

    def cached_prompt(self, worker: int, min_blocks: int, max_blocks: int) -> KvEventBatch | None:
        """``worker`` computed a prompt: one of the shared system prefixes and a private tail."""
        prefix = self.rng.choice(self.system_prefixes)
        tail = [self.rng.getrandbits(64) for _ in range(self.rng.randint(min_blocks, max_blocks))]
        self.prompts.append(prefix + tail)
        return self._store(worker, None, prefix + tail)

    def document(self, worker: int, local_hashes: list[int]) -> KvEventBatch | None:
        return self._store(worker, None, local_hashes)

    def random_batch(self, max_blocks: int = 8) -> KvEventBatch:
        """One event from a random worker: 1-8 blocks stored below a held block, or 1-8 removed."""
        rng = self.rng
        while True:
            worker = rng.choice(self.workers)
            held = self.held[worker]
            if rng.random() < 0.5 or len(held) < 64:
                parent_seq = held[rng.randrange(len(held))] ^ self.ENGINE_SALT if held else None
                tail = [rng.getrandbits(64) for _ in range(rng.randint(1, max_blocks))]
                batch = self._store(worker, parent_seq, tail)
                if batch is not None:
                    return batch
                continue
            victims = []
            for _ in range(rng.randint(1, max_blocks)):
                i = rng.randrange(len(held))
                held[i], held[-1] = held[-1], held[i]
                victims.append(held.pop())
            self.holds[worker].difference_update(victims)
            return self._event(worker, KvRemoved(victims))


def event_blocks(batch: KvEventBatch) -> int:
    data = batch.events[0].data
    return len(data.blocks) if isinstance(data, KvStored) else len(getattr(data, "block_hashes", ()))


def percentiles(samples_ns: list[int]) -> tuple[float, float, float]:
    ordered = sorted(samples_ns)
    n = len(ordered)
    return (
        ordered[n // 2] / 1000,
        ordered[min(n - 1, int(n * 0.99))] / 1000,
        statistics.fmean(ordered) / 1000,
    )


def time_rotating(
    fn: Callable[[list[int]], object], inputs: list[list[int]], iterations: int
) -> tuple[float, float, float]:
    """Per-call latency of ``fn`` over ``inputs`` in turn."""
    samples = []
    clock = time.perf_counter_ns
    for i in range(iterations):
        arg = inputs[i % len(inputs)]
        start = clock()
        fn(arg)
        samples.append(clock() - start)
    return percentiles(samples)


def time_calls(fn: Callable[[], object], iterations: int) -> tuple[float, float, float]:
    for _ in range(min(50, iterations)):
        fn()
    samples = []
    clock = time.perf_counter_ns
    for _ in range(iterations):
        start = clock()
        fn()
        samples.append(clock() - start)
    return percentiles(samples)


def index_bytes(index: KvIndexer) -> int:
    """Bytes held by the index's tables and the ints in them (each object counted once)."""
    seen: set[int] = set()
    total = sys.getsizeof(index._nodes)
    tables = [index._nodes] + [w.blocks for w in index._workers.values()]
    for table in tables[1:]:
        total += sys.getsizeof(table)
    for table in tables:
        for obj in (*table.keys(), *table.values()):
            if id(obj) not in seen:
                seen.add(id(obj))
                total += sys.getsizeof(obj)
    return total


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=64)
    parser.add_argument("--blocks", type=int, default=1_000_000, help="(worker, block) pairs stored")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)

    print(f"python {platform.python_version()} on {platform.machine()} ({platform.processor() or 'cpu'})")
    print(f"workers {args.workers}, block size {BLOCK_SIZE}, prompt {PROMPT_TOKENS} tokens")
    print(f"{os.cpu_count()} CPUs, load average at start {os.getloadavg()[0]:.2f} (other processes skew p99)")

    # ----- build the tree from stored events ---------------------------------------------------
    rss_before = rss_mib()
    fleet = Fleet(args.workers, rng)
    index = KvIndexer()
    document_tokens = [rng.randrange(32000) for _ in range(PROMPT_TOKENS)]
    document = compute_block_hashes(document_tokens, BLOCK_SIZE)
    build = [b for b in (fleet.document(w, document) for w in fleet.workers) if b is not None]
    stored = len(document) * args.workers
    while stored < args.blocks:
        batch = fleet.cached_prompt(rng.choice(fleet.workers), 16, 192)
        if batch is not None:
            stored += event_blocks(batch)
            build.append(batch)
    start = time.perf_counter()
    for batch in build:
        index.apply(batch)
    build_s = time.perf_counter() - start
    del build
    gc.collect()
    pairs = sum(index.tree_size(w) for w in fleet.workers)
    rss = rss_mib()
    size = index_bytes(index)
    print(
        f"tree: {pairs:,} (worker, block) pairs, {index.num_nodes:,} nodes; built from stored events in "
        f"{build_s:.2f} s ({pairs / build_s / 1e6:.2f} M blocks/s)"
    )
    print(
        f"memory: index {size / 2**20:.0f} MiB ({size / pairs:.0f} B per pair); "
        f"process max RSS {rss:.0f} MiB (+{rss - rss_before:.0f} MiB with the event generator's state)"
    )

    # ----- hashing a prompt --------------------------------------------------------------------
    print()
    print(
        f"hashing one {PROMPT_TOKENS}-token prompt ({PROMPT_TOKENS // BLOCK_SIZE} blocks), µs p50 / p99 / mean:"
    )
    p = time_calls(lambda: compute_block_hashes(document_tokens, BLOCK_SIZE), args.iterations)
    print(f"  compute_block_hashes     {p[0]:8.1f} {p[1]:8.1f} {p[2]:8.1f}")
    p = time_calls(lambda: compute_sequence_hashes(document), args.iterations)
    print(f"  compute_sequence_hashes  {p[0]:8.1f} {p[1]:8.1f} {p[2]:8.1f}")

    # ----- find_matches ------------------------------------------------------------------------
    # Distinct prompts per call, so that (as in production) their nodes are mostly not in the CPU
    # cache; the repeated prompt shows the warm-cache floor of the deepest walk.
    blocks = PROMPT_TOKENS // BLOCK_SIZE
    n = args.iterations

    def fresh(k: int) -> list[int]:
        return [rng.getrandbits(64) for _ in range(k)]

    conversations = [(c + fresh(blocks))[:blocks] for c in rng.sample(fleet.prompts, k=n)]
    after_prefix = [(p + fresh(blocks))[:blocks] for p in rng.choices(fleet.system_prefixes, k=n)]
    scenarios = {
        "one prompt all 64 workers hold, repeated": [document],
        "distinct cached conversations": conversations,
        "distinct new prompts after a system prefix": after_prefix,
        "unseen prompts (miss at block 0)": [fresh(blocks) for _ in range(n)],
    }
    print()
    print(f"find_matches on {blocks}-block prompts, µs p50 / p99 / mean (hashing excluded):")
    for name, prompts in scenarios.items():
        seqs = [compute_sequence_hashes(p) for p in prompts]
        depths = [max(index.find_matches_sequence(q).scores.values(), default=0) for q in seqs]
        p = time_rotating(index.find_matches_sequence, seqs, n)
        print(
            f"  {name:44s} {p[0]:8.1f} {p[1]:8.1f} {p[2]:8.1f}   (deepest match: mean {statistics.fmean(depths):.0f})"
        )
    p = time_rotating(index.find_matches, conversations, n)
    print(
        f"  {'distinct cached conversations, local hashes':44s} {p[0]:8.1f} {p[1]:8.1f} {p[2]:8.1f}   (hashes as it walks)"
    )

    # ----- the whole routing decision ----------------------------------------------------------
    router = KvRouter(KvRouterConfig(block_size=BLOCK_SIZE))
    router.index = index
    candidates = list(fleet.workers)
    for w in candidates:
        router.add_worker(w, total_blocks=16384)
    cold_tokens = [[rng.randrange(32000) for _ in range(PROMPT_TOKENS)] for _ in range(16)]
    print()
    print(
        f"KvRouter.select for a {PROMPT_TOKENS}-token prompt, {len(candidates)} candidates, µs p50 / p99 / mean:"
    )
    print("  (hashing + find_matches + scoring + load accounting; each request then finished, untimed)")
    for name, token_lists in (
        ("prompt all workers cache", [document_tokens]),
        ("unseen prompt", cold_tokens),
    ):
        samples = []
        for i in range(n):
            tokens = token_lists[i % len(token_lists)]
            start_ns = time.perf_counter_ns()
            router.select(tokens, "r", candidates)
            samples.append(time.perf_counter_ns() - start_ns)
            router.on_finished("r")
        p = percentiles(samples)
        print(f"  {name:44s} {p[0]:8.1f} {p[1]:8.1f} {p[2]:8.1f}")

    # ----- event application -------------------------------------------------------------------
    # Rounds generated up front, each continuing from the state the previous one leaves: events of
    # 1-8 blocks applied as Python objects, the same decoded from msgpack first (what the
    # event-plane subscriber does), and single-block events (a decode step filling one block).
    print()
    rounds = [
        ("apply, 1-8 blocks per event", [fleet.random_batch() for _ in range(args.events)], False),
        ("msgpack decode + apply, 1-8 blocks", [fleet.random_batch() for _ in range(args.events)], True),
        ("apply, 1 block per event", [fleet.random_batch(max_blocks=1) for _ in range(args.events)], False),
    ]
    chunks = 10
    print(
        f"event application, one core, {args.events:,} events per row (1 event per batch), events/s:\n"
        f"  (median and worst of {chunks} consecutive chunks, CPU time; then overall wall clock)"
    )
    for name, events, from_msgpack in rounds:
        n_blocks = sum(event_blocks(b) for b in events)
        payloads = [encode(b) for b in events] if from_msgpack else []
        gc.collect()
        size = len(events) // chunks
        rates = []
        wall = time.perf_counter()
        for c in range(chunks):
            cpu = time.process_time()
            if from_msgpack:
                for payload in payloads[c * size : (c + 1) * size]:
                    index.apply(decode_event_batch(payload))
            else:
                for batch in events[c * size : (c + 1) * size]:
                    index.apply(batch)
            rates.append(size / (time.process_time() - cpu))
        wall = time.perf_counter() - wall
        median = statistics.median(rates)
        print(
            f"  {name:36s} {median:9,.0f} median {min(rates):9,.0f} worst {len(events) / wall:9,.0f} wall"
            f"   ({n_blocks / len(events):.1f} blocks/event, {1e6 / median:.2f} µs/event)"
        )
    assert not index.pending_resyncs() and index.stats.unknown_parents == 0
    print()
    print(f"final tree: {index.num_nodes:,} nodes; stats {index.stats}")
    print(f"load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
