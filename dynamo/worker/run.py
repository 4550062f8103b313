"""A worker process's whole life around its engine: ``run_worker(EngineClass)`` is every engine's main.

Journey: command line -> runtime up -> **engine started, model card built, handlers registered**
(``dynamo.worker.serve``) -> requests flow (request plane -> decode step -> engine -> back) until
SIGTERM/SIGINT -> deregister, drain what is in flight, stop the engine, revoke the lease.

Exit codes: 0 after a graceful shutdown; 1 when the engine did not start or the worker could not
register (one error line each); 2 for bad settings, an unreachable etcd/NATS or a port in use.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any, NoReturn

from dynamo.llm.endpoints import PREFILL_COMPONENT
from dynamo.llm.model_card import ModelDeploymentCard, RuntimeFacts
from dynamo.runtime import DistributedRuntime, EndpointClient, EndpointId
from dynamo.runtime.logging import configure_logging
from dynamo.worker.decode import DecodeStep, PrefillPool
from dynamo.worker.engine import (
    EngineConfig,
    EngineContext,
    EngineFacts,
    EngineNotInstalledError,
    EngineStartError,
    WorkerEngine,
)
from dynamo.worker.kv_publisher import KvEventPublisher
from dynamo.worker.serve import GenerateFn, serve_engine

log = logging.getLogger(__name__)

EngineFactory = Callable[[EngineContext], WorkerEngine]


async def load_card(config: EngineConfig, facts: EngineFacts) -> ModelDeploymentCard:
    """The card of ``config.model_path`` with the started engine's facts (files read off the loop)."""
    runtime_facts = RuntimeFacts(
        total_kv_blocks=facts.total_kv_blocks,
        max_num_seqs=facts.max_num_seqs,
        max_num_batched_tokens=facts.max_num_batched_tokens,
        disaggregation_role=config.worker.role,
        bootstrap_address=facts.bootstrap_address,
    )
    return await asyncio.to_thread(
        ModelDeploymentCard.from_local_path,
        config.model_path,
        served_model_name=config.served_model_name,
        context_length=facts.context_length,
        kv_cache_block_size=facts.kv_cache_block_size,
        migration_limit=config.worker.migration_limit,
        runtime=runtime_facts,
        custom_chat_template=config.worker.custom_jinja_template,
        tool_call_parser=config.worker.tool_call_parser,
        reasoning_parser=config.worker.reasoning_parser,
        features=facts.features,
        model_type=list(facts.model_type) if facts.model_type else None,
    )


class WorkerInstance:
    """One engine on one runtime: what a worker process runs (the mocker runs several)."""

    def __init__(self, runtime: DistributedRuntime, config: EngineConfig, make_engine: EngineFactory) -> None:
        self.runtime = runtime
        self.config = config
        self.endpoint: EndpointId = config.worker.endpoint
        self.kv_publisher = KvEventPublisher(runtime, self.endpoint) if config.kv_events else None
        self.engine = make_engine(
            EngineContext(
                worker_id=runtime.instance_id,
                kv_event_sink=self.kv_publisher.sink if self.kv_publisher else None,
                advertise_host=runtime.config.advertised_host(),
                metrics=runtime.metrics,
            )
        )
        if self.kv_publisher is not None and (source := self.engine.kv_block_source()) is not None:
            self.kv_publisher.use_block_source(source)
        self.decode_step: DecodeStep | None = None
        self._prefill_client: EndpointClient | None = None

    async def start(self) -> bool:
        """Start the engine and register it; False (logged, everything released) when either fails."""
        name = self.engine.name
        try:
            facts = await self.engine.start()
        except Exception as exc:
            detail = str(exc) if isinstance(exc, EngineStartError) else f"{type(exc).__name__}: {exc}"
            log.error("%s engine failed to start: %s", name, detail)
            log.debug("engine start failure", exc_info=True)
            await self.stop()
            return False
        try:
            card = await load_card(self.config, facts)
            generate = await self._generate_path()
            await serve_engine(
                self.runtime,
                self.endpoint,
                card,
                generate,
                self.engine.load_metrics,
                kv_publisher=self.kv_publisher,
                label=self.engine.worker_label,
                embed=self.engine.embed if "embeddings" in card.model_type else None,
            )
        except Exception as exc:
            log.error("%s worker failed to register: %s", name, exc)
            log.debug("registration failure", exc_info=True)
            await self.stop()
            return False
        return True

    async def _generate_path(self) -> GenerateFn:
        """The engine's ``generate``, behind the decode step when requests may carry a prefill's KV."""
        if not self.engine.accepts_kv_transfer:
            return self.engine.generate
        pool: PrefillPool | None = None
        if not self.engine.decode_can_prefill:
            prefill = EndpointId(self.endpoint.namespace, PREFILL_COMPONENT, self.endpoint.name)
            client = self._prefill_client = await self.runtime.endpoint_client(prefill)
            pool = PrefillPool(lambda: client.instances)
        self.decode_step = DecodeStep(
            self.engine.generate,
            self.runtime.request_client,
            self.runtime.metrics,
            timeouts=self.config.worker.disagg_timeouts,
            pick_prefill=pool.pick if pool is not None else None,
        )
        return self.decode_step.generate

    async def stop(self) -> None:
        """Deregister, drain, revoke the lease, stop the engine (each step runs even if one fails)."""
        try:
            await self.runtime.shutdown()
        finally:
            if self._prefill_client is not None:
                with contextlib.suppress(Exception):
                    await self._prefill_client.close()
            with contextlib.suppress(Exception):
                await self.engine.stop()


