"""Flags of ``python3 -m dynamo.frontend`` -> ``FrontendConfig`` (journey: **start-up**, before any
request). Every flag also has an environment variable; a bad value is a ``ValueError`` naming it."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypedDict

from dynamo.frontend.admission_pacer import DEFAULT_BUDGET as DEFAULT_ADMISSION_BUDGET
from dynamo.llm.disagg import DisaggTimeouts
from dynamo.runtime import RuntimeConfig, add_runtime_args
from dynamo.runtime.config import env_float, env_int
from dynamo.runtime.names import validate_name

ROUTER_MODES = ("round-robin", "random", "kv")
DISAGG_STRATEGIES = ("prefill_first", "decode_first")
PREPROCESS_NICE_DEFAULT = 10


def _milliseconds(name: str, environ: Mapping[str, str]) -> float | None:
    """Environment variable ``name``, a number of milliseconds, in seconds; ``None`` when unset (a
    clear error when it is not a finite number of at least 0)."""
    raw = environ.get(name, "").strip()
    if not raw:
        return None
    try:
        ms = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number of milliseconds, not {raw!r}") from None
    if not 0 <= ms < float("inf"):
        raise ValueError(f"{name} must be 0 or a positive number of milliseconds, not {raw!r}")
    return ms / 1000


def stall_threshold_from_env(environ: Mapping[str, str] = os.environ) -> float | None:
    """``DYN_LOOP_STALL_DUMP_MS`` (``dynamo.frontend.loop_stall``) in seconds; ``None`` when unset or 0."""
    return _milliseconds("DYN_LOOP_STALL_DUMP_MS", environ) or None


def budget_from_env(environ: Mapping[str, str] = os.environ) -> float:
    """``DYN_ADMISSION_BUDGET_MS`` (``dynamo.frontend.admission_pacer``) in seconds; 0: off."""
    seconds = _milliseconds("DYN_ADMISSION_BUDGET_MS", environ)
    return DEFAULT_ADMISSION_BUDGET if seconds is None else seconds


def preprocess_threads(environ: Mapping[str, str] = os.environ) -> int:
    """The pool's size: ``DYN_PREPROCESS_THREADS``, else the process's cores."""
    raw = environ.get("DYN_PREPROCESS_THREADS")
    if not raw:
        return max(1, len(os.sched_getaffinity(0)))
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"DYN_PREPROCESS_THREADS must be a positive integer, not {raw!r}")
    return int(raw)


def preprocess_nice(environ: Mapping[str, str] = os.environ) -> int:
    """How much lower the pool's threads run than the event loop: ``DYN_PREPROCESS_NICE`` (0-19)."""
    raw = environ.get("DYN_PREPROCESS_NICE", "").strip()
    if not raw:
        return PREPROCESS_NICE_DEFAULT
    if not raw.isdigit() or int(raw) > 19:
        raise ValueError(f"DYN_PREPROCESS_NICE must be an integer from 0 to 19, not {raw!r}")
    return int(raw)


