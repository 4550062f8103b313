"""``python -m dynamo.vllm`` picks the embedding engine for vLLM's pooling runner, and refuses the
worker flags a pooling model cannot honour (no engine is started here: flags and config only)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("vllm")

from dynamo.vllm.args import parse_args
from dynamo.vllm.embedding import VllmEmbeddingEngine, pooling_config, runs_pooling

pytestmark = [pytest.mark.vllm]


def test_pooling_runner_makes_an_embedding_worker(smollm2_tokenizer_dir: Path):
    model = str(smollm2_tokenizer_dir)
    assert not runs_pooling(parse_args(["--model", model]))  # SmolLM2 generates unless told otherwise
    for flags in (["--runner", "pooling"], ["--embedding-worker"]):
        config = parse_args(["--model", model, *flags])
        assert runs_pooling(config), flags
        config = pooling_config(config)
        assert config.engine_args.runner == "pooling"
        assert config.kv_events is False and config.engine_args.kv_transfer_config is None
        assert config.engine_args.enable_prefix_caching is None  # vLLM's own default, as its server
    assert VllmEmbeddingEngine.model_type == ("embeddings",)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--runner", "pooling", "--kv-events"], "KV events"),
        (["--runner", "pooling", "--connector", "nixl"], "KV connector"),
        (["--embedding-worker", "--runner", "generate"], "pooling runner"),
        (["--runner", "pooling", "--is-prefill-worker"], "prefill"),
    ],
)
def test_flags_pooling_cannot_honour_are_refused(smollm2_tokenizer_dir: Path, flags, message):
    config = parse_args(["--model", str(smollm2_tokenizer_dir), *flags])
    assert runs_pooling(config)
    with pytest.raises(ValueError, match=message):
        pooling_config(config)


def test_the_worker_exits_2_with_one_line(smollm2_tokenizer_dir: Path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "dynamo.vllm",
            "--model",
            str(smollm2_tokenizer_dir),
            "--runner",
            "pooling",
            "--kv-events",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "error: an embedding worker publishes no KV events" in proc.stderr
