"""TLS contexts and credentials from the environment, for every connection a dynamo process makes.

Journey: **start-up**. Read once when a connection is first made: the request plane's server (a
worker accepting ``REQUEST`` frames) and client (the frontend dialling workers), the etcd client
(discovery) and the NATS client (event plane). Unset variables mean plaintext, as before; a variable
that names a missing or unreadable file is a ``ValueError`` naming the variable. The names are the
reference's (NVIDIA Dynamo), listed in docs/security.md:

- request plane, server: ``DYN_TCP_TLS_CERT_PATH`` + ``DYN_TCP_TLS_KEY_PATH`` (TLS on), and
  ``DYN_TCP_TLS_CLIENT_CA_CERT_PATH`` (mutual TLS: a caller without a certificate signed by it is
  refused at the handshake);
- request plane, client: ``DYN_TCP_TLS_CA_CERT_PATH`` (TLS on, server verified) or
  ``DYN_TCP_TLS_INSECURE`` (TLS on, not verified: development only), ``DYN_TCP_TLS_SERVER_NAME``,
  ``DYN_TCP_TLS_CLIENT_CERT_PATH`` + ``DYN_TCP_TLS_CLIENT_KEY_PATH`` (mutual TLS);
  ``DYN_TCP_TLS_HANDSHAKE_TIMEOUT_SECS`` (both sides, default 3);
- etcd: ``ETCD_AUTH_USERNAME`` + ``ETCD_AUTH_PASSWORD``, ``ETCD_AUTH_CA`` (TLS on),
  ``ETCD_AUTH_CLIENT_CERT`` + ``ETCD_AUTH_CLIENT_KEY``; an ``https://`` endpoint also turns TLS on;
- NATS: ``NATS_AUTH_USERNAME`` + ``NATS_AUTH_PASSWORD``, ``NATS_AUTH_TOKEN``, ``NATS_AUTH_NKEY``
  (a seed) or ``NATS_AUTH_CREDENTIALS_FILE`` (these two need the ``nkeys`` package);
  ``NATS_TLS_CA_CERT_PATH`` (TLS on), ``NATS_TLS_CLIENT_CERT_PATH`` + ``NATS_TLS_CLIENT_KEY_PATH``,
  ``NATS_TLS_INSECURE``; a ``tls://`` server URL also turns TLS on.
"""

from __future__ import annotations

import importlib.util
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_HANDSHAKE_TIMEOUT = 3.0  # seconds; DYN_TCP_TLS_HANDSHAKE_TIMEOUT_SECS

_TRUE = ("1", "true", "yes", "on")


def _path(env: Mapping[str, str], name: str) -> str | None:
    """The file an env variable names (None when unset); ``ValueError`` when it is not a file."""
    value = env.get(name, "").strip()
    if not value:
        return None
    if not Path(value).is_file():
        raise ValueError(f"{name}={value!r} is not a readable file")
    return value


def _truthy(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "").strip().lower() in _TRUE


def _pair(env: Mapping[str, str], cert_var: str, key_var: str) -> tuple[str, str] | None:
    cert, key = _path(env, cert_var), _path(env, key_var)
    if bool(cert) != bool(key):
        raise ValueError(f"{cert_var} and {key_var} must be set together")
    return (cert, key) if cert and key else None