def build_parser() -> argparse.ArgumentParser:
    """The frontend's argument parser."""
    p = argparse.ArgumentParser(
        prog="python3 -m dynamo.frontend",
        description="OpenAI-compatible HTTP frontend: discovers workers, preprocesses, routes, streams.",
    )
    p.add_argument(
        "--http-host",
        default=os.environ.get("DYN_HTTP_HOST", "0.0.0.0"),
        help="listen address (env DYN_HTTP_HOST)",
    )
    p.add_argument(
        "--http-port",
        type=int,
        default=env_int("DYN_HTTP_PORT", 8000),
        help="listen port (env DYN_HTTP_PORT, default 8000)",
    )
    p.add_argument(
        "--http-workers",
        type=int,
        default=env_int("DYN_HTTP_WORKERS", 1),
        help="frontend processes sharing the HTTP port (SO_REUSEPORT, Linux) when one process's core "
        "limits throughput; each runs its own model watcher and router (KV mode: add "
        "--router-replica-sync to share load predictions); /metrics on the shared port answers for all "
        "of them, each sample labelled http_worker (env DYN_HTTP_WORKERS, default 1)",
    )
    p.add_argument(
        "--router-mode",
        choices=ROUTER_MODES,
        default=os.environ.get("DYN_ROUTER_MODE", "round-robin"),
        help="how a worker is chosen (env DYN_ROUTER_MODE, default round-robin)",
    )
    p.add_argument(
        "--max-inflight-requests",
        type=int,
        default=env_int("DYN_MAX_INFLIGHT_REQUESTS", 2048),
        help="per model; beyond it requests get 429 with Retry-After (env DYN_MAX_INFLIGHT_REQUESTS)",
    )
    p.add_argument(
        "--max-body-size",
        type=int,
        default=env_int("DYN_MAX_BODY_SIZE", 32 * 1024 * 1024),
        help="largest request body in bytes; larger gets 413",
    )
    p.add_argument(
        "--request-plane-liveness-timeout",
        type=float,
        default=env_float("DYN_REQUEST_PLANE_LIVENESS_TIMEOUT", 5.0),
        help="seconds a worker connection with streams in flight may stay silent, a PING unanswered, "
        "before it is declared dead: its streams migrate (--migration-limit) or end with an error, and "
        "the worker gets no requests until it answers again. Keep it well under the discovery lease "
        "TTL; 0 turns the check off (env DYN_REQUEST_PLANE_LIVENESS_TIMEOUT, default 5)",
    )
    p.add_argument(
        "--migration-limit",
        type=int,
        default=None,
        help="times a broken stream is resumed on another worker (env DYN_MIGRATION_LIMIT; "
        "default: the model card's)",
    )
    lim = p.add_argument_group("HTTP connection limits")
    lim.add_argument(
        "--http-max-header-size",
        type=int,
        default=env_int("DYN_HTTP_MAX_HEADER_SIZE", 32 * 1024),
        help="largest request head (request line and headers) in bytes; larger gets 431 and the "
        "connection is closed (env DYN_HTTP_MAX_HEADER_SIZE, default 32 KiB)",
    )
    lim.add_argument(
        "--http-header-timeout",
        type=float,
        default=env_float("DYN_HTTP_HEADER_TIMEOUT", 30.0),
        help="seconds a client has to send a request's headers, from the connection's opening or the "
        "previous response; then 408 and the connection is closed (env DYN_HTTP_HEADER_TIMEOUT, default 30)",
    )
    lim.add_argument(
        "--http-body-timeout",
        type=float,
        default=env_float("DYN_HTTP_BODY_TIMEOUT", 60.0),
        help="seconds a client has to send a request's body after its headers; then 408 and the "
        "connection is closed (env DYN_HTTP_BODY_TIMEOUT, default 60)",
    )
    lim.add_argument(
        "--http-write-timeout",
        type=float,
        default=env_float("DYN_HTTP_WRITE_TIMEOUT", 60.0),
        help="seconds a client that has response data waiting may go without reading any; then the "
        "connection is dropped and the request cancelled (env DYN_HTTP_WRITE_TIMEOUT, default 60)",
    )
    kv = p.add_argument_group("KV router (--router-mode kv)")
    kv.add_argument(
        "--kv-overlap-score-weight",
        type=float,
        default=1.0,
        help="weight of prefill cost against decode load",
    )
    kv.add_argument(
        "--router-temperature",
        type=float,
        default=0.0,
        help="0 picks the best worker; >0 samples a softmax over costs",
    )
    kv.add_argument(
        "--no-kv-events",
        dest="use_kv_events",
        action="store_false",
        help="predict cache contents from routing decisions instead of KV events",
    )
    kv.add_argument(
        "--router-ttl",
        type=float,
        default=120.0,
        help="--no-kv-events: seconds a routed prefix is assumed cached",
    )
    kv.add_argument(
        "--active-decode-blocks-threshold",
        type=float,
        default=None,
        help="refuse a worker whose active KV blocks exceed this fraction of its total",
    )
    kv.add_argument(
        "--active-prefill-tokens-threshold",
        type=int,
        default=None,
        help="refuse a worker with more queued prefill tokens than this",
    )
    kv.add_argument(
        "--router-replica-sync",
        action="store_true",
        help="share active-load predictions with other frontends over the event plane",
    )
    kv.add_argument(
        "--kv-cache-block-size", type=int, default=None, help="override the block size from the model card"
    )
    r = p.add_argument_group("/v1/responses")
    r.add_argument(
        "--response-ttl",
        type=float,
        default=env_float("DYN_RESPONSE_TTL", 3600.0),
        help="seconds a stored response can be continued with previous_response_id or retrieved "
        "(env DYN_RESPONSE_TTL, default 3600)",
    )
    r.add_argument(
        "--max-stored-response-bytes",
        type=int,
        default=env_int("DYN_MAX_STORED_RESPONSE_BYTES", 1024 * 1024),
        help="largest stored response (its whole conversation, JSON); a larger one is answered with "
        '"store": false and cannot be continued (env DYN_MAX_STORED_RESPONSE_BYTES, default 1 MiB)',
    )
    d = p.add_argument_group("disaggregation")
    d.add_argument(
        "--disaggregation-strategy",
        choices=DISAGG_STRATEGIES,
        default=os.environ.get("DISAGGREGATION_STRATEGY", "prefill_first"),
        help="env DISAGGREGATION_STRATEGY (default prefill_first)",
    )
    d.add_argument(
        "--max-local-prefill-length",
        type=int,
        default=env_int("DYN_MAX_LOCAL_PREFILL_LENGTH", 256),
        help="uncached prompt tokens below which the decode worker prefills locally",
    )
    scope = p.add_argument_group("discovery scope")
    scope.add_argument(
        "--namespace",
        default=None,
        help="Dynamo namespaces whose workers this frontend discovers and serves, comma separated "
        "(env DYN_DISCOVERY_NAMESPACES; default every namespace); the first is also this frontend's own",
    )
    scope.add_argument(
        "--all-namespaces",
        action="store_true",
        help="discover every Dynamo namespace, even when DYN_DISCOVERY_NAMESPACES is set",
    )
    add_security_args(p)
    add_runtime_args(p, namespace=False)
    p.set_defaults(use_kv_events=True)
    return p


