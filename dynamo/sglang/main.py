"""``python3 -m dynamo.sglang --model-path MODEL [SGLang server args…]``: the SGLang engine worker.

Journey: frontend -> request plane -> **this worker** (SGLang ``Engine`` in-process, token ids in,
token ids out) -> back. It registers the model card once the engine is up (KV block size = the
page size), relays SGLang's KV cache events and load to the event plane, serves ``/health``,
``/live`` and ``/metrics`` on ``DYN_SYSTEM_PORT``, and logs ``SglangWorker … initialized`` when
ready. Prefill workers (``--disaggregation-mode prefill``) register under component ``prefill``
with their bootstrap address in the card; decode workers find a prefill worker for every request
(``dynamo.sglang.disagg``).

Verified against a fake engine that mimics SGLang's async API (``tests/sglang``); not yet run on
a GPU with the real SGLang (no GPU machine was lent to this task).
"""

from __future__ import annotations

import logging

from dynamo.llm.disagg import DisaggDecodeEngine
from dynamo.llm.model_card import ModelDeploymentCard
from dynamo.llm.worker import Engine, KvEventRelay, exit_with, load_card, run_engine_worker
from dynamo.runtime import DistributedRuntime, EndpointId, RuntimeConfig
from dynamo.runtime.logging import configure_logging
from dynamo.sglang.args import NOT_INSTALLED, SglangConfig, parse_args, sglang_installed
from dynamo.sglang.disagg import SglangDecodeEngine
from dynamo.sglang.engine import SglangBindings, SglangEngine

log = logging.getLogger("dynamo.sglang")


async def run(
    config: SglangConfig,
    *,
    runtime: DistributedRuntime | None = None,
    test_bindings: SglangBindings | None = None,
) -> int:
    """Run the worker until SIGTERM/SIGINT (or ``runtime.request_shutdown()``); the exit code.

    ``runtime``: join through this runtime instead of creating one. ``test_bindings``: test hook,
    an engine class that stands in for ``sglang.Engine`` (``FakeSglangEngine``).
    """
    if runtime is None:
        runtime_config = (
            RuntimeConfig.from_args(config.args) if config.args is not None else RuntimeConfig.from_env()
        )
        runtime = await DistributedRuntime.create(runtime_config.with_(namespace=config.namespace))
    endpoint = config.endpoint_id
    relay = KvEventRelay(runtime, endpoint) if config.kv_events else None
    engine = SglangEngine(
        config,
        worker_id=runtime.instance_id,
        kv_event_sink=relay.sink if relay else None,
        advertise_host=runtime.config.advertised_host(),
        bindings=test_bindings,
    )
    serving: Engine = engine
    if config.is_decode:
        serving = SglangDecodeEngine(
            DisaggDecodeEngine(engine, runtime.request_client, runtime.metrics),
            runtime,
            EndpointId(endpoint.namespace, "prefill", endpoint.name),
        )

    async def card() -> ModelDeploymentCard:
        role = None if config.disaggregation_mode == "agg" else config.disaggregation_mode
        return await load_card(
            config.model_path,
            engine,
            served_model_name=config.served_model_name,
            migration_limit=config.migration_limit,
            role=role,
            bootstrap_address=engine.bootstrap_address,
        )

    return await run_engine_worker(
        runtime, endpoint, serving, card, relay=relay, worker_name="SglangWorker", engine_name="SGLang"
    )


def main(argv: list[str] | None = None) -> None:
    configure_logging()
    config = parse_args(argv)
    if not sglang_installed():
        raise SystemExit(f"dynamo.sglang: error: {NOT_INSTALLED}")
    exit_with(run(config))