def server_context(cert: str, key: str, client_ca: str | None = None) -> ssl.SSLContext:
    """A server context presenting ``cert``; with ``client_ca`` every client must present a
    certificate signed by it (mutual TLS)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    if client_ca:
        ctx.load_verify_locations(cafile=client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(
    ca: str | None, client_pair: tuple[str, str] | None = None, insecure: bool = False
) -> ssl.SSLContext:
    """A client context verifying the server against ``ca`` (the system's roots when None), or not
    at all when ``insecure``; ``client_pair`` is presented for mutual TLS."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if client_pair:
        ctx.load_cert_chain(*client_pair)
    return ctx


# --- request plane ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ClientTLS:
    """How a request-plane caller opens TLS: the context, the name to verify (None: the host it
    dials), the handshake bound."""

    context: ssl.SSLContext
    server_name: str | None = None
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT


def handshake_timeout(env: Mapping[str, str] | None = None) -> float:
    env = os.environ if env is None else env
    raw = env.get("DYN_TCP_TLS_HANDSHAKE_TIMEOUT_SECS", "").strip()
    try:
        value = float(raw) if raw else DEFAULT_HANDSHAKE_TIMEOUT
    except ValueError:
        raise ValueError(f"DYN_TCP_TLS_HANDSHAKE_TIMEOUT_SECS must be a number, got {raw!r}") from None
    if value <= 0:
        raise ValueError(f"DYN_TCP_TLS_HANDSHAKE_TIMEOUT_SECS must be positive, got {raw!r}")
    return value


def request_plane_server_context(env: Mapping[str, str] | None = None) -> ssl.SSLContext | None:
    """The request-plane server's context, or None (plaintext) when no certificate is set."""
    env = os.environ if env is None else env
    pair = _pair(env, "DYN_TCP_TLS_CERT_PATH", "DYN_TCP_TLS_KEY_PATH")
    client_ca = _path(env, "DYN_TCP_TLS_CLIENT_CA_CERT_PATH")
    if pair is None:
        if client_ca:
            raise ValueError(
                "DYN_TCP_TLS_CLIENT_CA_CERT_PATH needs DYN_TCP_TLS_CERT_PATH and DYN_TCP_TLS_KEY_PATH"
            )
        return None
    return server_context(*pair, client_ca=client_ca)


def request_plane_client_tls(env: Mapping[str, str] | None = None) -> ClientTLS | None:
    """How the request-plane client dials with TLS, or None (plaintext): TLS is on when a CA is
    set or ``DYN_TCP_TLS_INSECURE`` is true."""
    env = os.environ if env is None else env
    ca = _path(env, "DYN_TCP_TLS_CA_CERT_PATH")
    insecure = _truthy(env, "DYN_TCP_TLS_INSECURE")
    pair = _pair(env, "DYN_TCP_TLS_CLIENT_CERT_PATH", "DYN_TCP_TLS_CLIENT_KEY_PATH")
    if not ca and not insecure:
        if pair:
            raise ValueError(
                "DYN_TCP_TLS_CLIENT_CERT_PATH needs DYN_TCP_TLS_CA_CERT_PATH (or DYN_TCP_TLS_INSECURE)"
            )
        return None
    return ClientTLS(
        context=client_context(ca, pair, insecure=insecure and not ca),
        server_name=env.get("DYN_TCP_TLS_SERVER_NAME", "").strip() or None,
        handshake_timeout=handshake_timeout(env),
    )


# --- etcd -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EtcdCredentials:
    """What the etcd client presents: a user (password authentication) and TLS files (PEM bytes,
    as gRPC takes them)."""

    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca: bytes | None = None
    client_cert: bytes | None = None
    client_key: bytes | None = None


def etcd_credentials(env: Mapping[str, str] | None = None, force_tls: bool = False) -> EtcdCredentials:
    """etcd's credentials from ``ETCD_AUTH_*``; TLS is on with a CA or a client certificate set,
    or when ``force_tls`` (an ``https://`` endpoint; the system's roots verify it)."""
    env = os.environ if env is None else env
    user = env.get("ETCD_AUTH_USERNAME") or None
    password = env.get("ETCD_AUTH_PASSWORD") or None
    if bool(user) != bool(password):
        raise ValueError("ETCD_AUTH_USERNAME and ETCD_AUTH_PASSWORD must be set together")
    ca = _path(env, "ETCD_AUTH_CA")
    pair = _pair(env, "ETCD_AUTH_CLIENT_CERT", "ETCD_AUTH_CLIENT_KEY")
    return EtcdCredentials(
        username=user,
        password=password,
        tls=force_tls or bool(ca) or bool(pair),
        ca=Path(ca).read_bytes() if ca else None,
        client_cert=Path(pair[0]).read_bytes() if pair else None,
        client_key=Path(pair[1]).read_bytes() if pair else None,
    )


# --- NATS -------------------------------------------------------------------------------------


def nats_options(server: str, env: Mapping[str, str] | None = None) -> dict[str, object]:
    """Keyword arguments for ``nats.connect``: credentials from ``NATS_AUTH_*`` (the first kind
    set, in the reference's order: user/password, token, nkey seed, credentials file) and an ``ssl.SSLContext``
    when ``NATS_TLS_*`` is set or the URL is ``tls://``."""
    env = os.environ if env is None else env
    opts: dict[str, object] = {}
    user, password = env.get("NATS_AUTH_USERNAME") or None, env.get("NATS_AUTH_PASSWORD") or None
    if bool(user) != bool(password):
        raise ValueError("NATS_AUTH_USERNAME and NATS_AUTH_PASSWORD must be set together")
    creds = _path(env, "NATS_AUTH_CREDENTIALS_FILE")
    for name in ("NATS_AUTH_NKEY", "NATS_AUTH_CREDENTIALS_FILE"):
        if env.get(name) and importlib.util.find_spec("nkeys") is None:
            raise ValueError(f"{name} needs the 'nkeys' package (pip install nkeys)")
    if user:
        opts.update(user=user, password=password)
    elif env.get("NATS_AUTH_TOKEN"):
        opts["token"] = env["NATS_AUTH_TOKEN"]
    elif env.get("NATS_AUTH_NKEY"):
        opts["nkeys_seed_str"] = env["NATS_AUTH_NKEY"]
    elif creds:
        opts["user_credentials"] = creds
    ca = _path(env, "NATS_TLS_CA_CERT_PATH")
    pair = _pair(env, "NATS_TLS_CLIENT_CERT_PATH", "NATS_TLS_CLIENT_KEY_PATH")
    insecure = _truthy(env, "NATS_TLS_INSECURE")
    if ca or pair or insecure or server.startswith("tls://"):
        opts["tls"] = client_context(ca, pair, insecure=insecure)
    return opts
