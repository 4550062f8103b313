"""Command line of the SGLang engine worker (``python -m dynamo.sglang``).

Journey: this configures the **engine** stage (request plane -> SGLang -> token ids back).

Two modes, named in ``--help``:

- SGLang installed: every SGLang server flag passes through (``ServerArgs.add_cli_args``).
- SGLang not installed: a parser of the documented subset (``SGLANG_SUBSET``: the flags the guides
  and our Kubernetes examples use, spelled as SGLang spells them), so commands can be checked
  anywhere; the worker itself then refuses to start with one line naming the extra to install.

Ours on top: the shared worker flags (``dynamo.worker.args``: runtime flags, ``--endpoint``,
``--migration-limit``, ``--is-prefill-worker`` / ``--is-decode-worker``, ``--kv-events``); SGLang's
own ``--disaggregation-mode`` (``null|prefill|decode``) is the worker's role. Settings we choose when the user did not: ``--page-size 16`` (the
KV router hashes blocks of this size; SGLang's own default is 1), token ids in and out
(``skip_tokenizer_init``), incremental streaming output, a free ``--disaggregation-bootstrap-port``
for prefill workers, and (KV events on) an SGLang ZMQ KV event publisher on a private endpoint,
chosen when the engine starts.

Structured outputs (JSON schema, regex, grammar): SGLang compiles them with its grammar backend,
which it builds only when it loads its own tokenizer. Naming one (``--grammar-backend xgrammar``,
``llguidance`` or ``outlines``) lets SGLang load the tokenizer (it still takes and returns token
ids) and puts ``structured_outputs`` on the model card; without it the frontend refuses those
requests with a 400.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from dataclasses import dataclass
from typing import Any

from dynamo.runtime.ports import free_port
from dynamo.worker.args import WorkerArgs, WorkerConfigFields, add_worker_args, parse_with, worker_args_from
from dynamo.worker.util import module_installed

logger = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 16
NOT_INSTALLED = "SGLang is not installed: install the worker's extra with `pip install .[sglang]` (GPU only)"


def sglang_installed() -> bool:
    """Whether the ``sglang`` package can be found (it is not imported)."""
    return module_installed("sglang")


# SGLang's names for its parallelism flags (older versions store them under the long dest).
_PARALLEL_ALIASES = {
    "tensor_parallel_size": "tp_size",
    "pipeline_parallel_size": "pp_size",
    "data_parallel_size": "dp_size",
    "expert_parallel_size": "ep_size",
}


@dataclass(frozen=True)
class SubsetFlag:
    """One SGLang flag the fallback parser knows, with SGLang's spelling and default."""

    names: tuple[str, ...]
    dest: str
    kind: Any = str  # a type, or "store_true"
    default: Any = None
    choices: tuple[str, ...] | None = None
    help: str = ""
    required: bool = False


SGLANG_SUBSET: tuple[SubsetFlag, ...] = (
    SubsetFlag(
        ("--model-path", "--model"), "model_path", help="model folder or Hugging Face name", required=True
    ),
    SubsetFlag(("--tokenizer-path",), "tokenizer_path"),
    SubsetFlag(("--served-model-name",), "served_model_name", help="name clients use"),
    SubsetFlag(("--tp-size", "--tensor-parallel-size", "--tp"), "tp_size", int, 1),
    SubsetFlag(("--dp-size", "--data-parallel-size", "--dp"), "dp_size", int, 1),
    SubsetFlag(("--pp-size", "--pipeline-parallel-size"), "pp_size", int, 1),
    SubsetFlag(("--ep-size", "--expert-parallel-size"), "ep_size", int, 1),
    SubsetFlag(("--trust-remote-code",), "trust_remote_code", "store_true", False),
    SubsetFlag(("--page-size",), "page_size", int, help="tokens per KV page (= KV router block size)"),
    SubsetFlag(("--mem-fraction-static",), "mem_fraction_static", float),
    SubsetFlag(("--context-length",), "context_length", int),
    SubsetFlag(("--max-running-requests",), "max_running_requests", int),
    SubsetFlag(("--max-total-tokens",), "max_total_tokens", int),
    SubsetFlag(("--chunked-prefill-size",), "chunked_prefill_size", int),
    SubsetFlag(("--dtype",), "dtype", str, "auto"),
    SubsetFlag(("--kv-cache-dtype",), "kv_cache_dtype", str, "auto"),
    SubsetFlag(("--quantization",), "quantization"),
    SubsetFlag(("--load-format",), "load_format", str, "auto"),
    SubsetFlag(("--attention-backend",), "attention_backend"),
    SubsetFlag(("--disable-radix-cache",), "disable_radix_cache", "store_true", False),
    SubsetFlag(("--disable-cuda-graph",), "disable_cuda_graph", "store_true", False),
    SubsetFlag(("--cuda-graph-max-bs",), "cuda_graph_max_bs", int),
    SubsetFlag(("--enable-dp-attention",), "enable_dp_attention", "store_true", False),
    SubsetFlag(("--skip-tokenizer-init",), "skip_tokenizer_init", "store_true", False),
    SubsetFlag(
        ("--grammar-backend",),
        "grammar_backend",
        str,
        None,
        ("xgrammar", "outlines", "llguidance", "none"),
        "structured outputs (SGLang then loads its tokenizer, which the grammar backend needs)",
    ),
    SubsetFlag(("--random-seed",), "random_seed", int),
    SubsetFlag(("--log-level",), "log_level", str, "info"),
    SubsetFlag(("--enable-metrics",), "enable_metrics", "store_true", False),
    SubsetFlag(("--dist-init-addr",), "dist_init_addr"),
    SubsetFlag(("--nnodes",), "nnodes", int, 1),
    SubsetFlag(("--node-rank",), "node_rank", int, 0),
    SubsetFlag(("--kv-events-config",), "kv_events_config", help="SGLang KV event publisher (JSON)"),
    SubsetFlag(("--disaggregation-mode",), "disaggregation_mode", str, "null", ("null", "prefill", "decode")),
    SubsetFlag(
        ("--disaggregation-transfer-backend",),
        "disaggregation_transfer_backend",
        str,
        "mooncake",
        ("mooncake", "nixl", "ascend", "fake", "mori"),
    ),
    SubsetFlag(("--disaggregation-bootstrap-port",), "disaggregation_bootstrap_port", int, 8998),
    SubsetFlag(("--disaggregation-ib-device",), "disaggregation_ib_device"),
)