def parse_namespaces(text: str, source: str) -> tuple[str, ...]:
    """``"a, b"`` -> ``("a", "b")``; ``ValueError`` naming ``source`` for a bad or empty list."""
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    if not names:
        raise ValueError(f"{source} names no Dynamo namespace: {text!r}")
    try:
        return tuple(validate_name("namespace", n) for n in names)
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from None


def discovery_namespaces(args: argparse.Namespace) -> tuple[str, ...] | None:
    """The namespaces to discover: ``--namespace``, else ``DYN_DISCOVERY_NAMESPACES``; None is every one."""
    if args.all_namespaces:
        if args.namespace:
            raise ValueError("--namespace and --all-namespaces contradict each other")
        return None
    if args.namespace:
        return parse_namespaces(args.namespace, "--namespace")
    env = os.environ.get("DYN_DISCOVERY_NAMESPACES", "")
    return parse_namespaces(env, "DYN_DISCOVERY_NAMESPACES") if env.strip() else None


def add_security_args(p: argparse.ArgumentParser) -> None:
    """Client authentication and HTTPS (docs/security.md); the reference's names where it has them."""
    sec = p.add_argument_group("security (docs/security.md)")
    sec.add_argument(
        "--api-key",
        action="append",
        default=None,
        help="require 'Authorization: Bearer <key>' on /v1/* (401 otherwise); repeat to accept several "
        "keys. Prefer env DYN_API_KEY: a flag is visible to every local user in the process list",
    )
    sec.add_argument(
        "--tls-cert-path",
        default=os.environ.get("DYN_TLS_CERT_PATH") or None,
        help="serve HTTPS with this PEM certificate (chain) (env DYN_TLS_CERT_PATH; with --tls-key-path)",
    )
    sec.add_argument(
        "--tls-key-path",
        default=os.environ.get("DYN_TLS_KEY_PATH") or None,
        help="the certificate's PEM private key (env DYN_TLS_KEY_PATH)",
    )
    sec.add_argument(
        "--tls-client-ca-cert-path",
        default=os.environ.get("DYN_TLS_CLIENT_CA_CERT_PATH") or None,
        help="mutual TLS: refuse HTTPS clients without a certificate signed by this PEM CA "
        "(env DYN_TLS_CLIENT_CA_CERT_PATH; needs --tls-cert-path)",
    )


