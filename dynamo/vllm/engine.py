"""The vLLM engine, in-process, behind Dynamo's engine interface.

Journey: request plane -> worker handler -> **``VllmEngine.generate``** (``PreprocessedRequest`` ->
``SamplingParams``, ``dynamo.vllm.sampling`` -> vLLM ``AsyncLLM``) -> ``EngineOutput`` chunks (new
token ids, finish reason, cached/prompt token counts, logprobs, the prompt's logprobs once on the
first chunk, ``kv_transfer_params``) -> back over the request plane -> detokenize -> SSE.
Alongside: KV cache events (``dynamo.vllm.kv_events`` through the shared ZMQ subscriber) and load
(``load_metrics``) for the router. This is vLLM's adapter on the worker base (``dynamo.worker``).

Cancellation: when the caller cancels the task or closes the stream, the vLLM request is aborted
(its KV blocks freed) before the exception propagates.

Errors: a request vLLM rejects ends with one chunk ``finish_reason="error"`` and ``error=<message>``;
when the request itself is at fault (too long, bad sampling values, a JSON schema, regex or grammar
the structured-output backend cannot compile, a ``logit_bias`` id outside the vocabulary) the chunk
also carries ``error_code="invalid_request"`` (the frontend's 400); a full queue does not. A dead
engine raises ``EngineDeadError`` so the request plane reports an error and the frontend may
migrate the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import AsyncGenerator
from typing import Any

from vllm.config.kv_events import KVEventsConfig
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.exceptions import GracefulHTTPError, VLLMClientError
from vllm.inputs import tokens_input
from vllm.outputs import RequestOutput
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.engine.exceptions import EngineDeadError, EngineGenerateError

from dynamo.llm.kv_events import LoadMetrics
from dynamo.llm.model_card import EngineFeatures
from dynamo.llm.protocols import (
    ERROR_INVALID_REQUEST,
    FINISH_CANCELLED,
    FINISH_ERROR,
    FINISH_LENGTH,
    FINISH_STOP,
    EngineOutput,
    PreprocessedRequest,
)
from dynamo.runtime.ports import free_port
from dynamo.vllm.args import WorkerConfig, parse_args
from dynamo.vllm.cpu import CoreClaim, claim_cores
from dynamo.vllm.kv_events import kv_event_subscriber
from dynamo.vllm.metrics import LoadState, LoadStatLogger, register_vllm_metrics
from dynamo.vllm.model_path import is_missing_local_path, missing_model_detail
from dynamo.vllm.sampling import build_sampling_params, convert_logprobs, convert_prompt_logprobs
from dynamo.worker import EngineContext, EngineFacts, EngineStartError, WorkerEngine
from dynamo.worker.zmq_kv_events import ZmqKvEventSubscriber

__all__ = ["EngineDeadError", "EngineStartError", "VllmEngine", "build_sampling_params"]

logger = logging.getLogger(__name__)

KV_EVENTS_TOPIC = "kv"
SHUTDOWN_TIMEOUT_S = 15.0

_FINISH_REASONS = {
    "stop": FINISH_STOP,
    "length": FINISH_LENGTH,
    "abort": FINISH_CANCELLED,
    "error": FINISH_ERROR,
    "repetition": FINISH_STOP,
}


def _exception_detail(exc: Exception) -> str:
    """The first meaningful line of an exception (pydantic validation errors carry it inside)."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        with contextlib.suppress(Exception):
            msg = str(errors()[0]["msg"]).removeprefix("Value error, ")
            return msg.strip().splitlines()[0]
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


