"""Runtime settings shared by every dynamo process, from flags and environment variables.

| setting | flag | env | default |
|---|---|---|---|
| Dynamo namespace | ``--namespace`` | ``DYN_NAMESPACE`` | ``dynamo`` |
| discovery backend | ``--discovery-backend`` | ``DYN_DISCOVERY_BACKEND`` | ``etcd`` if ``ETCD_ENDPOINTS`` is set, else ``file`` |
| etcd endpoints | | ``ETCD_ENDPOINTS`` (comma separated) | ``http://localhost:2379`` |
| wait for etcd at start-up (s) | | ``DYN_ETCD_CONNECT_WAIT`` | ``60`` |
| file discovery dir | | ``DYN_FILE_DISCOVERY_DIR`` | ``~/.cache/dynamo/discovery`` |
| lease / heartbeat TTL (s) | | ``DYN_DISCOVERY_TTL`` | ``10`` |
| request plane | ``--request-plane`` | ``DYN_REQUEST_PLANE`` | ``tcp`` |
| TCP listen host / port | | ``DYN_TCP_RPC_HOST`` / ``DYN_TCP_RPC_PORT`` | the advertised host (``0.0.0.0``: every interface) / OS-assigned |
| advertised host | | ``DYN_ADVERTISE_HOST``, else ``POD_IP`` | the host's primary IP |
| event plane | ``--event-plane`` | ``DYN_EVENT_PLANE`` | ``nats`` if ``NATS_SERVER`` is set, else ``zmq`` |
| NATS server | | ``NATS_SERVER`` | ``nats://localhost:4222`` |
| status server port | | ``DYN_SYSTEM_PORT`` | off |
| drain timeout (s) | | ``DYN_DRAIN_TIMEOUT`` | ``30`` |
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import socket
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import overload

from dynamo.runtime.names import default_namespace, validate_name

log = logging.getLogger(__name__)

DISCOVERY_BACKENDS = ("etcd", "file", "mem")
REQUEST_PLANES = ("tcp",)
EVENT_PLANES = ("nats", "zmq")


def env_float(name: str, default: float) -> float:
    """Environment variable ``name`` as a number (``default`` when unset or empty); a value that is
    not a number is a ``ValueError`` naming the variable."""
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be a number, got {raw!r}") from exc


@overload
def env_int(name: str) -> int | None: ...
@overload
def env_int(name: str, default: int) -> int: ...
def env_int(name: str, default: int | None = None) -> int | None:
    """Environment variable ``name`` as an integer (``default`` when unset or empty); a value that
    is not an integer is a ``ValueError`` naming the variable."""
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from exc


def primary_host_ip() -> str:
    """Best guess of an address other hosts can reach us on, without sending any packet."""
    try:
        addr = socket.gethostbyname(socket.gethostname())
        if addr and not addr.startswith("127."):
            return addr
    except OSError:
        pass
    return "127.0.0.1"


def default_file_discovery_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dynamo" / "discovery"


@dataclass(frozen=True)
class RuntimeConfig:
    """Everything the runtime needs to join a deployment."""

    namespace: str = field(default_factory=default_namespace)
    discovery_backend: str = "file"
    etcd_endpoints: tuple[str, ...] = ("http://localhost:2379",)
    file_discovery_dir: Path = field(default_factory=default_file_discovery_dir)
    discovery_ttl: float = 10.0
    request_plane: str = "tcp"
    tcp_host: str = ""  # "": the advertised host (``request_plane_bind_host``)
    tcp_port: int = 0
    advertise_host: str | None = None
    event_plane: str = "zmq"
    nats_server: str = "nats://localhost:4222"
    system_port: int | None = None
    drain_timeout: float = 30.0

    def __post_init__(self) -> None:
        validate_name("namespace", self.namespace)
        if self.discovery_backend not in DISCOVERY_BACKENDS:
            raise ValueError(
                f"unknown discovery backend {self.discovery_backend!r} (use {', '.join(DISCOVERY_BACKENDS)})"
            )
        if self.request_plane not in REQUEST_PLANES:
            raise ValueError(
                f"unknown request plane {self.request_plane!r} (use {', '.join(REQUEST_PLANES)})"
            )
        if self.event_plane not in EVENT_PLANES:
            raise ValueError(f"unknown event plane {self.event_plane!r} (use {', '.join(EVENT_PLANES)})")
        if self.discovery_ttl <= 0:
            raise ValueError("DYN_DISCOVERY_TTL must be positive")

    @classmethod
    def from_env(cls, **overrides: object) -> RuntimeConfig:
        """Settings from the environment; keyword arguments that are not None win."""
        etcd_env = os.environ.get("ETCD_ENDPOINTS", "")
        nats_env = os.environ.get("NATS_SERVER", "")
        values: dict[str, object] = {
            "namespace": default_namespace(),
            "discovery_backend": os.environ.get("DYN_DISCOVERY_BACKEND") or ("etcd" if etcd_env else "file"),
            "etcd_endpoints": tuple(e.strip() for e in etcd_env.split(",") if e.strip())
            or ("http://localhost:2379",),
            "file_discovery_dir": Path(os.environ["DYN_FILE_DISCOVERY_DIR"])
            if os.environ.get("DYN_FILE_DISCOVERY_DIR")
            else default_file_discovery_dir(),
            "discovery_ttl": env_float("DYN_DISCOVERY_TTL", 10.0),
            "request_plane": os.environ.get("DYN_REQUEST_PLANE") or "tcp",
            "tcp_host": os.environ.get("DYN_TCP_RPC_HOST") or "",
            "tcp_port": env_int("DYN_TCP_RPC_PORT") or 0,
            "advertise_host": os.environ.get("DYN_ADVERTISE_HOST") or os.environ.get("POD_IP") or None,
            "event_plane": os.environ.get("DYN_EVENT_PLANE") or ("nats" if nats_env else "zmq"),
            "nats_server": nats_env or "nats://localhost:4222",
            "system_port": env_int("DYN_SYSTEM_PORT"),
            "drain_timeout": env_float("DYN_DRAIN_TIMEOUT", 30.0),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]

    @classmethod
    def from_args(cls, args: argparse.Namespace, **overrides: object) -> RuntimeConfig:
        """Settings from parsed ``add_runtime_args`` flags over the environment."""
        return cls.from_env(
            namespace=getattr(args, "namespace", None),
            discovery_backend=getattr(args, "discovery_backend", None),
            request_plane=getattr(args, "request_plane", None),
            event_plane=getattr(args, "event_plane", None),
            **overrides,
        )

    def with_(self, **changes: object) -> RuntimeConfig:
        """A copy with some settings changed."""
        return replace(self, **changes)  # type: ignore[arg-type]

    def advertised_host(self) -> str:
        """The host name put in instance records for callers to connect to."""
        if self.advertise_host:
            return self.advertise_host
        if self.tcp_host not in ("0.0.0.0", "::", ""):
            return self.tcp_host
        return primary_host_ip()

    def request_plane_bind_host(self) -> str:
        """Where the request-plane server listens: ``DYN_TCP_RPC_HOST`` when set (``0.0.0.0`` for
        every interface), else only the advertised address, so that a worker is not reachable on
        interfaces it does not advertise. A name is resolved once, at start-up; an advertised
        address that is not this host's (behind NAT) falls back to every interface, with a warning."""
        if self.tcp_host:
            return self.tcp_host
        return local_address_of(self.advertised_host())


