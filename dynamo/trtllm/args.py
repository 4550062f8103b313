"""Command line of the TensorRT-LLM engine worker (``python -m dynamo.trtllm``).

Journey: this configures the **engine** stage (request plane -> TensorRT-LLM -> token ids back).

The flags are those of NVIDIA Dynamo's TRT-LLM worker that the guides use (``--model-path``,
``--served-model-name``, ``--extra-engine-args FILE.yaml``, ``--disaggregation-mode``,
``--disaggregation-strategy``, ``--publish-events-and-metrics``, parallelism and capacity flags)
on top of the shared worker flags (``dynamo.worker.args``: runtime flags, ``--endpoint``,
``--disaggregation-mode`` -- ``prefill_and_decode`` is NVIDIA's name for ``agg`` -- with
``--is-prefill-worker`` / ``--is-decode-worker``, ``--migration-limit``, ``--kv-events``). They
parse without TensorRT-LLM installed; the worker then refuses to start with one line saying how
to install it.

The engine's arguments (``LLM(model=..., **engine_kwargs)``) are built in this order, later
winning: the ``--extra-engine-args`` YAML (TensorRT-LLM LLM-API options), the flags the user
gave, ``--override-engine-args`` (JSON, merged into nested sections), then what the worker
needs: token ids in and out (``skip_tokenizer_init``), the PyTorch backend unless another is
named, a KV event buffer when KV events are on, and a cache transceiver for prefill/decode
workers. Structured outputs (JSON schema, regex, grammar) need TensorRT-LLM's guided decoder:
``guided_decoding_backend: xgrammar`` (or ``llguidance``) in the YAML, which also needs
TensorRT-LLM's tokenizer, so the worker then keeps it loaded (requests still carry and return token
ids) and the model card declares ``structured_outputs``. ``--kv-block-size`` sets ``kv_cache_config.tokens_per_block`` (TensorRT-LLM's default
32), which is also the block size the KV router hashes.

``--disaggregation-strategy`` defaults to ``DISAGGREGATION_STRATEGY`` (then ``decode_first``),
read the way the frontend reads it. The frontend decides which flow a request takes; a worker
serves both, so the value is only checked and logged here.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dynamo.worker.args import WorkerArgs, WorkerConfigFields, add_worker_args, parse_with, worker_args_from
from dynamo.worker.util import module_installed

logger = logging.getLogger(__name__)

STRATEGIES = ("decode_first", "prefill_first")
DEFAULT_KV_BLOCK_SIZE = 32
DEFAULT_KV_EVENT_BUFFER = 1024
# No pip extra: TensorRT-LLM's pins clash with ours, so it is installed by hand (README.md, "Install").
NOT_INSTALLED = (
    "TensorRT-LLM is not installed: install it as NVIDIA documents, then this package with "
    "`pip install --no-deps -e .` (README.md, Install; GPU only)"
)

# Flags that map onto top-level LLM-API options (dest -> option).
_ENGINE_FLAGS = {
    "tensor_parallel_size": "tensor_parallel_size",
    "pipeline_parallel_size": "pipeline_parallel_size",
    "expert_parallel_size": "moe_expert_parallel_size",
    "gpus_per_node": "gpus_per_node",
    "max_batch_size": "max_batch_size",
    "max_num_tokens": "max_num_tokens",
    "max_seq_len": "max_seq_len",
    "max_beam_width": "max_beam_width",
}


def trtllm_installed() -> bool:
    """Whether the ``tensorrt_llm`` package can be found (it is not imported)."""
    return module_installed("tensorrt_llm")


@dataclass
class TrtllmConfig(WorkerConfigFields):
    """Everything the TRT-LLM worker needs: the LLM-API options plus the shared worker flags."""

    engine_kwargs: dict[str, Any]  # tensorrt_llm.LLM(**engine_kwargs); includes "model"
    worker: WorkerArgs
    served_model_name: str | None = None
    disaggregation_strategy: str = "decode_first"
    kv_events: bool = True

    @property
    def model_path(self) -> str:
        return str(self.engine_kwargs["model"])

    @property
    def structured_outputs(self) -> bool:
        """Whether TensorRT-LLM runs a guided decoder (``guided_decoding_backend``)."""
        return bool(self.engine_kwargs.get("guided_decoding_backend"))

    @property
    def kv_block_size(self) -> int:
        """``kv_cache_config.tokens_per_block`` as configured (TensorRT-LLM's default when unset)."""
        kv = self.engine_kwargs.get("kv_cache_config") or {}
        return int(kv.get("tokens_per_block") or DEFAULT_KV_BLOCK_SIZE)


def build_parser() -> argparse.ArgumentParser:
    """The worker's parser (needs no TensorRT-LLM)."""
    parser = argparse.ArgumentParser(
        prog="python3 -m dynamo.trtllm",
        description="Dynamo engine worker wrapping an in-process TensorRT-LLM engine (LLM API, PyTorch backend)."
        + (
            ""
            if trtllm_installed()
            else " TensorRT-LLM is not installed: commands parse, the worker will not start."
        ),
        allow_abbrev=False,
    )
    g = parser.add_argument_group("model")
    g.add_argument(
        "--model-path", "--model", dest="model_path", required=True, help="model folder or hub name"
    )
    g.add_argument(
        "--served-model-name", default=None, help="name clients use (default: from the model path)"
    )
    g = parser.add_argument_group("engine (each overrides the same option in --extra-engine-args)")
    g.add_argument(
        "--tensor-parallel-size", type=int, default=None, help="GPUs per model replica (default 1)"
    )
    g.add_argument("--pipeline-parallel-size", type=int, default=None)
    g.add_argument("--expert-parallel-size", type=int, default=None, help="MoE expert parallelism")
    g.add_argument("--gpus-per-node", type=int, default=None)
    g.add_argument("--max-batch-size", type=int, default=None, help="requests scheduled together")
    g.add_argument("--max-num-tokens", type=int, default=None, help="batched tokens per step")
    g.add_argument("--max-seq-len", type=int, default=None, help="prompt + output tokens of one request")
    g.add_argument("--max-beam-width", type=int, default=None)
    g.add_argument(
        "--free-gpu-memory-fraction", type=float, default=None, help="of free GPU memory for the KV cache"
    )
    g.add_argument(
        "--kv-block-size",
        type=int,
        default=None,
        help=f"tokens per KV block: kv_cache_config.tokens_per_block (default {DEFAULT_KV_BLOCK_SIZE})",
    )
    g.add_argument("--extra-engine-args", default=None, help="YAML file of TensorRT-LLM LLM-API options")
    g.add_argument("--override-engine-args", default=None, help="JSON object merged over everything else")
    add_worker_args(parser, kv_events_help="default: on unless block reuse is off")
    g = parser.add_argument_group("dynamo trtllm worker")
    g.add_argument(
        "--disaggregation-strategy",
        choices=STRATEGIES,
        default=os.environ.get("DISAGGREGATION_STRATEGY") or "decode_first",
        help="env DISAGGREGATION_STRATEGY (default decode_first); the frontend's setting decides the flow",
    )
    g.add_argument(
        "--publish-events-and-metrics",
        dest="kv_events",
        action="store_const",
        const=True,
        help="alias of --kv-events (NVIDIA Dynamo's name)",
    )
    return parser


def parse_args(argv: list[str] | None = None) -> TrtllmConfig:
    """Parse the worker's command line into a ``TrtllmConfig`` (exits 2 on bad flags or files)."""
    return parse_with(build_parser(), config_from_args, argv)


def deep_merge(target: dict[str, Any], source: dict[str, Any]) -> dict[str, Any]:
    """Merge ``source`` into ``target`` in place: nested mappings merge, everything else replaces."""
    for key, value in source.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            deep_merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)
    return target


