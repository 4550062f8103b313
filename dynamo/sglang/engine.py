"""The SGLang engine, in-process, behind Dynamo's engine interface.

Journey: request plane -> worker handler -> **``SglangEngine.generate``** (``PreprocessedRequest``
-> ``sglang.Engine.async_generate(input_ids=..., stream=True)``, ``dynamo.sglang.request``) ->
``EngineOutput`` chunks (``dynamo.sglang.outputs``) -> back over the request plane -> detokenize
-> SSE. Alongside: SGLang's KV cache events (``dynamo.sglang.kv_events`` through the shared ZMQ
subscriber) and load for the router. This is SGLang's adapter on the worker base (``dynamo.worker``).

Modes: aggregated; **prefill** (the request's prompt is computed here and its KV handed to a decode
worker: the answer is one chunk carrying ``kv_transfer_params = {bootstrap_host, bootstrap_port,
bootstrap_room}``, sent as soon as SGLang has the request; SGLang then waits in the background
for the decode side to pull the KV, up to ``DYN_PREFILL_TIMEOUT`` + ``DYN_KV_TRANSFER_TIMEOUT``,
and the request is aborted if it never comes); **decode** (continues a request from those
parameters; SGLang cannot prefill on a decode worker, so a request without them ends with an
error chunk -- ``decode_can_prefill = False`` has the worker's decode step (``dynamo.worker.decode``)
pick a prefill worker first).

Cancellation: a cancelled or closed stream aborts the SGLang request
(``tokenizer_manager.abort_request``) before the exception propagates.

Features (the card's ``features``): ``logit_bias`` and prompt logprobs always; structured outputs
when SGLang runs a grammar backend (``--grammar-backend``, see ``dynamo.sglang.args``). A request
SGLang refuses as bad (a value out of range, a schema or grammar that does not compile) ends with an
``invalid_request`` error chunk.

Verified against a fake engine that mimics SGLang's async API (``tests/sglang``); not yet run on
a GPU with the real SGLang (no GPU machine was lent to this task).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import json
import logging
import secrets
import shutil
import tempfile
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from dynamo.llm.kv_events import LoadMetrics
from dynamo.llm.model_card import EngineFeatures
from dynamo.llm.protocols import (
    ERROR_INVALID_REQUEST,
    FINISH_CANCELLED,
    FINISH_ERROR,
    FINISH_STOP,
    EngineOutput,
    PreprocessedRequest,
)
from dynamo.runtime.ports import free_port
from dynamo.sglang.args import NOT_INSTALLED, SglangConfig, parse_args
from dynamo.sglang.kv_events import kv_event_subscriber, subscriber_endpoints
from dynamo.sglang.outputs import OutputConverter, finish_of
from dynamo.sglang.request import Bootstrap, generate_kwargs, new_bootstrap_room
from dynamo.worker import EngineContext, EngineFacts, EngineNotInstalledError, EngineStartError, WorkerEngine
from dynamo.worker.engine import KvEventSink
from dynamo.worker.util import construct_engine, import_engine
from dynamo.worker.zmq_kv_events import ZmqKvEventSubscriber

logger = logging.getLogger(__name__)

KV_EVENTS_TOPIC = "kv"


@dataclass(frozen=True)
class SglangBindings:
    """What the adapter takes from the ``sglang`` package: the ``Engine`` class, called with
    ``ServerArgs`` fields as keyword arguments. Tests pass a fake (``FakeSglangEngine``)."""

    Engine: Callable[..., Any]

    @classmethod
    def load(cls) -> SglangBindings:
        try:
            import sglang
        except ImportError as exc:
            raise EngineNotInstalledError(NOT_INSTALLED) from exc
        return cls(Engine=sglang.Engine)


class SglangEngine(WorkerEngine):
    """One in-process SGLang engine serving ``PreprocessedRequest``s for a worker.

    ``context.worker_id`` labels KV events and load reports; ``context.kv_event_sink`` (called on
    the event loop, must not block) receives converted KV event batches when KV events are on;
    ``context.advertise_host`` is the address decode workers reach this prefill worker's bootstrap
    server on; ``bindings`` default to the installed ``sglang`` package (tests pass a fake).
    """

    name = "SGLang"
    worker_label = "SglangWorker"
    package = "sglang"
    install_hint = NOT_INSTALLED
    decode_can_prefill = False  # decode workers need a prefill worker's KV for every request
    # At most; ``start`` reports structured outputs only when SGLang runs a grammar backend.
    features = EngineFeatures(structured_outputs=True, logit_bias=True, prompt_logprobs=True)

    def __init__(
        self, config: SglangConfig, context: EngineContext, bindings: SglangBindings | None = None
    ) -> None:
        super().__init__(config, context)
        self._bindings = bindings
        self._engine: Any = None
        self._relay: ZmqKvEventSubscriber | None = None
        self._tmpdir: str | None = None
        self._active: set[str] = set()  # SGLang request ids in flight
        self._aborting: set[str] = set()  # ... that we aborted while their stream is still read
        self._tasks: set[asyncio.Task[None]] = set()  # prefills waiting for their decode side
        timeouts = config.worker.disagg_timeouts  # a prefill waits for its decode side at most this long
        self._prefill_wait_s = timeouts.prefill_s + timeouts.transfer_s
        self._context_length: int | None = None
        self._max_running: int | None = None
        self._max_total_tokens: int | None = None
        self._page_size: int | None = None
        self.startup_seconds: float | None = None

    # ----- lifecycle ---------------------------------------------------------------------------

    @classmethod
    def parse_config(cls, argv: list[str] | None = None) -> SglangConfig:
        return parse_args(argv)

    async def start(self) -> EngineFacts:
        """Build the SGLang engine (off the event loop); raises ``EngineStartError``."""
        kwargs = self.config.engine_kwargs
        sink = self.context.kv_event_sink
        if self.config.kv_events and sink is not None:
            kwargs = {**kwargs, **self._relay_kv_events(sink)}
        t0 = time.monotonic()
        try:
            bindings = self._bindings
            if bindings is None:
                bindings = await import_engine(SglangBindings.load)
            engine = await construct_engine(self.name, self.config.model_path, bindings.Engine, **kwargs)
        except EngineStartError:
            await self._cleanup()
            raise
        # SGLang starts its response loop (and installs its own SIGTERM handler) on first use: do it
        # now, on our loop, so the worker's signal handlers, installed once it is registered, win.
        create_loop = getattr(engine.tokenizer_manager, "auto_create_handle_loop", None)
        if callable(create_loop):
            create_loop()
        self._engine = engine
        self._read_facts(engine)
        self.startup_seconds = time.monotonic() - t0
        logger.info(
            "SGLang engine for %s ready in %.1f s: %s, context %s, page size %d, %s KV blocks, KV events %s",
            self.config.served_model_name or self.config.model_path,
            self.startup_seconds,
            self.config.disaggregation_mode,
            self.context_length,
            self.kv_cache_block_size,
            self.total_kv_blocks,
            "on" if self._relay else "off",
        )
        features = msgspec.structs.replace(self.features, structured_outputs=self.config.structured_outputs)
        return dataclasses.replace(EngineFacts.of(self), features=features)

    def _relay_kv_events(self, sink: KvEventSink) -> dict[str, Any]:
        """Subscribe to SGLang's KV event publishers (the user's ``--kv-events-config``, else ours on
        a private endpoint); the engine arguments that make SGLang publish there."""
        dp_ranks = self.config.dp_size if self.config.engine_kwargs.get("enable_dp_attention") else 1
        extra: dict[str, Any] = {}
        if self.config.kv_events_publisher is not None:
            endpoint, topic = self.config.kv_events_publisher
        else:
            if dp_ranks > 1:  # SGLang offsets the port per attention-DP rank: TCP only
                endpoint = f"tcp://*:{free_port()}"
            else:
                self._tmpdir = tempfile.mkdtemp(prefix="dynamo-sglang-")
                endpoint = f"ipc://{self._tmpdir}/kv-events"
            topic = KV_EVENTS_TOPIC
            extra["kv_events_config"] = json.dumps({"publisher": "zmq", "endpoint": endpoint, "topic": topic})
        self._relay = kv_event_subscriber(
            subscriber_endpoints(endpoint, dp_ranks), self.context.worker_id, sink, topic
        )
        self._relay.start()
        return extra

    def _read_facts(self, engine: Any) -> None:
        tm = engine.tokenizer_manager
        server_args = getattr(tm, "server_args", None) or getattr(engine, "server_args", None)
        info = _scheduler_info(engine)
        context = getattr(tm, "context_len", None) or getattr(server_args, "context_length", None)
        self._context_length = int(context) if context else None
        running = info.get("max_running_requests") or getattr(server_args, "max_running_requests", None)
        self._max_running = int(running) if running else None
        total = info.get("max_total_num_tokens")
        self._max_total_tokens = int(total) if total else None
        # SGLang may change the page size some attention backends need (e.g. 64 for FlashMLA).
        page = getattr(server_args, "page_size", None)
        self._page_size = int(page) if page else None

    async def stop(self) -> None:
        """Abort requests in flight, cancel waiting prefills, shut SGLang down (idempotent)."""
        engine, self._engine = self._engine, None
        if engine is not None:
            if self._active:
                logger.info("stopping SGLang engine: aborting %d request(s) in flight", len(self._active))
            for rid in list(self._active):
                self._aborting.add(rid)
                await self._abort(engine, rid)
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            await asyncio.sleep(0)  # let the streams see their end
            shutdown = getattr(engine, "shutdown", None)
            if callable(shutdown):
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(shutdown)
            logger.info("SGLang engine stopped")
        await self._cleanup()

    async def _cleanup(self) -> None:
        if self._relay is not None:
            await self._relay.stop()
            self._relay = None
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    # ----- requests ----------------------------------------------------------------------------

    def _require(self) -> Any:
        if self._engine is None:
            raise RuntimeError("SGLang engine is not running (call start() first)")
        return self._engine

    async def generate(self, req: PreprocessedRequest) -> AsyncGenerator[EngineOutput, None]:
        """Stream ``EngineOutput`` chunks for one request (see the module docstring for the modes)."""
        if self.config.is_prefill:
            async with contextlib.aclosing(self._prefill(req)) as answers:
                async for out in answers:
                    yield out
            return
        bootstrap = Bootstrap.from_params(req.kv_transfer_params)
        if self.config.is_decode and bootstrap is None:
            logger.warning(
                "request %s reached SGLang decode worker without a prefill's bootstrap", req.request_id
            )
            yield EngineOutput(
                finish_reason=FINISH_ERROR,
                error="this SGLang decode worker needs a prefill worker's bootstrap_host/port/room in "
                "kv_transfer_params (SGLang cannot prefill on a decode worker)",
            )
            return
        async with contextlib.aclosing(self._stream(req, bootstrap)) as outputs:
            async for out in outputs:
                yield out

    async def _stream(
        self, req: PreprocessedRequest, bootstrap: Bootstrap | None
    ) -> AsyncGenerator[EngineOutput, None]:
        engine = self._require()
        rid = f"{req.request_id}-{secrets.token_hex(4)}"
        try:
            kwargs = generate_kwargs(req, rid, context_length=self.context_length, bootstrap=bootstrap)
        except (ValueError, TypeError) as exc:
            yield EngineOutput(
                finish_reason=FINISH_ERROR,
                error=f"invalid sampling options: {exc}",
                error_code=ERROR_INVALID_REQUEST,
            )
            return
        converter = OutputConverter(
            len(req.token_ids), req.output.logprobs, num_prompt_top_logprobs=req.output.prompt_logprobs
        )
        n_out = 0
        t0 = time.monotonic()
        self._active.add(rid)
        logger.debug("request %s: %d prompt tokens (SGLang rid %s)", req.request_id, len(req.token_ids), rid)
        try:
            stream = await engine.async_generate(**kwargs)
            try:
                async for out in stream:
                    chunk = converter.convert(out)
                    if chunk is None:
                        continue
                    if chunk.finish_reason == FINISH_ERROR and rid in self._aborting:
                        chunk.finish_reason, chunk.error = FINISH_CANCELLED, None
                    n_out += len(chunk.token_ids)
                    if chunk.finish_reason == FINISH_ERROR:
                        logger.info("request %s ended by SGLang: %s", req.request_id, chunk.error)
                    yield chunk
                    if converter.finished:
                        break
            finally:
                await _close(stream)
        except ValueError as exc:  # SGLang rejects some requests (too long, bad values) by raising
            converter.finished = True
            logger.info("request %s rejected by SGLang: %s", req.request_id, exc)
            yield EngineOutput(finish_reason=FINISH_ERROR, error=str(exc), error_code=ERROR_INVALID_REQUEST)
        finally:
            self._active.discard(rid)
            self._aborting.discard(rid)
            if not converter.finished:
                await self._abort(engine, rid)
                logger.info("request %s aborted after %d tokens", req.request_id, n_out)
            else:
                logger.debug(
                    "request %s finished: %d tokens in %.3f s", req.request_id, n_out, time.monotonic() - t0
                )

    async def _prefill(self, req: PreprocessedRequest) -> AsyncGenerator[EngineOutput, None]:
        engine = self._require()
        room = (req.kv_transfer_params or {}).get("bootstrap_room")
        bootstrap = Bootstrap(
            self.bootstrap_host, self.bootstrap_port, int(room) if room else new_bootstrap_room()
        )
        rid = f"{req.request_id}-{secrets.token_hex(4)}"
        try:
            kwargs = generate_kwargs(req, rid, context_length=self.context_length, bootstrap=bootstrap)
            self._active.add(rid)
            stream = await engine.async_generate(**kwargs)
        except (ValueError, TypeError) as exc:
            self._active.discard(rid)
            logger.info("prefill of request %s rejected by SGLang: %s", req.request_id, exc)
            yield EngineOutput(finish_reason=FINISH_ERROR, error=str(exc), error_code=ERROR_INVALID_REQUEST)
            return
        task = asyncio.create_task(
            self._finish_prefill(stream, rid, req.request_id), name=f"sglang-prefill-{rid}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        await asyncio.sleep(0)  # SGLang has the request (and its room) before the decode side hears of it
        yield EngineOutput(
            finish_reason=FINISH_STOP,
            prompt_tokens=len(req.token_ids),
            kv_transfer_params=bootstrap.to_params(),
        )

    async def _finish_prefill(self, stream: Any, rid: str, request_id: str) -> None:
        """Read a prefill's stream until SGLang hands the KV over; abort it if that never happens."""
        finished = False
        t0 = time.monotonic()
        try:
            async with asyncio.timeout(self._prefill_wait_s):
                async for out in stream:
                    reason, _, error = finish_of(out.get("meta_info") or {})
                    if reason is None:
                        continue
                    finished = True
                    if reason == FINISH_ERROR:
                        logger.warning("request %s: SGLang ended the prefill: %s", request_id, error)
                    else:
                        logger.debug(
                            "request %s: prefill handed over in %.3f s", request_id, time.monotonic() - t0
                        )
                    break
        except TimeoutError:
            logger.warning(
                "request %s: no decode worker took the prefilled KV within %g s; aborting the prefill",
                request_id,
                self._prefill_wait_s,
            )
        except Exception as exc:
            logger.warning(
                "request %s: the prefill failed in SGLang: %s: %s", request_id, type(exc).__name__, exc
            )
            finished = True
        finally:
            await _close(stream)
            self._active.discard(rid)
            self._aborting.discard(rid)
            if not finished and self._engine is not None:
                await self._abort(self._engine, rid)

    @staticmethod
    async def _abort(engine: Any, rid: str) -> None:
        """Ask SGLang to drop ``rid`` (frees its KV); never raises."""
        try:
            tm = engine.tokenizer_manager
            try:
                result = tm.abort_request(rid=rid)
            except TypeError:  # older signature: abort_request(rid)
                result = tm.abort_request(rid)
            if inspect.isawaitable(result):
                await result
        except Exception as exc:
            logger.warning("could not abort SGLang request %s: %s", rid, exc)

    # ----- load and model card -----------------------------------------------------------------

    def load_metrics(self) -> LoadMetrics:
        """Requests in flight here (SGLang's scheduler numbers are not read back yet)."""
        return LoadMetrics(
            worker_id=self.context.worker_id,
            active_requests=len(self._active),
            max_requests=self.max_num_seqs or 0,
            kv_total_blocks=self.total_kv_blocks or 0,
        )

    @property
    def context_length(self) -> int | None:
        return self._context_length

    @property
    def kv_cache_block_size(self) -> int:
        """Tokens per KV page as the engine resolved ``--page-size``: the block size the KV router hashes."""
        return self._page_size or self.config.page_size

    @property
    def total_kv_blocks(self) -> int | None:
        if not self._max_total_tokens:
            return None
        return self._max_total_tokens // self.kv_cache_block_size

    @property
    def max_num_seqs(self) -> int | None:
        return self._max_running

    @property
    def max_num_batched_tokens(self) -> int | None:
        chunk = self.config.engine_kwargs.get("chunked_prefill_size")
        return int(chunk) if chunk and int(chunk) > 0 else None

    @property
    def bootstrap_host(self) -> str:
        """Host of this engine's bootstrap server: the first node of a multi-node engine, else us."""
        dist = self.config.engine_kwargs.get("dist_init_addr")
        if dist:
            return str(dist).rsplit(":", 1)[0].strip("[]")
        return self.context.advertise_host

    @property
    def bootstrap_port(self) -> int:
        return int(self.config.engine_kwargs.get("disaggregation_bootstrap_port") or 8998)

    @property
    def bootstrap_address(self) -> str | None:
        """``host:port`` of the bootstrap server (prefill workers only)."""
        return f"{self.bootstrap_host}:{self.bootstrap_port}" if self.config.is_prefill else None


def _scheduler_info(engine: Any) -> dict[str, Any]:
    """SGLang's scheduler facts (``max_total_num_tokens``, ...): ``Engine.scheduler_info`` in older
    versions, the first of ``_scheduler_init_result.scheduler_infos`` in newer ones."""
    info = getattr(engine, "scheduler_info", None)
    if isinstance(info, dict):
        return info
    result = getattr(engine, "_scheduler_init_result", None)
    infos = getattr(result, "scheduler_infos", None)
    if infos and isinstance(infos[0], dict):
        return dict(infos[0])
    return {}


async def _close(stream: Any) -> None:
    aclose = getattr(stream, "aclose", None)
    if callable(aclose):
        with contextlib.suppress(Exception):
            await aclose()
