"""``python3 -m dynamo.vllm --model MODEL [vLLM engine args…]``: the vLLM engine worker.

Journey: frontend -> request plane -> **this worker** (vLLM ``AsyncLLM`` in-process, token ids in,
token ids out) -> back. It registers the model card once the engine is up, relays vLLM's KV cache
events and load to the event plane, serves ``/health``, ``/live`` and ``/metrics`` (with vLLM's
own metrics) on ``DYN_SYSTEM_PORT``, and logs ``VllmWorker … initialized`` when ready.
"""

from __future__ import annotations

import asyncio
import logging
import sys

from dynamo.llm.disagg import DisaggDecodeEngine
from dynamo.llm.model_card import ModelDeploymentCard, RuntimeFacts
from dynamo.llm.worker import KvEventRelay, run_until_shutdown, serve_engine
from dynamo.runtime import DistributedRuntime, RuntimeConfig
from dynamo.runtime.logging import configure_logging
from dynamo.vllm.args import WorkerConfig, parse_args

log = logging.getLogger("dynamo.vllm")


async def run(config: WorkerConfig) -> int:
    from dynamo.vllm.engine import EngineStartError, VllmEngine
    from dynamo.vllm.metrics import register_vllm_metrics

    runtime_config = (
        RuntimeConfig.from_args(config.args) if config.args is not None else RuntimeConfig.from_env()
    )
    runtime = await DistributedRuntime.create(runtime_config.with_(namespace=config.namespace))
    endpoint = config.endpoint_id
    relay = KvEventRelay(runtime, endpoint) if config.kv_events else None
    engine = VllmEngine(config, worker_id=runtime.instance_id, kv_event_sink=relay.sink if relay else None)
    try:
        await engine.start()
    except EngineStartError as exc:
        log.error("vLLM engine failed to start: %s", exc)
        await runtime.shutdown()
        return 1
    try:
        register_vllm_metrics(runtime.metrics)
        names = config.engine_args.served_model_name
        served = (names[0] if isinstance(names, list | tuple) else names) if names else None
        card = await asyncio.to_thread(
            ModelDeploymentCard.from_local_path,
            config.model,
            served_model_name=served,
            context_length=engine.context_length,
            kv_cache_block_size=engine.kv_cache_block_size,
            migration_limit=config.migration_limit,
            runtime=RuntimeFacts(
                total_kv_blocks=engine.total_kv_blocks,
                max_num_seqs=engine.max_num_seqs,
                max_num_batched_tokens=engine.max_num_batched_tokens,
                disaggregation_role=None
                if config.disaggregation_mode == "agg"
                else config.disaggregation_mode,
            ),
        )
        # A decode worker pulls the prefill worker's KV, or calls one itself (decode_first), and
        # prefills locally when either fails.
        serving: VllmEngine | DisaggDecodeEngine = engine
        if config.is_decode:
            serving = DisaggDecodeEngine(engine, runtime.request_client, runtime.metrics)
        await serve_engine(runtime, endpoint, card, serving, relay=relay, worker_name="VllmWorker")
    except Exception as exc:
        log.error("vLLM worker failed to register: %s", exc)
        await runtime.shutdown()
        await engine.stop()
        return 1
    await run_until_shutdown(runtime, engine)
    return 0


def main(argv: list[str] | None = None) -> None:
    configure_logging()
    config = parse_args(argv)
    try:
        import uvloop

        code = uvloop.run(run(config))
    except (ValueError, OSError) as exc:  # bad settings, unreachable etcd/NATS, port in use
        log.error("%s", exc)
        code = 2
    sys.exit(code)
