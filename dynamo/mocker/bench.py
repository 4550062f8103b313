"""In-process micro-benchmark of the mocker engine core (no network, no frontend).

Journey: stands in for the request plane: N concurrent consumers drain ``MockEngine.generate``
streams, so the figure is what the engine loop itself sustains per CPU core.

    python -m dynamo.mocker.bench --requests 4000 --concurrency 256 --isl 256 --osl 100 --speedup-ratio 100
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import time

from dynamo.llm.protocols import PreprocessedRequest, StopConditions
from dynamo.llm.token_ids import as_token_ids
from dynamo.mocker.config import MockerConfig
from dynamo.mocker.engine import MockEngine

logger = logging.getLogger("dynamo.mocker.bench")


async def run(config: MockerConfig, requests: int, concurrency: int, isl: int, osl: int) -> dict[str, float]:
    """Run ``requests`` requests, ``concurrency`` at a time; return throughput figures."""
    engine = MockEngine(config, worker_id=1, vocab_size=32000, eos_token_id=2)
    await engine.start()
    rng = random.Random(0)
    shared = [rng.randrange(3, 32000) for _ in range(isl // 2)]
    prompts = [shared + [rng.randrange(3, 32000) for _ in range(isl - len(shared))] for _ in range(requests)]
    queue = list(range(requests))
    chunks = 0
    tokens = 0

    async def client() -> None:
        nonlocal chunks, tokens
        while queue:
            i = queue.pop()
            req = PreprocessedRequest(
                request_id=f"r{i}",
                model="bench",
                token_ids=as_token_ids(prompts[i]),
                stop=StopConditions(max_tokens=osl, ignore_eos=True),
            )
            async for out in engine.generate(req):
                chunks += 1
                tokens += len(out.token_ids)

    t0 = time.perf_counter()
    cpu0 = time.process_time()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    await engine.stop()
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "requests_per_s": requests / wall,
        "tokens_per_s": tokens / wall,
        "tokens_per_cpu_s": tokens / cpu,
        "tokens_per_chunk": tokens / max(chunks, 1),
        "steps": engine.stats.steps,
        "modelled_s": engine.sim_time_ms / 1000 / config.speedup_ratio,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    MockerConfig.add_cli_args(p)
    p.add_argument("--requests", type=int, default=4000)
    p.add_argument("--concurrency", type=int, default=256)
    p.add_argument("--isl", type=int, default=256, help="prompt tokens (half of them a shared prefix)")
    p.add_argument("--osl", type=int, default=100, help="output tokens")
    p.add_argument("--uvloop", action="store_true")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config = MockerConfig.from_args(args)
    coro = run(config, args.requests, args.concurrency, args.isl, args.osl)
    if args.uvloop:
        import uvloop

        result = uvloop.run(coro)
    else:
        result = asyncio.run(coro)
    logger.info(
        "%s", " ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items())
    )


if __name__ == "__main__":
    main()