def load_engine_yaml(path: str) -> dict[str, Any]:
    """The LLM-API options in ``--extra-engine-args`` (``ValueError`` when unreadable)."""
    file = Path(os.path.expandvars(os.path.expanduser(path)))
    try:
        data = yaml.safe_load(file.read_text())
    except OSError as exc:
        raise ValueError(f"--extra-engine-args {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"--extra-engine-args {path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"--extra-engine-args {path} must hold a mapping of LLM-API options")
    return data


def engine_kwargs_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The LLM-API options for ``tensorrt_llm.LLM`` (see the module docstring for the order)."""
    kwargs: dict[str, Any] = load_engine_yaml(args.extra_engine_args) if args.extra_engine_args else {}
    for dest, option in _ENGINE_FLAGS.items():
        value = getattr(args, dest)
        if value is not None:
            if option in kwargs and kwargs[option] != value:
                logger.info(
                    "--%s %s overrides %s: %s from the YAML",
                    dest.replace("_", "-"),
                    value,
                    option,
                    kwargs[option],
                )
            kwargs[option] = value
    kv = kwargs.get("kv_cache_config")
    if kv is not None and not isinstance(kv, dict):
        raise ValueError("kv_cache_config in --extra-engine-args must be a mapping")
    kv = dict(kv or {})
    if args.free_gpu_memory_fraction is not None:
        kv["free_gpu_memory_fraction"] = args.free_gpu_memory_fraction
    if args.kv_block_size is not None:
        kv["tokens_per_block"] = args.kv_block_size
    if kv:
        kwargs["kv_cache_config"] = kv
    if args.override_engine_args:
        try:
            overrides = json.loads(args.override_engine_args)
        except ValueError as exc:
            raise ValueError(f"--override-engine-args is not JSON: {exc}") from None
        if not isinstance(overrides, dict):
            raise ValueError("--override-engine-args must be a JSON object")
        deep_merge(kwargs, overrides)
    kwargs["model"] = args.model_path
    kwargs.setdefault("backend", "pytorch")
    guided = kwargs.get("guided_decoding_backend")
    if guided and kwargs.get("skip_tokenizer_init"):
        raise ValueError(
            f"guided_decoding_backend {guided} needs TensorRT-LLM's tokenizer: drop skip_tokenizer_init"
        )
    # Token ids in, token ids out: the frontend (de)tokenizes. The guided decoder compiles
    # grammars against TensorRT-LLM's tokenizer, so it stays loaded when one is configured.
    kwargs.setdefault("skip_tokenizer_init", not guided)
    return kwargs


def config_from_args(args: argparse.Namespace) -> TrtllmConfig:
    """Build a ``TrtllmConfig`` from a namespace parsed by ``build_parser()``."""
    worker = worker_args_from(args)
    if args.kv_block_size is not None and args.kv_block_size <= 0:
        raise ValueError("--kv-block-size must be positive")
    mode = worker.disaggregation_mode
    kwargs = engine_kwargs_from_args(args)
    kv: dict[str, Any] = kwargs.setdefault("kv_cache_config", {})
    if not isinstance(kv, dict):
        raise ValueError("kv_cache_config must be a mapping")

    kv_events = worker.kv_events
    reuse = kv.get("enable_block_reuse", True) is not False
    if kv_events is None:
        kv_events = reuse
    elif kv_events and not reuse:
        raise ValueError(
            "--kv-events needs KV block reuse: drop enable_block_reuse: false or add --no-kv-events"
        )
    if kv_events:
        kv.setdefault("event_buffer_max_size", DEFAULT_KV_EVENT_BUFFER)
        if kwargs.get("backend") != "pytorch":
            raise ValueError(
                f"KV events need the pytorch backend (not {kwargs.get('backend')}); add --no-kv-events"
            )
    if mode != "agg":
        # Prefill and decode workers hand KV over through TensorRT-LLM's cache transceiver.
        kwargs.setdefault("cache_transceiver_config", {"backend": "DEFAULT"})
        if mode == "prefill":
            kwargs.setdefault("disable_overlap_scheduler", True)
    if args.disaggregation_strategy not in STRATEGIES:  # the default comes from the environment
        raise ValueError(
            f"DISAGGREGATION_STRATEGY={args.disaggregation_strategy!r} is not one of {', '.join(STRATEGIES)}"
        )

    return TrtllmConfig(
        engine_kwargs=kwargs,
        worker=worker,
        served_model_name=args.served_model_name,
        disaggregation_strategy=args.disaggregation_strategy,
        kv_events=bool(kv_events),
    )
