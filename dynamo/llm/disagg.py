"""Disaggregated prefill/decode, the parts the frontend and every decode worker share.

Journey (prefill_first): route -> **remote prefill** (``run_remote_prefill``: a prefill worker
computes the prompt's KV and one token, and answers with ``kv_transfer_params``) -> route ->
request plane -> decode worker (``dynamo.worker.decode``: the engine pulls the KV and continues)
-> tokens back. decode_first: the frontend sends the request to a decode worker with
``remote_prefill`` naming the prefill worker it chose (``decode_first_request``), and the decode
worker runs the remote prefill itself.

A decode worker never lets a disaggregation failure fail the request: when the prefill worker is
unreachable, errs or is slower than ``DYN_PREFILL_TIMEOUT``, when the engine ends the request with
an error before its first token (vLLM after a failed NIXL handshake or read), or when no first
token comes within ``DYN_KV_TRANSFER_TIMEOUT`` of a transfer starting, the request is prefilled
locally instead. The reason is logged with the request id, counted in
``dynamo_worker_disagg_fallback{reason}`` and reported to the frontend on the first output chunk
(``EngineOutput.disagg_fallback``), which counts it in
``dynamo_frontend_disagg_fallback``.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from typing import Any

import msgspec

from dynamo.llm.protocols import FINISH_ERROR, PreprocessedRequest, RemotePrefill
from dynamo.runtime import InstanceUnreachable, RemoteError, StreamBroken
from dynamo.runtime.config import env_float
from dynamo.runtime.request_plane import RequestPlaneClient

# Fallback reasons (metric label values).
PREFILL_UNREACHABLE = "prefill_unreachable"
PREFILL_FAILED = "prefill_failed"
PREFILL_TIMEOUT = "prefill_timeout"
NO_TRANSFER_PARAMS = "no_transfer_params"
TRANSFER_FAILED = "transfer_failed"
TRANSFER_TIMEOUT = "transfer_timeout"

DEFAULT_PREFILL_TIMEOUT_S = 60.0
DEFAULT_TRANSFER_TIMEOUT_S = 30.0


def _env_seconds(name: str, default: float) -> float:
    """A positive number of seconds from ``name`` (``default`` when unset); anything else is a
    ``ValueError`` naming the variable, so a mistyped timeout stops the process at start."""
    value = env_float(name, default)
    if not value > 0:
        raise ValueError(f"{name} must be a positive number of seconds, got {os.environ.get(name)!r}")
    return value


@dataclass(frozen=True, slots=True)
class DisaggTimeouts:
    """How long a disaggregated request waits before it is prefilled locally instead.

    ``prefill_s``: a remote prefill, from sending it to its last chunk (``DYN_PREFILL_TIMEOUT``,
    default 60 s). ``transfer_s``: a decode request carrying ``kv_transfer_params``, from handing
    it to the engine to its first token: the KV pull plus one step (``DYN_KV_TRANSFER_TIMEOUT``,
    default 30 s; vLLM itself gives up a NIXL handshake after ~5 s).
    """

    prefill_s: float = DEFAULT_PREFILL_TIMEOUT_S
    transfer_s: float = DEFAULT_TRANSFER_TIMEOUT_S

    @classmethod
    def from_env(cls) -> DisaggTimeouts:
        return cls(
            prefill_s=_env_seconds("DYN_PREFILL_TIMEOUT", DEFAULT_PREFILL_TIMEOUT_S),
            transfer_s=_env_seconds("DYN_KV_TRANSFER_TIMEOUT", DEFAULT_TRANSFER_TIMEOUT_S),
        )


class PrefillFailed(Exception):
    """A remote prefill gave no usable ``kv_transfer_params``; ``reason`` is a fallback reason."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class PrefillResult:
    """What a prefill worker handed back for the decode side."""

    kv_transfer_params: dict[str, Any]
    cached_tokens: int  # prompt tokens the prefill worker found in its prefix cache
    seconds: float


def prefill_request(request: PreprocessedRequest) -> PreprocessedRequest:
    """The prefill-only form of ``request``: one output token, KV kept for a decode worker."""
    return msgspec.structs.replace(
        request,
        prefill_only=True,
        kv_transfer_params=None,
        remote_prefill=None,
        stop=msgspec.structs.replace(request.stop, max_tokens=1, min_tokens=0),
    )


async def run_remote_prefill(
    client: RequestPlaneClient,
    address: str,
    handler: str,
    request: PreprocessedRequest,
    timeout_s: float,
) -> PrefillResult:
    """Run ``request`` as a prefill on the worker at ``address``; raises ``PrefillFailed``.

    The stream is closed on every exit, so a prefill abandoned after a timeout is cancelled on the
    prefill worker (vLLM aborts it and frees its blocks).
    """
    t0 = time.monotonic()
    rid = request.request_id
    stream = None
    params: dict[str, Any] | None = None
    cached = 0
    try:
        async with asyncio.timeout(timeout_s):
            stream = await client.stream(address, handler, prefill_request(request), {"request_id": rid})
            async for item in stream:
                if item.get("cached_tokens"):
                    cached = int(item["cached_tokens"])
                if item.get("finish_reason") == FINISH_ERROR:
                    raise PrefillFailed(PREFILL_FAILED, f"the prefill worker answered: {item.get('error')}")
                if item.get("kv_transfer_params"):
                    params = dict(item["kv_transfer_params"])
                if item.get("finish_reason") is not None:
                    break
    except TimeoutError:
        raise PrefillFailed(PREFILL_TIMEOUT, f"no prefill result within {timeout_s:g} s") from None
    except InstanceUnreachable as exc:
        raise PrefillFailed(PREFILL_UNREACHABLE, str(exc)) from exc
    except (StreamBroken, RemoteError) as exc:
        raise PrefillFailed(PREFILL_FAILED, f"{type(exc).__name__}: {exc}") from exc
    finally:
        if stream is not None and not stream.finished:
            await stream.aclose()
    if not params:
        raise PrefillFailed(NO_TRANSFER_PARAMS, "the prefill worker returned no kv_transfer_params")
    return PrefillResult(params, cached, time.monotonic() - t0)


def fallback_reason(item: dict[str, Any]) -> str | None:
    """The local-prefill reason a decode worker reported on an output chunk, if any."""
    reason = item.get("disagg_fallback")
    return str(reason) if reason else None


def decode_first_request(request: PreprocessedRequest, address: str, handler: str) -> PreprocessedRequest:
    """``request`` for a decode worker that is to call the prefill worker at ``address`` itself."""
    return msgspec.structs.replace(
        request, kv_transfer_params=None, remote_prefill=RemotePrefill(address=address, handler=handler)
    )
