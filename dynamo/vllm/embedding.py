"""The vLLM engine under its pooling runner: an embedding worker behind ``/v1/embeddings``.

Journey: frontend (tokenized inputs) -> request plane ``/embed`` -> **``VllmEmbeddingEngine.embed``**
(one vLLM ``encode`` per input, the engine's own pooling and normalisation) -> one ``EmbedOutput``
per input (float32 bytes) -> back -> the frontend's response.

``python -m dynamo.vllm --model DIR --runner pooling`` (or the reference's ``--embedding-worker``,
which implies it; or a model vLLM itself runs as a pooling model, such as a BERT encoder) starts
this engine instead of ``VllmEngine``: same start-up, CPU defaults and load reports, but no KV
events and no KV connector (a pooling model has no decode to hand KV to, and no prefix cache a KV
router could use), and the card lists the ``embeddings`` model type only. Refusals come back as an
``EmbedOutput`` with ``error``: ``dimensions`` the model cannot honour (vLLM's Matryoshka check) or
an input vLLM rejects; a dead engine raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import sys
from collections.abc import AsyncGenerator
from typing import Literal

from vllm import PoolingParams
from vllm.exceptions import VLLMClientError
from vllm.inputs import tokens_input
from vllm.outputs import PoolingRequestOutput
from vllm.v1.engine.exceptions import EngineDeadError, EngineGenerateError

from dynamo.llm.endpoints import EmbedOutput, EmbedRequest
from dynamo.llm.model_card import EngineFeatures
from dynamo.llm.protocols import FINISH_ERROR, EngineOutput, PreprocessedRequest
from dynamo.vllm.args import WorkerConfig
from dynamo.vllm.engine import VllmEngine
from dynamo.worker import EngineFacts, EngineStartError

logger = logging.getLogger(__name__)

EMBED_TASK: Literal["embed"] = "embed"


def runs_pooling(config: WorkerConfig) -> bool:
    """Whether vLLM runs the configured model with its pooling runner (``--runner pooling``,
    ``--embedding-worker``, or ``--runner auto`` on a model vLLM only pools)."""
    if getattr(config.args, "embedding_worker", False) or config.engine_args.runner == "pooling":
        return True
    if config.engine_args.runner != "auto":
        return False
    try:
        return config.engine_args.create_model_config().runner_type == "pooling"
    except Exception as exc:  # the engine's start reports a model it cannot load, with context
        logger.debug("cannot resolve vLLM's runner for %s: %s", config.model, exc)
        return False


def pooling_config(config: WorkerConfig) -> WorkerConfig:
    """``config`` made an embedding worker's: the pooling runner, no KV events, no KV connector,
    vLLM's own prefix-cache default. ``ValueError`` for a flag that asks for what pooling lacks."""
    args = config.args
    engine_args = config.engine_args
    if config.worker.role is not None:
        raise ValueError(f"an embedding worker cannot be a {config.worker.role} worker")
    if engine_args.runner not in ("auto", "pooling"):
        raise ValueError(f"--embedding-worker needs vLLM's pooling runner, not --runner {engine_args.runner}")
    if getattr(args, "kv_transfer_config", None) is not None or getattr(args, "connector", None) == "nixl":
        raise ValueError("an embedding worker takes no KV connector: drop --kv-transfer-config / --connector")
    if getattr(args, "kv_events", None):
        raise ValueError("an embedding worker publishes no KV events: drop --kv-events")
    engine_args.runner = "pooling"
    engine_args.kv_transfer_config = None
    if getattr(args, "enable_prefix_caching", None) is None:
        engine_args.enable_prefix_caching = None  # vLLM decides, as its own server would
    config.kv_events = False
    return config


def _float32_le(data: object) -> bytes:
    """A pooled vector (a CPU tensor) as float32 little-endian bytes."""
    import torch

    assert isinstance(data, torch.Tensor)
    array = data.detach().to(device="cpu", dtype=torch.float32).contiguous().numpy()
    if sys.byteorder != "little":
        array = array.byteswap()
    return array.tobytes()