class SecuritySettings(TypedDict):
    api_keys: tuple[str, ...]
    tls_cert_path: str | None
    tls_key_path: str | None
    tls_client_ca_cert_path: str | None


def security_settings(args: argparse.Namespace) -> SecuritySettings:
    """The ``FrontendConfig`` fields of ``add_security_args``, checked; ``ValueError`` names the flag."""
    keys = tuple(args.api_key or ())
    if not keys and os.environ.get("DYN_API_KEY"):
        keys = (os.environ["DYN_API_KEY"],)
    if any(not k.strip() for k in keys):
        raise ValueError("--api-key must not be empty")
    cert, key, client_ca = args.tls_cert_path, args.tls_key_path, args.tls_client_ca_cert_path
    if bool(cert) != bool(key):
        raise ValueError("--tls-cert-path and --tls-key-path must be provided together")
    if client_ca and not cert:
        raise ValueError("--tls-client-ca-cert-path requires --tls-cert-path and --tls-key-path")
    files = {"--tls-cert-path": cert, "--tls-key-path": key, "--tls-client-ca-cert-path": client_ca}
    for flag, path in files.items():
        if path and not os.path.isfile(path):
            raise ValueError(f"{flag} {path!r} is not a readable file")
    if client_ca and args.http_workers > 1:
        # The processes fetch each other's /metrics over loopback HTTPS, with no client certificate.
        raise ValueError("--tls-client-ca-cert-path cannot be combined with --http-workers > 1")
    return SecuritySettings(
        api_keys=keys, tls_cert_path=cert, tls_key_path=key, tls_client_ca_cert_path=client_ca
    )


