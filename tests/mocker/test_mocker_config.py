"""MockerConfig: reference defaults and the worker's command-line flags."""

import pytest

from dynamo.mocker.args import build_parser
from dynamo.mocker.config import DEFAULT_KV_BYTES_PER_TOKEN, MockerConfig


def parse(*argv: str) -> MockerConfig:
    """The engine part of the mocker worker's command line (role flags are the shared worker group's)."""
    return MockerConfig.from_args(build_parser().parse_args(["--model-path", "m", *argv]))


def test_reference_defaults() -> None:
    c = parse()
    assert c == MockerConfig()
    assert (c.num_gpu_blocks, c.block_size, c.max_num_seqs, c.max_num_batched_tokens) == (
        16384,
        64,
        256,
        8192,
    )
    assert c.enable_prefix_caching and c.enable_chunked_prefill
    assert (c.speedup_ratio, c.decode_speedup_ratio, c.watermark) == (1.0, 1.0, 0.01)
    assert not c.is_prefill_worker and not c.is_decode_worker
    assert c.kv_bytes_per_token == DEFAULT_KV_BYTES_PER_TOKEN
    assert c.worker_mode == "agg"


def test_flags() -> None:
    c = parse(
        "--num-gpu-blocks-override",
        "100",
        "--block-size",
        "16",
        "--max-num-seqs",
        "8",
        "--max-num-batched-tokens",
        "512",
        "--no-enable-prefix-caching",
        "--no-enable-chunked-prefill",
        "--speedup-ratio",
        "10",
        "--decode-speedup-ratio",
        "2",
        "--watermark",
        "0.05",
        "--is-decode-worker",
        "--kv-transfer-bandwidth",
        "12.5",
    )
    assert (c.num_gpu_blocks, c.block_size, c.max_num_seqs, c.max_num_batched_tokens) == (100, 16, 8, 512)
    assert not c.enable_prefix_caching and not c.enable_chunked_prefill
    assert (c.speedup_ratio, c.decode_speedup_ratio, c.watermark) == (10.0, 2.0, 0.05)
    assert c.is_decode_worker and c.worker_mode == "decode"
    assert c.kv_transfer_bandwidth == 12.5
    assert parse("--is-prefill-worker", "--enable-prefix-caching").worker_mode == "prefill"


def test_invalid() -> None:
    with pytest.raises(ValueError):
        MockerConfig(is_prefill_worker=True, is_decode_worker=True)
    with pytest.raises(ValueError):
        MockerConfig(speedup_ratio=0)
    with pytest.raises(ValueError):
        MockerConfig(watermark=1.0)


def test_context_limit() -> None:
    assert MockerConfig(num_gpu_blocks=100, block_size=10, watermark=0.0).context_limit == 1000
    assert MockerConfig(num_gpu_blocks=100, block_size=10, watermark=0.05).context_limit == 950
    assert MockerConfig(num_gpu_blocks=100, block_size=10, max_model_len=300).context_limit == 300
