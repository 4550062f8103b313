"""Mocker engine configuration: the knobs of the simulated vLLM engine and their CLI flags.

Journey: worker command line -> ``MockerConfig`` -> ``MockEngine`` (engine stage). Defaults match
the reference mocker (NVIDIA Dynamo 1.6.1) so that simulated numbers stay comparable.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

# Bytes of KV cache per token, used to model the prefill -> decode transfer. Default: a
# Llama-3-8B-class model in bf16 = 2 (K and V) * 32 layers * 8 KV heads * 128 head dim * 2 bytes.
DEFAULT_KV_BYTES_PER_TOKEN = 131072


@dataclass(slots=True)
class MockerConfig:
    """Simulated engine parameters (reference defaults)."""

    num_gpu_blocks: int = 16384
    block_size: int = 64
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool = True
    # Divides every modelled duration; decode steps are further divided by decode_speedup_ratio.
    speedup_ratio: float = 1.0
    decode_speedup_ratio: float = 1.0
    # Fraction of the KV cache kept free when admitting new requests.
    watermark: float = 0.01
    is_prefill_worker: bool = False
    is_decode_worker: bool = False
    # KV transfer bandwidth in GB/s (1e9 bytes/s) for decode workers pulling a prefill's KV;
    # 0 disables the simulated transfer delay.
    kv_transfer_bandwidth: float = 64.0
    kv_bytes_per_token: int = DEFAULT_KV_BYTES_PER_TOKEN
    # The model's context limit (prompt + output). None: bounded only by the KV cache size.
    max_model_len: int | None = None
    # Mean output length of a request that sets no max_tokens (it then ends with EOS at a
    # pseudo-random length unless ignore_eos is set).
    mean_output_tokens: int = 128

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` on settings the engine cannot run with."""
        if self.num_gpu_blocks < 1:
            raise ValueError("num_gpu_blocks must be >= 1")
        if self.block_size < 1:
            raise ValueError("block_size must be >= 1")
        if self.max_num_seqs < 1:
            raise ValueError("max_num_seqs must be >= 1")
        if self.max_num_batched_tokens < 1:
            raise ValueError("max_num_batched_tokens must be >= 1")
        if self.speedup_ratio <= 0 or self.decode_speedup_ratio <= 0:
            raise ValueError("speedup ratios must be > 0")
        if not 0.0 <= self.watermark < 1.0:
            raise ValueError("watermark must be in [0, 1)")
        if self.is_prefill_worker and self.is_decode_worker:
            raise ValueError("a worker cannot be both a prefill and a decode worker")
        if self.kv_transfer_bandwidth < 0:
            raise ValueError("kv_transfer_bandwidth must be >= 0")
        if self.kv_bytes_per_token < 0:
            raise ValueError("kv_bytes_per_token must be >= 0")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise ValueError("max_model_len must be >= 2")
        if self.mean_output_tokens < 1:
            raise ValueError("mean_output_tokens must be >= 1")

    @property
    def context_limit(self) -> int:
        """Most tokens (prompt + output) one sequence may hold: the model's limit, and what fits in
        the KV cache below the admission watermark (so a preempted sequence can always return)."""
        kv_tokens = int((1.0 - self.watermark) * self.num_gpu_blocks) * self.block_size
        return kv_tokens if self.max_model_len is None else min(self.max_model_len, kv_tokens)

    @property
    def worker_mode(self) -> str:
        """``prefill``, ``decode`` or ``agg``."""
        if self.is_prefill_worker:
            return "prefill"
        if self.is_decode_worker:
            return "decode"
        return "agg"

    @classmethod
    def add_cli_args(cls, parser: argparse.ArgumentParser) -> None:
        """Add the mocker flags (vLLM-compatible names) to ``parser``."""
        d = cls()
        g = parser.add_argument_group("mocker engine")
        g.add_argument(
            "--num-gpu-blocks-override",
            dest="num_gpu_blocks",
            type=int,
            default=d.num_gpu_blocks,
            help=f"KV cache size in blocks (default {d.num_gpu_blocks})",
        )
        g.add_argument(
            "--block-size",
            type=int,
            default=d.block_size,
            help=f"tokens per KV block (default {d.block_size})",
        )
        g.add_argument(
            "--max-num-seqs",
            type=int,
            default=d.max_num_seqs,
            help=f"most sequences in one batch (default {d.max_num_seqs})",
        )
        g.add_argument(
            "--max-num-batched-tokens",
            type=int,
            default=d.max_num_batched_tokens,
            help=f"token budget of one step (default {d.max_num_batched_tokens})",
        )
        g.add_argument(
            "--enable-prefix-caching",
            action=argparse.BooleanOptionalAction,
            default=d.enable_prefix_caching,
            help="reuse cached prompt blocks (default on)",
        )
        g.add_argument(
            "--enable-chunked-prefill",
            action=argparse.BooleanOptionalAction,
            default=d.enable_chunked_prefill,
            help="split long prompts across steps (default on)",
        )
        g.add_argument(
            "--speedup-ratio",
            type=float,
            default=d.speedup_ratio,
            help="divide all simulated times by this (default 1.0)",
        )
        g.add_argument(
            "--decode-speedup-ratio",
            type=float,
            default=d.decode_speedup_ratio,
            help="further divide decode step times, e.g. to model speculative decoding (default 1.0)",
        )
        g.add_argument(
            "--watermark",
            type=float,
            default=d.watermark,
            help="fraction of KV blocks kept free at admission (default 0.01)",
        )
        g.add_argument(
            "--kv-transfer-bandwidth",
            type=float,
            default=d.kv_transfer_bandwidth,
            help="simulated KV transfer bandwidth in GB/s, 0 = instant (default 64)",
        )
        g.add_argument(
            "--kv-bytes-per-token",
            type=int,
            default=d.kv_bytes_per_token,
            help=f"KV cache bytes per token for the transfer model (default {d.kv_bytes_per_token})",
        )

    @classmethod
    def from_args(cls, ns: argparse.Namespace) -> MockerConfig:
        """Build a config from parsed ``add_cli_args`` flags (missing attributes keep defaults); the
        role comes from the shared worker flags (``--disaggregation-mode``, ``--is-prefill-worker``,
        ``--is-decode-worker``) when they were parsed too."""
        d = cls()
        kwargs = {name: getattr(ns, name, getattr(d, name)) for name in cls.__dataclass_fields__}
        mode = getattr(ns, "disaggregation_mode", None)
        if mode is not None:
            kwargs["is_prefill_worker"] = mode == "prefill"
            kwargs["is_decode_worker"] = mode == "decode"
        return cls(**kwargs)