@dataclass
class SglangConfig(WorkerConfigFields):
    """Everything the SGLang worker needs: SGLang's server arguments plus the shared worker flags."""

    engine_kwargs: dict[str, Any]  # ServerArgs fields: sglang.Engine(**engine_kwargs)
    worker: WorkerArgs
    kv_events: bool = True
    # The user's own ZMQ publisher (``--kv-events-config``): (endpoint, topic); None: we configure one.
    kv_events_publisher: tuple[str, str] | None = None
    passthrough: bool = False  # parsed by SGLang's own ServerArgs.add_cli_args

    @property
    def model_path(self) -> str:
        return str(self.engine_kwargs["model_path"])

    @property
    def served_model_name(self) -> str | None:
        """``--served-model-name`` as given (None: the card names the model after its path)."""
        name = self.engine_kwargs.get("served_model_name")
        return str(name) if name else None

    @property
    def page_size(self) -> int:
        return int(self.engine_kwargs.get("page_size") or DEFAULT_PAGE_SIZE)

    @property
    def dp_size(self) -> int:
        return int(self.engine_kwargs.get("dp_size") or 1)

    @property
    def structured_outputs(self) -> bool:
        """Whether SGLang can compile JSON schemas, regexes and grammars (``--grammar-backend``)."""
        return not self.engine_kwargs.get("skip_tokenizer_init", True)


def _add_subset(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "SGLang server flags (documented subset: SGLang is not installed; `pip install .[sglang]` for all)"
    )
    for flag in SGLANG_SUBSET:
        if flag.kind == "store_true":
            group.add_argument(*flag.names, dest=flag.dest, action="store_true", help=flag.help or None)
        else:
            group.add_argument(
                *flag.names,
                dest=flag.dest,
                type=flag.kind,
                default=flag.default,
                choices=flag.choices,
                required=flag.required,
                help=flag.help or None,
            )


def _add_sglang_flags(parser: argparse.ArgumentParser) -> None:
    from sglang.srt.server_args import ServerArgs

    ServerArgs.add_cli_args(parser)
    # The guides write ``--tp 1``; SGLang accepts it only as an abbreviation of ``--tp-size``, and
    # this parser takes no abbreviations (a typo must fail).
    for short, long in (("--tp", "--tp-size"), ("--dp", "--dp-size")):
        action = parser._option_string_actions.get(long)
        if action is not None and short not in parser._option_string_actions:
            parser.add_argument(
                short, dest=action.dest, type=int, default=argparse.SUPPRESS, help=f"alias of {long}"
            )


