"""``python3 -m dynamo.trtllm --model-path MODEL [--extra-engine-args FILE.yaml] …``: the TensorRT-LLM worker.

Journey: frontend -> request plane -> **this worker** (TensorRT-LLM ``LLM`` in-process, token ids
in, token ids out) -> back. It registers the model card once the engine is up (KV block size =
``tokens_per_block``), relays TensorRT-LLM's KV cache events and load to the event plane, serves
``/health``, ``/live`` and ``/metrics`` on ``DYN_SYSTEM_PORT``, and logs ``TrtllmWorker …
initialized`` when ready. Prefill workers register under component ``prefill``; decode workers
pull a prefill worker's KV, call one themselves (decode_first) and prefill locally when either
fails (``DisaggDecodeEngine``).

Verified against a fake engine that mimics TensorRT-LLM's async API (``tests/trtllm``); not yet run
on a GPU with the real TensorRT-LLM (no GPU machine was lent to this task).
"""

from __future__ import annotations

import logging

from dynamo.llm.disagg import DisaggDecodeEngine
from dynamo.llm.model_card import ModelDeploymentCard
from dynamo.llm.worker import Engine, KvEventRelay, exit_with, load_card, run_engine_worker
from dynamo.runtime import DistributedRuntime, RuntimeConfig
from dynamo.runtime.logging import configure_logging
from dynamo.trtllm.args import NOT_INSTALLED, TrtllmConfig, parse_args, trtllm_installed
from dynamo.trtllm.engine import TrtllmBindings, TrtllmEngine

log = logging.getLogger("dynamo.trtllm")


async def run(
    config: TrtllmConfig,
    *,
    runtime: DistributedRuntime | None = None,
    test_bindings: TrtllmBindings | None = None,
) -> int:
    """Run the worker until SIGTERM/SIGINT (or ``runtime.request_shutdown()``); the exit code.

    ``runtime``: join through this runtime instead of creating one. ``test_bindings``: test hook,
    classes that stand in for ``tensorrt_llm``'s (``FakeTrtllmLLM``, ...).
    """
    if runtime is None:
        runtime_config = (
            RuntimeConfig.from_args(config.args) if config.args is not None else RuntimeConfig.from_env()
        )
        runtime = await DistributedRuntime.create(runtime_config.with_(namespace=config.namespace))
    endpoint = config.endpoint_id
    relay = KvEventRelay(runtime, endpoint) if config.kv_events else None
    engine = TrtllmEngine(
        config,
        worker_id=runtime.instance_id,
        kv_event_sink=relay.sink if relay else None,
        bindings=test_bindings,
    )
    serving: Engine = (
        DisaggDecodeEngine(engine, runtime.request_client, runtime.metrics) if config.is_decode else engine
    )

    async def card() -> ModelDeploymentCard:
        role = None if config.disaggregation_mode == "agg" else config.disaggregation_mode
        return await load_card(
            config.model_path,
            engine,
            served_model_name=config.served_model_name,
            migration_limit=config.migration_limit,
            role=role,
        )

    return await run_engine_worker(
        runtime, endpoint, serving, card, relay=relay, worker_name="TrtllmWorker", engine_name="TensorRT-LLM"
    )


def main(argv: list[str] | None = None) -> None:
    configure_logging()
    config = parse_args(argv)
    if not trtllm_installed():
        raise SystemExit(f"dynamo.trtllm: error: {NOT_INSTALLED}")
    exit_with(run(config))