async def serve(
    make_engine: EngineFactory,
    config: EngineConfig,
    *,
    runtime: DistributedRuntime | None = None,
    replicas: int = 1,
) -> int:
    """Run ``replicas`` engines (each its own runtime, lease and instance) until SIGTERM/SIGINT or
    ``runtime.request_shutdown()``; the exit code. ``runtime``: join through this one (one replica;
    tests)."""
    if runtime is not None and replicas != 1:
        raise ValueError("a given runtime serves exactly one replica")
    instances: list[WorkerInstance] = []
    for _ in range(replicas):
        rt = runtime or await DistributedRuntime.create(config.worker.runtime_config())
        instance = WorkerInstance(rt, config, make_engine)
        if not await instance.start():
            await asyncio.gather(*(i.stop() for i in instances), return_exceptions=True)
            return 1
        instances.append(instance)
    first = instances[0].runtime
    first.install_signal_handlers()
    if len(instances) > 1:
        loop = asyncio.get_running_loop()

        def stop_all() -> None:
            for instance in instances:
                instance.runtime.request_shutdown()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop_all)
    await first.wait_for_shutdown()
    log.info("shutting down %d %s worker(s)", len(instances), instances[0].engine.name)
    await asyncio.gather(*(i.stop() for i in instances), return_exceptions=True)
    return 0


def run_worker(
    engine_cls: type[WorkerEngine], argv: list[str] | None = None, *, config: EngineConfig | None = None
) -> NoReturn:
    """A worker process's main: parse flags (unless ``config`` is given), check the engine is
    installed, serve until signalled."""
    configure_logging()
    if config is None:
        config = engine_cls.parse_config(argv)
    try:
        engine_cls.check_installed()
    except EngineNotInstalledError as exc:
        raise SystemExit(f"{_prog(engine_cls)}: error: {exc}") from None
    replicas = int(getattr(config, "replicas", 1))
    exit_with(serve(lambda ctx: engine_cls(config, ctx), config, replicas=replicas))  # type: ignore[call-arg]


def _prog(engine_cls: type[WorkerEngine]) -> str:
    return engine_cls.__module__.rsplit(".", 1)[0]


def exit_with(main: Coroutine[Any, Any, int]) -> NoReturn:
    """Run a worker process's main coroutine on uvloop and exit with its code.

    Bad settings, unreachable etcd/NATS or a port in use end with one error line and exit 2.
    """
    try:
        import uvloop

        code = uvloop.run(main)
    except (ValueError, OSError) as exc:
        log.error("%s", exc)
        code = 2
    sys.exit(code)