def build_parser() -> argparse.ArgumentParser:
    """The worker's parser: SGLang's server flags (all of them, or the documented subset) plus ours."""
    passthrough = sglang_installed()
    mode = (
        "all SGLang server flags pass through"
        if passthrough
        else "SGLang is not installed: only the documented subset of its flags is known, and the worker "
        "will not start (install with `pip install .[sglang]`)"
    )
    parser = argparse.ArgumentParser(
        prog="python3 -m dynamo.sglang",
        description=f"Dynamo engine worker wrapping an in-process SGLang engine ({mode}).",
        allow_abbrev=False,
    )
    if passthrough:
        _add_sglang_flags(parser)
    else:
        _add_subset(parser)
    # "Not given" must be visible so that our defaults only fill what the user left out.
    parser.set_defaults(
        page_size=None, disaggregation_bootstrap_port=None, grammar_backend=None, _passthrough=passthrough
    )
    add_worker_args(
        parser,
        kv_events_help="default: on unless --disable-radix-cache; uses --kv-events-config when given, "
        "else a private ZMQ endpoint",
    )
    return parser


def parse_args(argv: list[str] | None = None) -> SglangConfig:
    """Parse the worker's command line into an ``SglangConfig`` (exits 2 on bad flags)."""
    return parse_with(build_parser(), config_from_args, argv)


def _engine_kwargs(args: argparse.Namespace, passthrough: bool) -> dict[str, Any]:
    values = dict(vars(args))
    for long, short in _PARALLEL_ALIASES.items():
        if long in values and values.get(short) is None:
            values[short] = values[long]
    if passthrough:
        from sglang.srt.server_args import ServerArgs

        names = [f.name for f in dataclasses.fields(ServerArgs)]
    else:
        names = [flag.dest for flag in SGLANG_SUBSET]
    kwargs = {name: values[name] for name in names if name in values}
    grammar = kwargs.pop("grammar_backend", None)
    if grammar not in (None, "none") and kwargs.get("skip_tokenizer_init"):
        raise ValueError(f"--grammar-backend {grammar} needs SGLang's tokenizer: drop --skip-tokenizer-init")
    if grammar is not None:
        kwargs["grammar_backend"] = grammar
    # Token ids in, token ids out: the frontend (de)tokenizes. SGLang's grammar backend needs its
    # tokenizer loaded, so a named one keeps it (requests still carry and return token ids).
    kwargs["skip_tokenizer_init"] = grammar in (None, "none")
    if passthrough:
        for name in ("incremental_streaming_output", "stream_output"):  # newer, older spelling
            if name in names:
                kwargs[name] = True
                break
    return kwargs


def _user_publisher(raw: str) -> tuple[bool, tuple[str, str] | None]:
    """``--kv-events-config`` -> (publishes at all, (endpoint, topic) when it is a ZMQ publisher)."""
    try:
        cfg = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"--kv-events-config is not JSON: {exc}") from None
    if not isinstance(cfg, dict):
        raise ValueError("--kv-events-config must be a JSON object")
    publisher = str(cfg.get("publisher", "null"))
    if publisher == "null":
        return False, None
    if publisher != "zmq":
        return True, None
    return True, (str(cfg.get("endpoint", "tcp://*:5557")), str(cfg.get("topic", "")))


def _kv_events(asked: bool | None, kwargs: dict[str, Any]) -> tuple[bool, tuple[str, str] | None]:
    """Whether to relay KV events (``--kv-events``, else on when the radix cache is, or as the
    user's ``--kv-events-config`` says) and the user's ZMQ publisher to read them from, if any."""
    publisher: tuple[str, str] | None = None
    radix_off = bool(kwargs.get("disable_radix_cache"))
    on = asked
    if kwargs.get("kv_events_config"):
        publishes, publisher = _user_publisher(str(kwargs["kv_events_config"]))
        if on and publisher is None:
            raise ValueError(
                '--kv-events needs a ZMQ publisher: set "publisher": "zmq" in --kv-events-config'
            )
        if on is None:
            on = publishes and publisher is not None
    elif on is None:
        on = not radix_off
    if on and radix_off:
        raise ValueError(
            "--kv-events needs the radix cache: drop --disable-radix-cache or add --no-kv-events"
        )
    return bool(on), publisher


def config_from_args(args: argparse.Namespace) -> SglangConfig:
    """Build an ``SglangConfig`` from a namespace parsed by ``build_parser()``."""
    passthrough = bool(getattr(args, "_passthrough", False))
    if not getattr(args, "model_path", None):
        raise ValueError("--model-path is required")
    worker = worker_args_from(args)
    kwargs = _engine_kwargs(args, passthrough)
    if kwargs.get("page_size") is None:
        kwargs["page_size"] = DEFAULT_PAGE_SIZE
    if kwargs.get("disaggregation_bootstrap_port") is None:
        # Each prefill worker serves its KV from its own bootstrap port; several on one machine must differ.
        kwargs["disaggregation_bootstrap_port"] = free_port() if worker.is_prefill else 8998
    kv_events, publisher = _kv_events(worker.kv_events, kwargs)
    return SglangConfig(
        engine_kwargs=kwargs,
        worker=worker,
        kv_events=kv_events,
        kv_events_publisher=publisher,
        passthrough=passthrough,
    )
