"""The TensorRT-LLM engine, in-process, behind Dynamo's engine interface.

Journey: request plane -> worker handler -> **``TrtllmEngine.generate``** (``PreprocessedRequest``
-> ``tensorrt_llm.LLM.generate_async(token_ids, SamplingParams, streaming=True)``,
``dynamo.trtllm.request``) -> ``EngineOutput`` chunks (``dynamo.trtllm.outputs``) -> back over the
request plane -> detokenize -> SSE. Alongside: KV cache events (``dynamo.trtllm.kv_events``) and
load for the router. This is TensorRT-LLM's adapter on the worker base (``dynamo.worker``).

Modes: aggregated; **prefill** (a ``context_only`` request: one token, and the
``DisaggregatedParams`` a decode worker needs, in ``kv_transfer_params``); **decode** (a request
carrying those parameters runs ``generation_only`` and its KV comes from the prefill worker
through TensorRT-LLM's cache transceiver; one without them is prefilled here, which is how the
worker's decode step, ``dynamo.worker.decode``, falls back).

Features (the card's ``features``): structured outputs when TensorRT-LLM runs a guided decoder
(``guided_decoding_backend``, see ``dynamo.trtllm.args``), ``logit_bias`` when the model's vocabulary
size is known (its ``config.json``); no prompt logprobs (TensorRT-LLM's are the top tokens of each
position's next-token distribution, not the prompt token's own logprob). A request TensorRT-LLM
refuses (``RequestError``, a ``ValueError`` on submission, options it cannot build) ends with an
``invalid_request`` error chunk.

Cancellation: a cancelled or closed stream aborts the request (``RequestOutput.abort()``) before
the exception propagates. A decode request whose KV is still arriving is aborted only once its
first output comes (TensorRT-LLM cannot drop a transfer in flight), by an owned task.

Verified against a fake engine that mimics TensorRT-LLM's async API (``tests/trtllm``); not yet run
on a GPU with the real TensorRT-LLM (no GPU machine was lent to this task).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from dynamo.llm.kv_events import LoadMetrics
from dynamo.llm.model_card import EngineFeatures
from dynamo.llm.protocols import ERROR_INVALID_REQUEST, FINISH_ERROR, EngineOutput, PreprocessedRequest
from dynamo.trtllm.args import NOT_INSTALLED, TrtllmConfig, parse_args
from dynamo.trtllm.kv_events import KvEventConverter, relay_kv_events
from dynamo.trtllm.outputs import OutputConverter
from dynamo.trtllm.request import build_sampling_kwargs, decoding_kwargs, is_trtllm_params, params_from_wire
from dynamo.worker import EngineContext, EngineFacts, EngineNotInstalledError, WorkerEngine
from dynamo.worker.util import construct_engine, import_engine

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrtllmBindings:
    """What the adapter takes from ``tensorrt_llm``; tests pass fakes (``FakeTrtllmLLM``, ...)."""

    LLM: Callable[..., Any]
    SamplingParams: Callable[..., Any]
    DisaggregatedParams: Callable[..., Any]
    RequestError: type[Exception] = ValueError  # a request TensorRT-LLM refuses
    GuidedDecodingParams: Callable[..., Any] | None = None  # None: this TensorRT-LLM has none

    @classmethod
    def load(cls) -> TrtllmBindings:
        try:
            from tensorrt_llm import LLM, SamplingParams
            from tensorrt_llm.llmapi import DisaggregatedParams
        except ImportError as exc:
            raise EngineNotInstalledError(NOT_INSTALLED) from exc
        try:
            from tensorrt_llm.executor.utils import RequestError
        except ImportError:
            RequestError = ValueError
        guided: Callable[..., Any] | None = None
        with contextlib.suppress(ImportError):
            from tensorrt_llm.llmapi import GuidedDecodingParams

            guided = GuidedDecodingParams
        return cls(
            LLM=LLM,
            SamplingParams=SamplingParams,
            DisaggregatedParams=DisaggregatedParams,
            RequestError=RequestError,
            GuidedDecodingParams=guided,
        )


class TrtllmEngine(WorkerEngine):
    """One in-process TensorRT-LLM engine serving ``PreprocessedRequest``s for a worker.

    ``context.worker_id`` labels KV events and load reports; ``context.kv_event_sink`` (called on
    the event loop, must not block) receives converted KV event batches when KV events are on;
    ``bindings`` default to the installed ``tensorrt_llm`` (tests pass fakes).
    """

    name = "TensorRT-LLM"
    worker_label = "TrtllmWorker"
    package = "tensorrt_llm"
    install_hint = NOT_INSTALLED
    # At most; ``start`` reports what this configuration has (see the module docstring).
    features = EngineFeatures(structured_outputs=True, logit_bias=True)

    def __init__(
        self, config: TrtllmConfig, context: EngineContext, bindings: TrtllmBindings | None = None
    ) -> None:
        super().__init__(config, context)
        self._bindings = bindings
        self._api: TrtllmBindings | None = None
        self._llm: Any = None
        self._active: dict[str, Any] = {}  # our request key -> TensorRT-LLM RequestOutput
        self._tasks: set[asyncio.Task[None]] = set()
        self._kv_task: asyncio.Task[None] | None = None
        self._seq = 0
        self._vocab_size: int | None = None
        self.startup_seconds: float | None = None

    # ----- lifecycle ---------------------------------------------------------------------------

    @classmethod
    def parse_config(cls, argv: list[str] | None = None) -> TrtllmConfig:
        return parse_args(argv)

    async def start(self) -> EngineFacts:
        """Build the TensorRT-LLM engine (off the event loop); raises ``EngineStartError``."""
        t0 = time.monotonic()
        api = self._bindings
        if api is None:
            api = await import_engine(TrtllmBindings.load)
        llm = await construct_engine(self.name, self.config.model_path, api.LLM, **self.config.engine_kwargs)
        self._api, self._llm = api, llm
        self._vocab_size = await asyncio.to_thread(model_vocab_size, self.config.model_path, llm)
        sink, worker_id = self.context.kv_event_sink, self.context.worker_id
        if self.config.kv_events and sink is not None:
            converter = KvEventConverter(self.kv_cache_block_size)
            self._kv_task = asyncio.create_task(
                relay_kv_events(llm, converter, worker_id, sink), name=f"trtllm-kv-events-{worker_id:x}"
            )
        self.startup_seconds = time.monotonic() - t0
        logger.info(
            "TensorRT-LLM engine for %s ready in %.1f s: %s, max sequence length %s, KV block size %d, "
            "max batch %s, KV events %s",
            self.config.served_model_name or self.config.model_path,
            self.startup_seconds,
            self.config.disaggregation_mode,
            self.context_length,
            self.kv_cache_block_size,
            self.max_num_seqs,
            "on" if self._kv_task else "off",
        )
        if self.config.disaggregation_mode != "agg":
            logger.info(
                "disaggregation strategy %s: the frontend's --disaggregation-strategy / DISAGGREGATION_STRATEGY "
                "decides the flow (this worker serves both)",
                self.config.disaggregation_strategy,
            )
        features = msgspec.structs.replace(
            self.features,
            structured_outputs=self._guided_factory is not None,
            logit_bias=self._vocab_size is not None,
        )
        return dataclasses.replace(EngineFacts.of(self), features=features)

    async def stop(self) -> None:
        """Abort requests in flight, stop the KV event relay, shut TensorRT-LLM down (idempotent)."""
        llm, self._llm = self._llm, None
        if llm is None:
            return
        if self._active:
            logger.info("stopping TensorRT-LLM engine: aborting %d request(s) in flight", len(self._active))
        for result in list(self._active.values()):
            _abort(result)
        tasks = [t for t in (self._kv_task, *self._tasks) if t is not None]
        self._kv_task = None
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        shutdown = getattr(llm, "shutdown", None)
        if callable(shutdown):
            with contextlib.suppress(Exception):
                await asyncio.to_thread(shutdown)
        logger.info("TensorRT-LLM engine stopped")

    @property
    def _guided_factory(self) -> Callable[..., Any] | None:
        """``GuidedDecodingParams`` when this engine runs a guided decoder, else None."""
        api = self._api
        return api.GuidedDecodingParams if api is not None and self.config.structured_outputs else None

    # ----- requests ----------------------------------------------------------------------------

    async def generate(self, req: PreprocessedRequest) -> AsyncGenerator[EngineOutput, None]:
        """Stream ``EngineOutput`` chunks for one request (see the module docstring for the modes)."""
        llm, api = self._llm, self._api
        if llm is None or api is None:
            raise RuntimeError("TensorRT-LLM engine is not running (call start() first)")
        prefill = self.config.is_prefill
        transfer = not prefill and is_trtllm_params(req.kv_transfer_params)
        try:
            sampling = api.SamplingParams(
                **build_sampling_kwargs(req, prefill=prefill, max_seq_len=self.context_length),
                **decoding_kwargs(req, guided_factory=self._guided_factory, vocab_size=self._vocab_size),
            )
            disagg = None
            if prefill:
                disagg = api.DisaggregatedParams(request_type="context_only")
            elif transfer:
                disagg = params_from_wire(dict(req.kv_transfer_params or {}), api.DisaggregatedParams)
        except (ValueError, TypeError) as exc:
            yield EngineOutput(
                finish_reason=FINISH_ERROR,
                error=f"invalid sampling options: {exc}",
                error_code=ERROR_INVALID_REQUEST,
            )
            return
        self._seq += 1
        key = f"{req.request_id}#{self._seq}"
        converter = OutputConverter(
            len(req.token_ids), self.kv_cache_block_size, req.output.logprobs, prefill
        )
        n_out = 0
        t0 = time.monotonic()
        result: Any = None
        got_output = False
        try:
            result = llm.generate_async(
                list(req.token_ids),
                sampling_params=sampling,
                streaming=not prefill,
                disaggregated_params=disagg,
            )
            self._active[key] = result
            async for res in result:
                got_output = True
                chunk = converter.convert(res)
                if chunk is None:
                    continue
                n_out += len(chunk.token_ids)
                yield chunk
                if converter.finished:
                    break
        except (api.RequestError, ValueError) as exc:
            converter.finished = True
            logger.info("request %s rejected by TensorRT-LLM: %s", req.request_id, exc)
            yield EngineOutput(finish_reason=FINISH_ERROR, error=str(exc), error_code=ERROR_INVALID_REQUEST)
        finally:
            self._active.pop(key, None)
            if not converter.finished and result is not None:
                if transfer and not got_output:
                    self._abort_after_first_output(result, req.request_id)
                else:
                    _abort(result)
                logger.info("request %s aborted after %d tokens", req.request_id, n_out)
            elif converter.finished:
                logger.debug(
                    "request %s finished: %d tokens in %.3f s", req.request_id, n_out, time.monotonic() - t0
                )

    def _abort_after_first_output(self, result: Any, request_id: str) -> None:
        """Abort a decode request once its KV has arrived (owned task, cancelled on stop)."""

        async def wait_then_abort() -> None:
            try:
                async for _ in result:
                    break
            except Exception as exc:
                logger.debug("request %s: ended while its KV arrived: %s", request_id, exc)
            finally:
                _abort(result)

        task = asyncio.create_task(wait_then_abort(), name=f"trtllm-deferred-abort-{request_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ----- load and model card -----------------------------------------------------------------

    def load_metrics(self) -> LoadMetrics:
        """Requests in flight here (TensorRT-LLM's iteration stats are not read back yet)."""
        return LoadMetrics(
            worker_id=self.context.worker_id,
            active_requests=len(self._active),
            max_requests=self.max_num_seqs or 0,
        )

    def _option(self, name: str) -> Any:
        """An LLM-API option as the running engine resolved it (``llm.args``), else as configured."""
        args = getattr(self._llm, "args", None)
        value = getattr(args, name, None) if args is not None else None
        return value if value is not None else self.config.engine_kwargs.get(name)

    @property
    def context_length(self) -> int | None:
        value = self._option("max_seq_len")
        return int(value) if value else None

    @property
    def kv_cache_block_size(self) -> int:
        """``kv_cache_config.tokens_per_block``: the block size the KV router hashes."""
        kv = self._option("kv_cache_config")
        value = kv.get("tokens_per_block") if isinstance(kv, dict) else getattr(kv, "tokens_per_block", None)
        return int(value) if value else self.config.kv_block_size

    @property
    def total_kv_blocks(self) -> int | None:
        return None  # known to TensorRT-LLM's iteration stats only once requests ran

    @property
    def max_num_seqs(self) -> int | None:
        value = self._option("max_batch_size")
        return int(value) if value else None

    @property
    def max_num_batched_tokens(self) -> int | None:
        value = self._option("max_num_tokens")
        return int(value) if value else None


def model_vocab_size(model_path: str, llm: Any) -> int | None:
    """The width of the model's logits: ``vocab_size`` in its ``config.json`` (top level or
    ``text_config``; a hub name is looked up in the local Hugging Face cache), else the size
    TensorRT-LLM's tokenizer reports; None when neither is known."""
    config: Path | None = Path(model_path) / "config.json"
    if config is not None and not config.is_file():
        config = None
        with contextlib.suppress(Exception):
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(model_path, "config.json")
            config = Path(cached) if isinstance(cached, str) else None
    data: Any = {}
    if config is not None:
        with contextlib.suppress(OSError, ValueError):
            data = json.loads(config.read_text())
    if isinstance(data, dict):
        for section in (data, data.get("text_config")):
            if isinstance(section, dict) and isinstance(section.get("vocab_size"), int):
                return int(section["vocab_size"])
    tokenizer = getattr(getattr(llm, "tokenizer", None), "tokenizer", None)
    size = getattr(tokenizer, "vocab_size", None)
    return size if isinstance(size, int) and size > 0 else None


def _abort(result: Any) -> None:
    """``RequestOutput.abort()``; never raises."""
    abort = getattr(result, "abort", None)
    if callable(abort):
        try:
            abort()
        except Exception as exc:
            logger.warning("could not abort a TensorRT-LLM request: %s", exc)