@dataclass(frozen=True)
class FrontendConfig:
    """Parsed frontend settings."""

    http_host: str
    http_port: int
    router_mode: str
    discovery_namespaces: tuple[str, ...] | None  # None: every namespace
    max_inflight_requests: int
    max_body_size: int
    migration_limit: int | None
    kv_overlap_score_weight: float
    router_temperature: float
    use_kv_events: bool
    router_ttl: float
    active_decode_blocks_threshold: float | None
    active_prefill_tokens_threshold: int | None
    router_replica_sync: bool
    kv_cache_block_size: int | None
    disaggregation_strategy: str
    max_local_prefill_length: int
    runtime: RuntimeConfig
    api_keys: tuple[str, ...] = ()  # empty: no authentication (dynamo.frontend.auth)
    tls_cert_path: str | None = None  # HTTPS when set
    tls_key_path: str | None = None
    tls_client_ca_cert_path: str | None = None  # mutual TLS
    http_workers: int = 1
    request_plane_liveness_timeout: float = 5.0  # seconds; 0: off
    response_ttl: float = 3600.0  # seconds
    max_stored_response_bytes: int = 1024 * 1024
    http_max_header_size: int = 32 * 1024  # bytes
    http_header_timeout: float = 30.0  # seconds
    http_body_timeout: float = 60.0  # seconds
    http_write_timeout: float = 60.0  # seconds
    loop_stall_threshold: float | None = None  # seconds (DYN_LOOP_STALL_DUMP_MS); None: off
    admission_budget: float = DEFAULT_ADMISSION_BUDGET  # seconds per loop turn (DYN_ADMISSION_BUDGET_MS)
    preprocess_threads: int = 1  # DYN_PREPROCESS_THREADS, else the cores
    preprocess_nice: int = PREPROCESS_NICE_DEFAULT  # DYN_PREPROCESS_NICE
    # DYN_PREFILL_TIMEOUT, DYN_KV_TRANSFER_TIMEOUT
    disagg_timeouts: DisaggTimeouts = field(default_factory=DisaggTimeouts)

    @property
    def namespace_filter(self) -> str | None:
        """The discovered namespaces for display (``a,b``); None when every namespace is."""
        return ",".join(self.discovery_namespaces) if self.discovery_namespaces else None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> FrontendConfig:
        if args.router_mode not in ROUTER_MODES:
            raise ValueError(f"unknown router mode {args.router_mode!r} (use {', '.join(ROUTER_MODES)})")
        if args.http_workers < 1:
            raise ValueError(f"--http-workers must be at least 1 (got {args.http_workers})")
        if not 0 < args.response_ttl < float("inf"):
            raise ValueError(f"--response-ttl must be a positive number of seconds (got {args.response_ttl})")
        if args.max_stored_response_bytes < 0:
            raise ValueError(
                f"--max-stored-response-bytes must not be negative (got {args.max_stored_response_bytes})"
            )
        if args.http_max_header_size < 1024:
            raise ValueError(
                f"--http-max-header-size must be at least 1024 (got {args.http_max_header_size})"
            )
        for flag in ("http_header_timeout", "http_body_timeout", "http_write_timeout"):
            if not 0 < getattr(args, flag) < float("inf"):
                raise ValueError(
                    f"--{flag.replace('_', '-')} must be a positive number of seconds (got {getattr(args, flag)})"
                )
        migration = args.migration_limit
        namespaces = discovery_namespaces(args)
        # The frontend's own namespace (event plane, logs): the first one it was told to serve.
        own_namespace = namespaces[0] if namespaces and args.namespace else None
        own = argparse.Namespace(**{**vars(args), "namespace": own_namespace})
        if migration is None:
            migration = env_int("DYN_MIGRATION_LIMIT")
        if not 0 <= args.request_plane_liveness_timeout < float("inf"):
            raise ValueError(
                "--request-plane-liveness-timeout must be a number of seconds, 0 for off "
                f"(got {args.request_plane_liveness_timeout})"
            )
        return cls(
            http_host=args.http_host,
            http_port=args.http_port,
            router_mode=args.router_mode,
            discovery_namespaces=namespaces,
            max_inflight_requests=args.max_inflight_requests,
            max_body_size=args.max_body_size,
            migration_limit=migration,
            kv_overlap_score_weight=args.kv_overlap_score_weight,
            router_temperature=args.router_temperature,
            use_kv_events=args.use_kv_events,
            router_ttl=args.router_ttl,
            active_decode_blocks_threshold=args.active_decode_blocks_threshold,
            active_prefill_tokens_threshold=args.active_prefill_tokens_threshold,
            router_replica_sync=args.router_replica_sync,
            kv_cache_block_size=args.kv_cache_block_size,
            disaggregation_strategy=args.disaggregation_strategy,
            max_local_prefill_length=args.max_local_prefill_length,
            **security_settings(args),
            # The frontend serves /health, /live and /metrics on its HTTP port: no status server.
            runtime=RuntimeConfig.from_args(own).with_(system_port=None),
            http_workers=args.http_workers,
            request_plane_liveness_timeout=args.request_plane_liveness_timeout,
            response_ttl=args.response_ttl,
            max_stored_response_bytes=args.max_stored_response_bytes,
            http_max_header_size=args.http_max_header_size,
            http_header_timeout=args.http_header_timeout,
            http_body_timeout=args.http_body_timeout,
            http_write_timeout=args.http_write_timeout,
            loop_stall_threshold=stall_threshold_from_env(),
            admission_budget=budget_from_env(),
            preprocess_threads=preprocess_threads(),
            preprocess_nice=preprocess_nice(),
            disagg_timeouts=DisaggTimeouts.from_env(),
        )
