"""The flags every engine worker shares, composed onto each engine's own parser.

Journey: command line -> **this group** (runtime flags, ``--endpoint``, ``--migration-limit``,
``--disaggregation-mode`` with ``--is-prefill-worker`` / ``--is-decode-worker``, ``--kv-events``,
and what the model card tells the frontend: ``--dyn-tool-call-parser``, ``--dyn-reasoning-parser``,
``--custom-jinja-template``) -> ``WorkerArgs`` -> the worker's registration (``dynamo.worker.run``). Engine flags stay in each
engine's ``args`` module; an engine whose own parser already has ``--disaggregation-mode`` (SGLang)
keeps it, and its values are read through ``MODE_ALIASES``.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from dynamo.llm.disagg import DisaggTimeouts
from dynamo.llm.endpoints import worker_endpoint
from dynamo.llm.parsers import REASONING_PARSERS, TOOL_CALL_PARSERS
from dynamo.runtime import EndpointId, RuntimeConfig
from dynamo.runtime.config import add_runtime_args

ConfigT = TypeVar("ConfigT")

DisaggregationMode = Literal["agg", "prefill", "decode"]
DISAGGREGATION_MODES: tuple[str, ...] = ("agg", "prefill", "decode")
# Other engines' spellings of the aggregated mode (SGLang's "null", TensorRT-LLM's "prefill_and_decode").
MODE_ALIASES: dict[str, DisaggregationMode] = {
    "agg": "agg",
    "null": "agg",
    "prefill_and_decode": "agg",
    "prefill": "prefill",
    "decode": "decode",
}


@dataclass(frozen=True)
class WorkerArgs:
    """The shared part of a worker's configuration."""

    endpoint: EndpointId
    disaggregation_mode: DisaggregationMode = "agg"
    migration_limit: int = 0
    # None: the engine decides (on when its prefix cache is on).
    kv_events: bool | None = None
    tool_call_parser: str | None = None  # the frontend's parser of this model's tool calls
    reasoning_parser: str | None = None  # ... and of its reasoning text
    custom_jinja_template: str | None = None  # a chat template file replacing the model's own
    # DYN_PREFILL_TIMEOUT / DYN_KV_TRANSFER_TIMEOUT, read and checked with the flags
    disagg_timeouts: DisaggTimeouts = field(default_factory=DisaggTimeouts)
    args: argparse.Namespace | None = None  # the raw parse, for RuntimeConfig.from_args

    @property
    def namespace(self) -> str:
        return self.endpoint.namespace

    @property
    def is_prefill(self) -> bool:
        return self.disaggregation_mode == "prefill"

    @property
    def is_decode(self) -> bool:
        return self.disaggregation_mode == "decode"

    @property
    def role(self) -> str | None:
        """The model card's disaggregation role: None for an aggregated worker."""
        return None if self.disaggregation_mode == "agg" else self.disaggregation_mode

    def runtime_config(self) -> RuntimeConfig:
        """Runtime settings from the flags over the environment, in this worker's namespace."""
        base = RuntimeConfig.from_args(self.args) if self.args is not None else RuntimeConfig.from_env()
        return base.with_(namespace=self.namespace)


class WorkerConfigFields:
    """What every engine's config answers from its ``worker: WorkerArgs`` (mix into the dataclass)."""

    worker: WorkerArgs

    @property
    def args(self) -> argparse.Namespace | None:
        return self.worker.args

    @property
    def namespace(self) -> str:
        return self.worker.namespace

    @property
    def endpoint(self) -> str:
        """``dyn://<namespace>.<component>.<endpoint>`` this worker serves."""
        return str(self.worker.endpoint)

    @property
    def endpoint_id(self) -> EndpointId:
        return self.worker.endpoint

    @property
    def component(self) -> str:
        """``backend`` for aggregated/decode workers, ``prefill`` for prefill workers (by default)."""
        return self.worker.endpoint.component

    @property
    def disaggregation_mode(self) -> DisaggregationMode:
        return self.worker.disaggregation_mode

    @property
    def migration_limit(self) -> int:
        return self.worker.migration_limit

    @property
    def is_prefill(self) -> bool:
        return self.worker.is_prefill

    @property
    def is_decode(self) -> bool:
        return self.worker.is_decode


