"""The engine base: what an inference engine implements to become a Dynamo worker.

Journey: request plane -> worker handler (``dynamo.worker.handlers``) -> **``WorkerEngine.generate``**
(``PreprocessedRequest`` in, ``EngineOutput`` chunks out) -> back. Everything around the engine --
runtime, registration, readiness, KV event relay, load reports, disaggregation, drain and exit
codes -- is ``dynamo.worker.run``'s; an engine is flags + this adapter + request/output mapping.

Lifecycle contract (``run_worker`` calls these in order):

1. ``parse_config(argv)`` (class method): the engine's flags plus ``add_worker_args``; returns a
   config with ``.worker`` (``WorkerArgs``), ``.model_path`` and ``.served_model_name``. No I/O.
2. ``__init__(config, context)``: build the adapter; ``context`` carries the instance id, the KV
   event sink (None when KV events are off) and the address peers reach this host at. No I/O.
3. ``await start()`` -> ``EngineFacts``: bring the engine up and report what the model card needs
   (context length, KV block size, capacity). Raise ``EngineStartError`` with one line for the user.
4. ``generate(request)``: stream outputs; closing the generator (client gone, cancel) must abort
   the request in the engine and free its KV. A request the engine rejects ends with one chunk
   ``finish_reason="error"``; an engine that died raises, so the caller may migrate the request.
   An embedding engine (``model_type = ("embeddings",)``) implements ``embed(request)`` instead:
   one ``EmbedOutput`` per input, a refused request ends with one ``EmbedOutput`` carrying ``error``.
5. ``load_metrics()``: the router's view of this engine's load, polled once a second.
   Optional: ``kv_block_source()``, for an engine that keeps its cached block set itself.
6. ``await stop()``: abort what is in flight and release everything; idempotent and safe after a
   partial or failed ``start``.
"""

from __future__ import annotations

import abc
import importlib.util
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Protocol

from dynamo.llm.endpoints import EmbedOutput, EmbedRequest
from dynamo.llm.kv_events import KvEventBatch, LoadMetrics
from dynamo.llm.model_card import EngineFeatures
from dynamo.llm.protocols import EngineOutput, PreprocessedRequest
from dynamo.worker.args import WorkerArgs

KvEventSink = Callable[[KvEventBatch], None]
# (worker_id, dp_rank) -> every block the engine caches: ``cleared`` then ``stored`` events
KvBlockSource = Callable[[int, int], KvEventBatch]


class EngineStartError(RuntimeError):
    """The engine could not start; the message is the one line the user sees."""


class EngineNotInstalledError(ImportError):
    """The engine's package is not installed (or does not import) in this environment."""


class EngineConfig(Protocol):
    """What ``run_worker`` reads from an engine's parsed configuration."""

    @property
    def worker(self) -> WorkerArgs: ...

    @property
    def model_path(self) -> str: ...

    @property
    def served_model_name(self) -> str | None: ...

    @property
    def kv_events(self) -> bool: ...


@dataclass(frozen=True)
class EngineContext:
    """What the worker hands an engine it builds."""

    worker_id: int  # this instance's id: labels KV events and load reports
    kv_event_sink: KvEventSink | None = None  # None: KV events are off; called on the loop, never blocks
    advertise_host: str = "127.0.0.1"  # where peers on other machines reach this worker
    metrics: Any = None  # the worker's prometheus CollectorRegistry (engine metrics join /metrics)


@dataclass(frozen=True)
class EngineFacts:
    """A started engine's facts, for its model deployment card."""

    kv_cache_block_size: int
    context_length: int | None = None
    total_kv_blocks: int | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    bootstrap_address: str | None = None  # SGLang prefill workers: host:port of the KV bootstrap server
    features: EngineFeatures = field(default_factory=EngineFeatures)  # card ``features``
    model_type: tuple[str, ...] | None = None  # card ``model_type``; None: from the model's files

    @classmethod
    def of(cls, engine: object) -> EngineFacts:
        """The facts an engine exposes as attributes of these names (``kv_cache_block_size``, ...)."""
        return cls(**{f.name: getattr(engine, f.name) for f in fields(cls) if hasattr(engine, f.name)})


class WorkerEngine(abc.ABC):
    """An inference engine behind a Dynamo worker (see the module docstring for the contract)."""

    name: ClassVar[str] = "engine"  # in log lines: "vLLM", "SGLang", ...
    worker_label: ClassVar[str] = "Worker"  # readiness line: "<worker_label> <id> initialized: ..."
    # Whether a decode worker of this engine can prefill a request itself when no prefill worker's
    # KV came with it (SGLang cannot: its decode workers find a prefill worker for every request).
    decode_can_prefill: ClassVar[bool] = True
    # The package the engine imports, and the one line a user without it sees (None: nothing to check).
    package: ClassVar[str | None] = None
    install_hint: ClassVar[str] = ""
    # Beyond plain sampling, what this engine honours (guided decoding, logit_bias, prompt
    # logprobs); the frontend refuses requests that need more (see ``EngineFeatures``).
    features: ClassVar[EngineFeatures] = EngineFeatures()
    # The endpoints this engine serves its model on (the card's ``model_type``): None for generation
    # (chat and completions, as the model's files allow); ``("embeddings",)`` for an engine that
    # implements ``embed`` and serves ``/v1/embeddings``.
    model_type: ClassVar[tuple[str, ...] | None] = None

    config: Any
    context: EngineContext

    def __init__(self, config: Any, context: EngineContext) -> None:
        """Keep the parsed config and the worker's context (no I/O; see the contract, step 2)."""
        self.config = config
        self.context = context

    @classmethod
    @abc.abstractmethod
    def parse_config(cls, argv: list[str] | None = None) -> EngineConfig:
        """Parse the command line (exits 2 on bad flags)."""

    @classmethod
    def check_installed(cls) -> None:
        """Raise ``EngineNotInstalledError`` when the engine cannot run here (by default: when
        ``package`` cannot be found; it is not imported)."""
        if cls.package is not None and importlib.util.find_spec(cls.package) is None:
            raise EngineNotInstalledError(cls.install_hint or f"{cls.package} is not installed")

    @abc.abstractmethod
    async def start(self) -> EngineFacts:
        """Bring the engine up; ``EngineStartError`` when it cannot."""

    @abc.abstractmethod
    def generate(self, request: PreprocessedRequest) -> AsyncGenerator[EngineOutput, None]:
        """Stream the request's outputs."""

    def embed(self, request: EmbedRequest) -> AsyncGenerator[EmbedOutput, None]:
        """Pool each input into one vector (embedding engines only; see ``model_type``)."""
        raise NotImplementedError(f"the {self.name} engine does not serve embeddings")

    @abc.abstractmethod
    def load_metrics(self) -> LoadMetrics:
        """This engine's load right now."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Release everything (idempotent, tolerant of a partial start)."""

    def kv_block_source(self) -> KvBlockSource | None:
        """Where a resyncing router's snapshot of this engine's cached blocks comes from, when the
        engine keeps that set itself (called on the loop, once its events are handed to the sink);
        None (the default): the KV event relay rebuilds the set from the engine's events."""
        return None

    @property
    def accepts_kv_transfer(self) -> bool:
        """Whether requests may arrive with a prefill worker's KV (``kv_transfer_params``) or a
        prefill worker to call: decode workers always; engines whose aggregated workers can take a
        transfer too (vLLM with its KV connector) say so."""
        return bool(self.config.worker.is_decode)
