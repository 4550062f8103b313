"""``python3 -m dynamo.mocker --model-path DIR``: simulated engine workers on the runtime.

Journey: frontend -> request plane -> **mocker worker** (``MockEngine``, no computation; timing
from the reference model) -> ``EngineOutput`` back. ``--num-workers N`` runs N independent
simulated engines in this process, each its own instance with its own lease.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
from pathlib import Path

from tokenizers import Tokenizer

from dynamo.llm.disagg import DisaggDecodeEngine
from dynamo.llm.model_card import ModelDeploymentCard, RuntimeFacts
from dynamo.llm.worker import KvEventRelay, exit_with, serve_engine
from dynamo.mocker.config import MockerConfig
from dynamo.mocker.engine import MockEngine
from dynamo.runtime import DistributedRuntime, EndpointId, RuntimeConfig, add_runtime_args
from dynamo.runtime.logging import configure_logging

log = logging.getLogger("dynamo.mocker")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python3 -m dynamo.mocker", description="Simulated vLLM-like engine workers (no GPU needed)."
    )
    parser.add_argument("--model-path", required=True, help="HF model folder (tokenizer and config are read)")
    parser.add_argument(
        "--model-name",
        "--served-model-name",
        dest="model_name",
        default=None,
        help="served model name (default: the folder name)",
    )
    parser.add_argument(
        "--endpoint",
        default=None,
        help="dyn://ns.component.endpoint (default dyn://<namespace>.backend.generate; "
        "prefill workers: dyn://<namespace>.prefill.generate)",
    )
    parser.add_argument("--num-workers", type=int, default=1, help="simulated engines in this process")
    parser.add_argument(
        "--max-model-len", type=int, default=None, help="context length (default: the model's)"
    )
    parser.add_argument("--migration-limit", type=int, default=0, help="put in the model card")
    parser.add_argument(
        "--no-kv-events", dest="kv_events", action="store_false", help="do not publish KV cache events"
    )
    MockerConfig.add_cli_args(parser)
    add_runtime_args(parser)
    return parser


def _tokenizer_facts(model_path: Path) -> tuple[int, list[int]]:
    tok = Tokenizer.from_file(str(model_path / "tokenizer.json"))
    raw = json.loads((model_path / "tokenizer.json").read_text())
    special = [t["id"] for t in raw.get("added_tokens", []) if t.get("special")]
    return tok.get_vocab_size(with_added_tokens=True), special


async def run(args: argparse.Namespace) -> int:
    config = MockerConfig.from_args(args)
    model_path = Path(args.model_path)
    if not (model_path / "tokenizer.json").is_file():
        log.error(
            "--model-path %s has no tokenizer.json (prepare one: python3 -m dynamo.models prepare "
            "smollm2 --tokenizer-only)",
            model_path,
        )
        return 2
    base_rt = RuntimeConfig.from_args(args)
    component = "prefill" if config.is_prefill_worker else "backend"
    endpoint = (
        EndpointId.parse(args.endpoint, base_rt.namespace)
        if args.endpoint
        else EndpointId(base_rt.namespace, component, "generate")
    )
    facts = RuntimeFacts(
        total_kv_blocks=config.num_gpu_blocks,
        max_num_seqs=config.max_num_seqs,
        max_num_batched_tokens=config.max_num_batched_tokens,
        disaggregation_role=None if config.worker_mode == "agg" else config.worker_mode,
    )
    card = ModelDeploymentCard.from_local_path(
        model_path,
        served_model_name=args.model_name,
        context_length=args.max_model_len,
        kv_cache_block_size=config.block_size,
        migration_limit=args.migration_limit,
        runtime=facts,
    )
    config.max_model_len = card.context_length
    vocab_size, special = await asyncio.to_thread(_tokenizer_facts, model_path)
    eos = card.eos_token_ids[0] if card.eos_token_ids else None

    workers: list[tuple[DistributedRuntime, MockEngine]] = []
    try:
        for _ in range(args.num_workers):
            runtime = await DistributedRuntime.create(base_rt)
            relay = KvEventRelay(runtime, endpoint) if args.kv_events else None
            engine = MockEngine(
                config,
                runtime.instance_id,
                vocab_size=vocab_size,
                eos_token_id=eos,
                kv_event_sink=relay.sink if relay else None,
                special_token_ids=special,
            )
            await engine.start()
            workers.append((runtime, engine))
            served = (
                DisaggDecodeEngine(engine, runtime.request_client, runtime.metrics)
                if config.is_decode_worker
                else engine
            )
            await serve_engine(runtime, endpoint, card, served, relay=relay, worker_name="Mocker worker")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        import signal

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("shutting down %d mocker worker(s)", len(workers))
    finally:
        await asyncio.gather(*(rt.shutdown() for rt, _ in workers), return_exceptions=True)
        await asyncio.gather(*(eng.stop() for _, eng in workers), return_exceptions=True)
    return 0


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    configure_logging()
    exit_with(run(args))