class VllmEngine(WorkerEngine):
    """One in-process vLLM engine serving ``PreprocessedRequest``s for a worker.

    ``context.worker_id`` labels KV events and load reports; ``context.kv_event_sink`` (called on
    the event loop, must not block) receives converted KV event batches when KV events are on;
    vLLM's own metrics join ``context.metrics`` once the engine runs.
    """

    name = "vLLM"
    worker_label = "VllmWorker"
    features = EngineFeatures(structured_outputs=True, logit_bias=True, prompt_logprobs=True)

    config: WorkerConfig

    def __init__(self, config: WorkerConfig, context: EngineContext) -> None:
        super().__init__(config, context)
        self._llm: AsyncLLM | None = None
        self._relay: ZmqKvEventSubscriber | None = None
        self._tmpdir: str | None = None
        self._cores: CoreClaim | None = None
        self._env_set: list[str] = []
        self._load = LoadState()
        self._active: set[str] = set()  # vLLM request ids in flight
        self.startup_seconds: float | None = None

    # ----- lifecycle ---------------------------------------------------------------------------

    @classmethod
    def parse_config(cls, argv: list[str] | None = None) -> WorkerConfig:
        return parse_args(argv)

    @property
    def accepts_kv_transfer(self) -> bool:
        """Decode workers, and role-less workers with a KV connector (the guides' decode side)."""
        return not self.config.is_prefill and self.config.has_kv_connector

    async def start(self) -> EngineFacts:
        """Build the vLLM engine (~26 s for a small model on CPU); raises ``EngineStartError``."""
        if self._llm is None:
            await self._start()
            if self.context.metrics is not None:
                register_vllm_metrics(self.context.metrics)
        return EngineFacts.of(self)

    async def _start(self) -> None:
        t0 = time.monotonic()
        engine_args = dataclasses.replace(self.config.engine_args)
        model = self.config.model
        if await asyncio.to_thread(is_missing_local_path, model):
            raise EngineStartError(missing_model_detail(model))
        try:
            await self._prepare_environment(engine_args)
            if self.config.max_model_len_cap is not None and engine_args.max_model_len is None:
                model_len = await asyncio.to_thread(lambda: engine_args.create_model_config().max_model_len)
                engine_args.max_model_len = min(int(model_len), self.config.max_model_len_cap)
            if self.config.kv_events:
                self._start_kv_events(engine_args)
            state = self._load

            def load_logger(vllm_config: Any, engine_index: int) -> LoadStatLogger:
                return LoadStatLogger(vllm_config, engine_index, state)

            self._llm = await asyncio.to_thread(
                AsyncLLM.from_engine_args, engine_args, stat_loggers=[load_logger]
            )
        except BaseException as exc:
            await self._cleanup()
            if isinstance(exc, Exception):
                raise EngineStartError(self._start_error_message(exc)) from exc
            raise
        self.startup_seconds = time.monotonic() - t0
        logger.info(
            "vLLM engine for %s ready in %.1f s: context %d, KV block size %d, %d KV blocks, "
            "max %d sequences, KV events %s, KV connector %s",
            self.config.served_model_name or self.config.model,
            self.startup_seconds,
            self.context_length,
            self.kv_cache_block_size,
            self.total_kv_blocks,
            self.max_num_seqs,
            "on" if self._relay else "off",
            "on" if self.config.has_kv_connector else "off",
        )

    async def stop(self) -> None:
        """Abort requests in flight, shut the engine down and cancel our tasks (idempotent)."""
        llm, self._llm = self._llm, None
        if llm is not None:
            if self._active:
                logger.info("stopping vLLM engine: aborting %d request(s) in flight", len(self._active))
                with contextlib.suppress(Exception):
                    await llm.abort(list(self._active))
                await asyncio.sleep(0)  # let the streams see their final (aborted) output
            # Unsubscribe before the engine core exits: a connected subscriber delays its exit until
            # vLLM kills it.
            if self._relay is not None:
                await self._relay.stop()
                self._relay = None
            # Stop vLLM's output task first, or it reports the engine core's exit as a failure.
            handler = llm.output_handler
            if handler is not None:
                handler.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await handler
            # vLLM's default 5 s is too short on a busy CPU; it then kills the engine core mid-teardown.
            await asyncio.to_thread(llm.shutdown, SHUTDOWN_TIMEOUT_S)
            logger.info("vLLM engine stopped")
        await self._cleanup()

    async def __aenter__(self) -> VllmEngine:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _prepare_environment(self, engine_args: AsyncEngineArgs) -> None:
        defaults = dict(self.config.env_defaults)
        kv_transfer = engine_args.kv_transfer_config
        connector = str(getattr(kv_transfer, "kv_connector", "") or "") if kv_transfer is not None else ""
        if "Nixl" in connector:
            defaults.setdefault("UCX_RCACHE_MAX_UNRELEASED", "1024")
            if "VLLM_NIXL_SIDE_CHANNEL_PORT" not in os.environ:
                defaults["VLLM_NIXL_SIDE_CHANNEL_PORT"] = str(free_port())
            advertise = os.environ.get("DYN_ADVERTISE_HOST") or os.environ.get("POD_IP")
            if advertise:
                defaults.setdefault("VLLM_NIXL_SIDE_CHANNEL_HOST", advertise)
        for key, value in defaults.items():
            if key not in os.environ:
                os.environ[key] = value
                self._env_set.append(key)
                logger.info("engine environment: %s=%s", key, value)
        world = (
            int(engine_args.tensor_parallel_size)
            * int(engine_args.pipeline_parallel_size)
            * int(engine_args.data_parallel_size)
        )
        if self.config.is_cpu and world == 1:
            self._cores = await asyncio.to_thread(claim_cores, self.config.cpu_core)

    def _start_kv_events(self, engine_args: AsyncEngineArgs) -> None:
        configured = engine_args.kv_events_config
        if configured is not None and configured.enable_kv_cache_events:
            endpoint = configured.endpoint.replace("*", "127.0.0.1")
            topic = configured.topic
        else:
            self._tmpdir = tempfile.mkdtemp(prefix="dynamo-vllm-")
            endpoint = f"ipc://{self._tmpdir}/kv-events"
            topic = KV_EVENTS_TOPIC
            engine_args.kv_events_config = KVEventsConfig(
                enable_kv_cache_events=True, publisher="zmq", endpoint=endpoint, topic=topic
            )
        engine_args.enable_prefix_caching = True
        sink = self.context.kv_event_sink
        if sink is None:
            logger.info("KV events are on but no sink was given: not subscribing")
            return
        self._relay = kv_event_subscriber(endpoint, self.context.worker_id, sink, topic=topic)
        self._relay.start()

    async def _cleanup(self) -> None:
        if self._relay is not None:
            await self._relay.stop()
            self._relay = None
        if self._cores is not None:
            self._cores.release()
            self._cores = None
        for key in self._env_set:
            os.environ.pop(key, None)
        self._env_set.clear()
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def _start_error_message(self, exc: Exception) -> str:
        detail = _exception_detail(exc)
        model = self.config.model
        lowered = detail.lower()
        if isinstance(exc, OSError) or "invalid repository id or local directory" in lowered:
            return f"cannot load model {model!r}: {detail}"
        if "not supported" in lowered or "unsupported" in lowered or "architecture" in lowered:
            return f"model {model!r} is not supported by this vLLM: {detail}"
        if isinstance(exc, MemoryError) or "memory" in lowered or "kv cache" in lowered:
            return (
                f"not enough memory to start vLLM for {model!r}: {detail} (lower --max-model-len or "
                "--max-num-seqs, or raise VLLM_CPU_KVCACHE_SPACE / --gpu-memory-utilization)"
            )
        if "engine core initialization failed" in lowered:
            # The root cause was raised (and logged) in the engine core process.
            return (
                f"vLLM's engine core failed to start for {model!r} (its error is logged above; often not "
                "enough memory for the KV cache: raise VLLM_CPU_KVCACHE_SPACE / --kv-cache-memory-bytes / "
                "--gpu-memory-utilization or lower --max-model-len)"
            )
        return f"vLLM engine for {model!r} failed to start: {type(exc).__name__}: {detail}"

    # ----- requests ----------------------------------------------------------------------------

    def _require_llm(self) -> AsyncLLM:
        if self._llm is None:
            raise RuntimeError("vLLM engine is not running (call start() first)")
        return self._llm

    async def generate(self, req: PreprocessedRequest) -> AsyncGenerator[EngineOutput, None]:
        """Stream ``EngineOutput`` chunks for one request; aborts it in vLLM if cancelled or closed."""
        llm = self._require_llm()
        prefill = req.prefill_only or self.config.is_prefill
        try:
            params = build_sampling_params(req, prefill=prefill)
        except (ValueError, TypeError) as exc:
            yield EngineOutput(
                finish_reason=FINISH_ERROR,
                error=f"invalid sampling options: {exc}",
                error_code=ERROR_INVALID_REQUEST,
            )
            return
        vllm_id = f"{req.request_id}-{secrets.token_hex(4)}"
        num_top = req.output.logprobs or 0
        num_prompt_top = req.output.prompt_logprobs
        prompt_logprobs_due = num_prompt_top is not None
        # Already tokenized: a rendered token input skips vLLM's (deprecated) raw-prompt path and its thread hop.
        prompt = tokens_input(list(req.token_ids))
        finished = False
        first = True
        n_out = 0
        t0 = time.monotonic()
        self._active.add(vllm_id)
        logger.debug("request %s: %d prompt tokens (vLLM id %s)", req.request_id, len(req.token_ids), vllm_id)
        try:
            async with contextlib.aclosing(llm.generate(prompt, params, vllm_id)) as stream:
                async for out in stream:
                    chunk = self._to_output(
                        out, first=first, prompt_tokens=len(req.token_ids), num_top=num_top
                    )
                    first = False
                    if prompt_logprobs_due and out.prompt_logprobs:
                        chunk.prompt_logprobs = convert_prompt_logprobs(
                            req.token_ids, out.prompt_logprobs, num_prompt_top or 0
                        )
                        prompt_logprobs_due = False
                    n_out += len(chunk.token_ids)
                    finished = out.finished
                    yield chunk
        except EngineDeadError:
            logger.error("request %s: the vLLM engine died", req.request_id)
            raise
        except (VLLMClientError, ValueError) as exc:
            finished = True
            logger.info("request %s rejected by vLLM: %s", req.request_id, exc)
            yield EngineOutput(finish_reason=FINISH_ERROR, error=str(exc), error_code=ERROR_INVALID_REQUEST)
        except GracefulHTTPError as exc:  # admission control (a full queue): not the request's fault
            finished = True
            logger.info("request %s turned away by vLLM: %s", req.request_id, exc)
            yield EngineOutput(finish_reason=FINISH_ERROR, error=str(exc))
        except EngineGenerateError as exc:
            finished = True
            cause = exc.__cause__ or exc
            logger.error("request %s failed in vLLM: %s: %s", req.request_id, type(cause).__name__, cause)
            yield EngineOutput(
                finish_reason=FINISH_ERROR, error=f"engine error: {type(cause).__name__}: {cause}"
            )
        finally:
            self._active.discard(vllm_id)
            if not finished:
                # vLLM aborts on cancellation itself; this also covers a stream closed before its first output.
                with contextlib.suppress(Exception):
                    await llm.abort(vllm_id)
                logger.info("request %s aborted after %d tokens", req.request_id, n_out)
            else:
                logger.debug(
                    "request %s finished: %d tokens in %.3f s", req.request_id, n_out, time.monotonic() - t0
                )

    @staticmethod
    def _to_output(out: RequestOutput, *, first: bool, prompt_tokens: int, num_top: int) -> EngineOutput:
        completion = out.outputs[0] if out.outputs else None
        chunk = EngineOutput(token_ids=list(completion.token_ids) if completion is not None else [])
        if first:
            chunk.prompt_tokens = prompt_tokens
            chunk.cached_tokens = out.num_cached_tokens or 0
        if completion is not None:
            if completion.logprobs is not None:
                chunk.logprobs = convert_logprobs(completion, num_top)
            if completion.finish_reason is not None:
                chunk.finish_reason = _FINISH_REASONS.get(str(completion.finish_reason), FINISH_STOP)
                chunk.stop_reason = completion.stop_reason
                if chunk.finish_reason == FINISH_ERROR:  # e.g. a grammar that failed to compile in the core
                    chunk.error = "vLLM ended the request with an error (its log says why)"
        if out.finished:
            if chunk.finish_reason is None:
                chunk.finish_reason = FINISH_STOP
            if out.kv_transfer_params:
                chunk.kv_transfer_params = dict(out.kv_transfer_params)
        return chunk

    # ----- load and model card -----------------------------------------------------------------

    @property
    def num_requests_in_flight(self) -> int:
        """Requests vLLM has not finished (running + waiting), as seen by this process right now."""
        return self._llm.get_num_unfinished_requests() if self._llm is not None else 0

    @property
    def load_state(self) -> LoadState:
        """vLLM's latest scheduler numbers as reported after its last step (may lag when idle)."""
        return self._load

    async def clear_kv_blocks(self) -> bool:
        """Drop the prefix cache (the router hears ``cleared`` after the engine's next step);
        False when vLLM refuses because requests are running."""
        return bool(await self._require_llm().reset_prefix_cache())

    def load_metrics(self) -> LoadMetrics:
        """This engine's load for the router (latest scheduler step, corrected by requests in flight)."""
        in_flight = self.num_requests_in_flight
        state = self._load
        running = min(state.running, in_flight)
        total = self.total_kv_blocks if self._llm is not None else 0
        usage = state.kv_usage if in_flight else 0.0
        return LoadMetrics(
            worker_id=self.context.worker_id,
            active_requests=running,
            waiting_requests=in_flight - running,
            max_requests=self.max_num_seqs if self._llm is not None else 0,
            kv_active_blocks=round(usage * total),
            kv_total_blocks=total,
            cache_usage=usage,
            prefix_hit_rate=state.prefix_cache.hit_rate,
        )

    @property
    def async_llm(self) -> AsyncLLM:
        """The running vLLM ``AsyncLLM`` (tests compare against it directly)."""
        return self._require_llm()

    @property
    def vllm_config(self) -> Any:
        """The engine's resolved ``VllmConfig``."""
        return self._require_llm().vllm_config

    @property
    def kv_cache_block_size(self) -> int:
        """Tokens per KV block (128 on the CPU build)."""
        return int(self.vllm_config.cache_config.block_size)

    @property
    def total_kv_blocks(self) -> int:
        return int(self.vllm_config.cache_config.num_gpu_blocks or 0)

    @property
    def max_num_seqs(self) -> int:
        return int(self.vllm_config.scheduler_config.max_num_seqs)

    @property
    def max_num_batched_tokens(self) -> int:
        return int(self.vllm_config.scheduler_config.max_num_batched_tokens)

    @property
    def context_length(self) -> int:
        return int(self.vllm_config.model_config.max_model_len)
