"""``python3 -m dynamo.vllm --model MODEL [vLLM engine args…]``: the vLLM engine worker.

Journey: frontend -> request plane -> **this worker** (vLLM ``AsyncLLM`` in-process, token ids in,
token ids out) -> back. It registers the model card once the engine is up, relays vLLM's KV cache
events and load to the event plane, serves ``/health``, ``/live`` and ``/metrics`` (with vLLM's
own metrics) on ``DYN_SYSTEM_PORT``, and logs ``VllmWorker … initialized`` when ready.
"""

from __future__ import annotations

import logging

from dynamo.llm.disagg import DisaggDecodeEngine
from dynamo.llm.model_card import ModelDeploymentCard
from dynamo.llm.worker import Engine, KvEventRelay, exit_with, load_card, run_engine_worker
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
    # A decode worker pulls the prefill worker's KV, or calls one itself (decode_first), and
    # prefills locally when either fails.
    serving: Engine = (
        DisaggDecodeEngine(engine, runtime.request_client, runtime.metrics) if config.is_decode else engine
    )

    async def card() -> ModelDeploymentCard:
        register_vllm_metrics(runtime.metrics)
        names = config.engine_args.served_model_name
        served = (names[0] if isinstance(names, list | tuple) else names) if names else None
        role = None if config.disaggregation_mode == "agg" else config.disaggregation_mode
        return await load_card(
            config.model, engine, served_model_name=served, migration_limit=config.migration_limit, role=role
        )

    return await run_engine_worker(
        runtime,
        endpoint,
        serving,
        card,
        relay=relay,
        worker_name="VllmWorker",
        engine_name="vLLM",
        start_errors=(EngineStartError,),
    )


def main(argv: list[str] | None = None) -> None:
    configure_logging()
    config = parse_args(argv)
    exit_with(run(config))