def local_address_of(host: str) -> str:
    """``host`` as an address this process can bind, else ``0.0.0.0`` (logged)."""
    try:
        addr = str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        try:
            addr = str(socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)[0][4][0])
        except OSError as exc:
            log.warning("cannot resolve the advertised host %r (%s); listening on every interface", host, exc)
            return "0.0.0.0"
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((addr, 0))
    except OSError as exc:
        log.warning(
            "the advertised address %s is not this host's (%s); listening on every interface "
            "(set DYN_TCP_RPC_HOST to choose)",
            addr,
            exc,
        )
        return "0.0.0.0"
    return addr


def add_runtime_args(parser: argparse.ArgumentParser, *, namespace: bool = True) -> None:
    """Add the runtime flags every dynamo process accepts (defaults come from the environment)."""
    group = parser.add_argument_group("dynamo runtime")
    if namespace:
        group.add_argument(
            "--namespace", default=None, help="Dynamo namespace (env DYN_NAMESPACE, default 'dynamo')"
        )
    group.add_argument(
        "--discovery-backend",
        choices=DISCOVERY_BACKENDS,
        default=None,
        help="where instances and model cards are registered (env DYN_DISCOVERY_BACKEND; "
        "default etcd when ETCD_ENDPOINTS is set, else file)",
    )
    group.add_argument(
        "--request-plane",
        choices=REQUEST_PLANES,
        default=None,
        help="request transport (env DYN_REQUEST_PLANE)",
    )
    group.add_argument(
        "--event-plane",
        choices=EVENT_PLANES,
        default=None,
        help="KV event / load metric transport (env DYN_EVENT_PLANE; default nats when NATS_SERVER is set, else zmq)",
    )
