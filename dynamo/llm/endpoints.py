"""Names of the endpoints an engine worker serves: the contract between workers and their callers.

Journey: a frontend or router resolves a worker's ``EndpointId`` (discovery) -> **these names**
-> request plane handler on the worker: ``generate`` (``PreprocessedRequest`` in, ``EngineOutput``
chunks out), ``/embed`` (``EmbedRequest`` in, one ``EmbedOutput`` per input out; workers whose card
lists the ``embeddings`` model type), ``/files`` (the model card's files, for a frontend on another
machine), ``/kv_replay`` (KV events a router missed) and ``/kv_snapshot`` (a worker's cached block
set, for a full resync).
"""

from __future__ import annotations

from typing import Literal

import msgspec

from dynamo.llm.kv_events import KvEvent
from dynamo.runtime import EndpointId
from dynamo.runtime.names import default_namespace
from dynamo.runtime.runtime import handler_name

BACKEND_COMPONENT = "backend"
PREFILL_COMPONENT = "prefill"
GENERATE_ENDPOINT = "generate"
FILES_SUFFIX = "/files"
EMBED_SUFFIX = "/embed"
KV_REPLAY_SUFFIX = "/kv_replay"
KV_SNAPSHOT_SUFFIX = "/kv_snapshot"


def worker_endpoint(endpoint: str | None, namespace: str | None, *, prefill: bool = False) -> EndpointId:
    """The endpoint an engine worker serves: ``--endpoint`` as given, else
    ``dyn://<namespace>.backend.generate`` (prefill workers: ``dyn://<namespace>.prefill.generate``);
    the namespace defaults to ``DYN_NAMESPACE``. ``ValueError`` when ``--namespace`` contradicts
    ``--endpoint``."""
    if endpoint:
        parsed = EndpointId.parse(endpoint, namespace or default_namespace())
        if namespace and namespace != parsed.namespace:
            raise ValueError(f"--namespace {namespace} contradicts --endpoint {endpoint}")
        return parsed
    component = PREFILL_COMPONENT if prefill else BACKEND_COMPONENT
    return EndpointId(namespace or default_namespace(), component, GENERATE_ENDPOINT)


def files_endpoint_name(endpoint: EndpointId) -> str:
    """Request-plane name of the handler that serves a card's files."""
    return handler_name(endpoint) + FILES_SUFFIX


def embed_endpoint_name(endpoint: EndpointId) -> str:
    """Request-plane name of the handler that embeds token sequences (embedding workers)."""
    return handler_name(endpoint) + EMBED_SUFFIX


def kv_replay_endpoint_name(endpoint: EndpointId) -> str:
    """Request-plane name of the handler that replays recent KV events (router resync)."""
    return handler_name(endpoint) + KV_REPLAY_SUFFIX


def kv_snapshot_endpoint_name(endpoint: EndpointId) -> str:
    """Request-plane name of the handler that sends the cached block set (router full resync)."""
    return handler_name(endpoint) + KV_SNAPSHOT_SUFFIX


class FilesRequest(msgspec.Struct, omit_defaults=True):
    """``/files``: the card files wanted (None: all of them)."""

    names: list[str] | None = None


class KvReplayRequest(msgspec.Struct, omit_defaults=True):
    """``/kv_replay``: the events after ``since_event_id`` of data-parallel rank ``dp_rank``."""

    since_event_id: int = -1
    dp_rank: int = 0


class KvReplayReply(msgspec.Struct):
    """The events asked for; None when the worker no longer holds all of them (take a snapshot)."""

    events: list[KvEvent] | None = None


class KvSnapshotRequest(msgspec.Struct, omit_defaults=True):
    """``/kv_snapshot``: the cached block set of data-parallel rank ``dp_rank``."""

    dp_rank: int = 0


class KvSnapshotReply(msgspec.Struct):
    """An encoded ``KvEventBatch`` (``cleared`` then every cached block); None: no KV events here."""

    batch: bytes | None = None


class EmbedRequest(msgspec.Struct, omit_defaults=True):
    """``/embed``: pool each of ``inputs`` (token ids, tokenized by the frontend) into one vector.

    ``dimensions``: the client's ``dimensions`` (a Matryoshka model's shorter vectors); the engine
    refuses it when its model cannot.
    """

    request_id: str
    inputs: list[list[int]]
    dimensions: int | None = None


class EmbedOutput(msgspec.Struct, omit_defaults=True):
    """One input's vector, in any order (``index`` into ``EmbedRequest.inputs``), or the error that
    ends the stream: ``error_kind`` ``invalid`` (the engine refused the request: a 400 naming
    ``error_param``, ``input`` meaning input number ``index``) or ``engine`` (it failed: a 500)."""

    index: int = 0
    embedding: bytes = b""  # float32, little-endian (the bytes of OpenAI's base64 encoding)
    prompt_tokens: int = 0
    error: str | None = None
    error_kind: Literal["invalid", "engine"] | None = None
    error_param: str | None = None