def add_worker_args(parser: argparse.ArgumentParser, *, kv_events_help: str = "") -> None:
    """Add the runtime flags and the ``dynamo worker`` group to an engine's parser."""
    add_runtime_args(parser)
    group = parser.add_argument_group("dynamo worker")
    group.add_argument(
        "--endpoint",
        default=None,
        help="dyn://<namespace>.<component>.<endpoint> to serve (default dyn://<namespace>.backend.generate; "
        "prefill workers dyn://<namespace>.prefill.generate)",
    )
    if "--disaggregation-mode" not in parser._option_string_actions:
        group.add_argument(
            "--disaggregation-mode",
            choices=sorted(MODE_ALIASES),
            default="agg",
            help="agg (aliases null, prefill_and_decode): prefill and decode here, and take a prefill "
            "worker's KV when the graph has prefill workers; prefill: answer prefill-only requests and keep "
            "the KV for a decode worker; decode: continue requests whose KV a prefill worker computed",
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
        help="publish KV cache events for KV-aware routing"
        + (f" ({kv_events_help})" if kv_events_help else " (default: on when the prefix cache is on)"),
    )
    group.add_argument(
        "--dyn-tool-call-parser",
        default=os.environ.get("DYN_TOOL_CALL_PARSER") or None,
        help="how the frontend turns this model's output into tool_calls: "
        + ", ".join(sorted(TOOL_CALL_PARSERS))
        + " (env DYN_TOOL_CALL_PARSER; default none: tool_choice auto answers text)",
    )
    group.add_argument(
        "--dyn-reasoning-parser",
        default=os.environ.get("DYN_REASONING_PARSER") or None,
        help="how the frontend splits this model's thinking into reasoning_content: "
        + ", ".join(sorted(REASONING_PARSERS))
        + " (env DYN_REASONING_PARSER)",
    )
    group.add_argument(
        "--custom-jinja-template",
        default=os.environ.get("DYN_CUSTOM_JINJA_TEMPLATE") or None,
        metavar="PATH",
        help="a Jinja chat template replacing the model's own, e.g. one that renders tools "
        "(env DYN_CUSTOM_JINJA_TEMPLATE)",
    )


def worker_args_from(args: argparse.Namespace) -> WorkerArgs:
    """``WorkerArgs`` from a namespace parsed with ``add_worker_args``; ``ValueError`` on bad values."""
    raw_mode = str(getattr(args, "disaggregation_mode", None) or "agg")
    mode = MODE_ALIASES.get(raw_mode)
    if mode is None:
        raise ValueError(f"--disaggregation-mode {raw_mode} is not supported by this worker")
    if args.migration_limit < 0:
        raise ValueError("--migration-limit must be >= 0")
    endpoint = worker_endpoint(args.endpoint, args.namespace, prefill=mode == "prefill")
    tool_parser = getattr(args, "dyn_tool_call_parser", None)
    if tool_parser is not None and tool_parser not in TOOL_CALL_PARSERS:
        raise ValueError(
            f"--dyn-tool-call-parser {tool_parser} is unknown; choose one of {', '.join(sorted(TOOL_CALL_PARSERS))}"
        )
    reasoning = getattr(args, "dyn_reasoning_parser", None)
    if reasoning is not None and reasoning not in REASONING_PARSERS:
        raise ValueError(
            f"--dyn-reasoning-parser {reasoning} is unknown; choose one of {', '.join(sorted(REASONING_PARSERS))}"
        )
    template = getattr(args, "custom_jinja_template", None)
    if template is not None and not os.path.isfile(template):
        raise ValueError(f"--custom-jinja-template {template}: no such file")
    disagg_timeouts = DisaggTimeouts.from_env()  # a bad value stops the worker before its engine loads
    return WorkerArgs(
        endpoint=endpoint,
        disaggregation_mode=mode,
        migration_limit=args.migration_limit,
        kv_events=args.kv_events,
        tool_call_parser=tool_parser,
        reasoning_parser=reasoning,
        custom_jinja_template=template,
        disagg_timeouts=disagg_timeouts,
        args=args,
    )


def parse_with(
    parser: argparse.ArgumentParser, build: Callable[[argparse.Namespace], ConfigT], argv: list[str] | None
) -> ConfigT:
    """Parse ``argv`` and ``build`` the engine's config from it; a ``ValueError`` from ``build``
    (bad values, contradictions) exits 2 with the parser's usage, like a bad flag."""
    args = parser.parse_args(argv)
    try:
        return build(args)
    except ValueError as exc:
        parser.error(str(exc))
