"""The mocker behind the worker base: a ``WorkerEngine`` around the simulated ``MockEngine``.

Journey: request plane -> decode step -> **``MockerWorkerEngine.generate``** -> ``MockEngine``
(no computation; timing from the reference model) -> ``EngineOutput`` back. ``--num-workers N``
runs N of these in one process, each its own instance with its own lease.

Features: none (the card says so, and the frontend refuses structured outputs, ``logit_bias`` and
prompt logprobs for mocker models with a 400); a request that asks for them anyway ends with one
``invalid_request`` error chunk instead of a simulated answer that ignores them.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncGenerator
from pathlib import Path

from tokenizers import Tokenizer

from dynamo.llm.kv_events import KvEventBatch, LoadMetrics
from dynamo.llm.model_card import EngineFeatures, ModelDeploymentCard
from dynamo.llm.protocols import ERROR_INVALID_REQUEST, FINISH_ERROR, EngineOutput, PreprocessedRequest
from dynamo.mocker.args import MockerWorkerConfig, parse_args
from dynamo.mocker.engine import MockEngine
from dynamo.worker import EngineContext, EngineFacts, EngineStartError, WorkerEngine
from dynamo.worker.engine import KvBlockSource
from dynamo.worker.kv_publisher import CachedBlocks


class MockerWorkerEngine(WorkerEngine):
    """A simulated vLLM-like engine (no GPU, no torch)."""

    name = "mocker"
    worker_label = "MockerWorker"
    features = EngineFeatures()  # no structured outputs, logit_bias or prompt logprobs

    config: MockerWorkerConfig

    def __init__(self, config: MockerWorkerConfig, context: EngineContext) -> None:
        super().__init__(config, context)
        self.engine: MockEngine | None = None

    @classmethod
    def parse_config(cls, argv: list[str] | None = None) -> MockerWorkerConfig:
        return parse_args(argv)

    async def start(self) -> EngineFacts:
        path = Path(self.config.model_path)
        if not await asyncio.to_thread((path / "tokenizer.json").is_file):
            raise EngineStartError(
                f"--model-path {path} has no tokenizer.json (prepare one: python3 -m dynamo.models prepare "
                "smollm2 --tokenizer-only)"
            )
        engine_config = self.config.engine
        card = await asyncio.to_thread(
            ModelDeploymentCard.from_local_path,
            path,
            served_model_name=self.config.served_model_name,
            context_length=self.config.max_model_len,
            kv_cache_block_size=engine_config.block_size,
        )
        engine_config.max_model_len = card.context_length
        vocab_size, special = await asyncio.to_thread(_tokenizer_facts, path)
        self.engine = MockEngine(
            engine_config,
            self.context.worker_id,
            vocab_size=vocab_size,
            eos_token_id=card.eos_token_ids[0] if card.eos_token_ids else None,
            kv_event_sink=self.context.kv_event_sink,
            special_token_ids=special,
        )
        await self.engine.start()
        return EngineFacts(
            kv_cache_block_size=engine_config.block_size,
            context_length=card.context_length,
            total_kv_blocks=engine_config.num_gpu_blocks,
            max_num_seqs=engine_config.max_num_seqs,
            max_num_batched_tokens=engine_config.max_num_batched_tokens,
            features=self.features,
        )

    def generate(self, request: PreprocessedRequest) -> AsyncGenerator[EngineOutput, None]:
        assert self.engine is not None, "start() first"
        unsupported = _unsupported(request)
        if unsupported:
            return _refuse(f"the mocker does not simulate {unsupported}")
        return self.engine.generate(request)

    def load_metrics(self) -> LoadMetrics:
        assert self.engine is not None, "start() first"
        return self.engine.load_metrics()

    def kv_block_source(self) -> KvBlockSource:
        """The simulated cache already knows its blocks: the KV event relay keeps no copy."""
        return self._block_snapshot

    def _block_snapshot(self, worker_id: int, dp_rank: int) -> KvEventBatch:
        """The engine's block set in the relay's snapshot shape (``CachedBlocks.snapshot``)."""
        cached = CachedBlocks()
        if self.engine is not None and dp_rank == self.engine.dp_rank:
            snap = self.engine.kv_block_set()
            cached.blocks = {
                s.blocks[0].block_hash: (s.parent_hash, s.blocks[0].tokens_hash) for s in snap.blocks
            }
            cached.last_event_id = snap.last_event_id
        return cached.snapshot(worker_id, dp_rank)

    async def stop(self) -> None:
        if self.engine is not None:
            await self.engine.stop()


def _unsupported(request: PreprocessedRequest) -> str:
    """The options of ``request`` the mocker cannot honour, named for the client ("" when none)."""
    names = [
        name
        for name, asked in (
            ("structured outputs", request.guided is not None),
            ("logit_bias", bool(request.sampling.logit_bias)),
            ("prompt logprobs", request.output.prompt_logprobs is not None),
        )
        if asked
    ]
    return ", ".join(names)


async def _refuse(message: str) -> AsyncGenerator[EngineOutput, None]:
    yield EngineOutput(finish_reason=FINISH_ERROR, error=message, error_code=ERROR_INVALID_REQUEST)


@functools.cache
def _tokenizer_facts(model_path: Path) -> tuple[int, list[int]]:
    """Vocabulary size and special token ids, read once per model for all of a process's replicas."""
    tok = Tokenizer.from_file(str(model_path / "tokenizer.json"))
    special = sorted(i for i, t in tok.get_added_tokens_decoder().items() if t.special)
    return tok.get_vocab_size(with_added_tokens=True), special
