"""Fixtures for the vLLM worker tests.

- ``smollm2_dir`` (session): the SmolLM2-135M-Instruct folder from ``python -m dynamo.models prepare
  smollm2`` (float32 safetensors + tokenizer; ~20 s the first time, instant once prepared).
- ``shared_vllm`` (session): a lazily started, shared in-process ``VllmEngine`` on that model
  (~25 s to start, ~3.8 GiB across its processes). It is started on first use and stopped at the
  end of a module that asks for ``vllm_engine`` unless the next module asks for it too, so
  consecutive engine modules share one start and it never overlaps the worker processes that
  end-to-end modules start (at most two engines alive at once on a 24 GiB machine).
- ``vllm_engine`` (module): the started engine. ``shared_vllm.kv_batches`` collects its KV events.

Settings: ``--max-model-len 2048 --max-num-seqs 8``, CPU defaults otherwise (eager, float32,
1 GiB KV cache, block size 128, KV events on).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import pytest_asyncio

if TYPE_CHECKING:
    from dynamo.llm.kv_events import KvEventBatch
    from dynamo.vllm.engine import VllmEngine

TEST_WORKER_ID = 0x5EED


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The prepared SmolLM2 model folder (prepares it on first use)."""
    proc = subprocess.run(
        [sys.executable, "-m", "dynamo.models", "prepare", "smollm2", "--quiet"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(f"python -m dynamo.models prepare smollm2 failed: {proc.stderr.strip()}")
    return Path(proc.stdout.strip().splitlines()[-1])


class SharedEngine:
    """One in-process engine for the session, started on first use, stoppable early to free memory."""

    def __init__(self, model_dir: Path) -> None:
        self.model_dir = model_dir
        self.engine: VllmEngine | None = None
        self.kv_batches: list[KvEventBatch] = []

    async def get(self) -> VllmEngine:
        if self.engine is None:
            from dynamo.vllm.args import parse_args
            from dynamo.vllm.engine import VllmEngine
            from dynamo.worker import EngineContext

            config = parse_args(
                ["--model", str(self.model_dir), "--max-model-len", "2048", "--max-num-seqs", "8"]
            )
            engine = VllmEngine(
                config, EngineContext(worker_id=TEST_WORKER_ID, kv_event_sink=self.kv_batches.append)
            )
            await engine.start()
            self.engine = engine
        return self.engine

    async def release(self) -> None:
        engine, self.engine = self.engine, None
        if engine is not None:
            await engine.stop()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def shared_vllm(smollm2_dir: Path) -> AsyncIterator[SharedEngine]:
    pytest.importorskip("vllm")
    shared = SharedEngine(smollm2_dir)
    yield shared
    await shared.release()


def _next_module_uses_engine(request: pytest.FixtureRequest) -> bool:
    """Whether the test collected right after this module's last one also asks for ``vllm_engine``."""
    items = request.session.items
    mine = [i for i, item in enumerate(items) if item.module is request.module]
    if not mine or mine[-1] + 1 >= len(items):
        return False
    return "vllm_engine" in getattr(items[mine[-1] + 1], "fixturenames", ())


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def vllm_engine(shared_vllm: SharedEngine, request: pytest.FixtureRequest) -> AsyncIterator[VllmEngine]:
    """The shared engine, started if needed; stopped when the module is done unless the next
    module uses it too."""
    yield await shared_vllm.get()
    if not _next_module_uses_engine(request):
        await shared_vllm.release()