class _InputRefused(Exception):
    """vLLM refused input ``index`` of a request (too long, ...)."""

    def __init__(self, index: int, cause: Exception) -> None:
        super().__init__(str(cause))
        self.index = index
        self.cause = cause


class VllmEmbeddingEngine(VllmEngine):
    """One in-process vLLM engine with the pooling runner, serving ``EmbedRequest``s."""

    worker_label = "VllmEmbeddingWorker"
    model_type = ("embeddings",)
    features = EngineFeatures()  # none of the generation features: it does not generate

    async def start(self) -> EngineFacts:
        facts = await super().start()
        tasks = await self._require_llm().get_supported_tasks()
        if EMBED_TASK not in tasks:
            await self.stop()
            raise EngineStartError(
                f"model {self.config.model!r} cannot embed under vLLM's pooling runner "
                f"(its tasks: {', '.join(tasks) or 'none'})"
            )
        config = self.vllm_config.model_config
        logger.info(
            "embedding model: %d dimensions, Matryoshka %s, pooling %s",
            config.embedding_size,
            "yes" if config.is_matryoshka else "no",
            getattr(config.pooler_config, "seq_pooling_type", None),
        )
        return facts

    async def generate(self, req: PreprocessedRequest) -> AsyncGenerator[EngineOutput, None]:
        """Text generation is not served by an embedding worker (the card says so to frontends)."""
        yield EngineOutput(finish_reason=FINISH_ERROR, error="this worker serves embeddings only")

    async def embed(self, request: EmbedRequest) -> AsyncGenerator[EmbedOutput, None]:
        """One ``EmbedOutput`` per input as vLLM finishes it; closing the stream aborts the rest."""
        llm = self._require_llm()
        params = PoolingParams(task=EMBED_TASK, dimensions=request.dimensions)
        try:
            params.verify(llm.model_config)
        except (VLLMClientError, ValueError) as exc:
            yield EmbedOutput(error=str(exc), error_kind="invalid", error_param="dimensions")
            return
        tag = secrets.token_hex(4)
        ids = [f"{request.request_id}-{i}-{tag}" for i in range(len(request.inputs))]

        async def encode(i: int) -> tuple[int, PoolingRequestOutput]:
            final = None
            try:
                async for out in llm.encode(tokens_input(request.inputs[i]), params, ids[i]):
                    final = out
            except (VLLMClientError, ValueError) as exc:
                raise _InputRefused(i, exc) from exc
            assert final is not None
            return i, final

        self._active.update(ids)
        tasks = [asyncio.ensure_future(encode(i)) for i in range(len(ids))]
        done = False
        try:
            for next_done in asyncio.as_completed(tasks):
                i, out = await next_done
                yield EmbedOutput(
                    index=i, embedding=_float32_le(out.outputs.data), prompt_tokens=len(out.prompt_token_ids)
                )
            done = True
        except EngineDeadError:
            logger.error("request %s: the vLLM engine died", request.request_id)
            raise
        except _InputRefused as refused:
            logger.info(
                "embedding request %s: vLLM refused input %d: %s",
                request.request_id,
                refused.index,
                refused.cause,
            )
            yield EmbedOutput(
                index=refused.index, error=str(refused.cause), error_kind="invalid", error_param="input"
            )
        except EngineGenerateError as exc:
            cause = exc.__cause__ or exc
            logger.error(
                "embedding request %s failed in vLLM: %s: %s", request.request_id, type(cause).__name__, cause
            )
            yield EmbedOutput(error=f"engine error: {type(cause).__name__}: {cause}", error_kind="engine")
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._active.difference_update(ids)
            if not done:
                with contextlib.suppress(Exception):
                    await llm.abort(ids)
                logger.info(
                    "embedding request %s ended before all %d inputs were pooled",
                    request.request_id,
                    len(ids),
                )
