"""Discovery and event plane against a real etcd and a real nats-server that demand TLS (with
client certificates) and a password: our clients get in with ``ETCD_AUTH_*`` / ``NATS_AUTH_*`` /
``NATS_TLS_*`` and are refused without them; after an etcd restart (its tokens forgotten) our
client logs in again by itself."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import ssl
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from dynamo.runtime.discovery.etcd import EtcdDiscovery
from dynamo.runtime.event_plane.nats import NatsEventPlane
from tests.security.conftest import Certs
from tests.support.procs import ManagedProcess, free_port, wait_until
from tests.support.servers import etcd_command, find_binary

pytestmark = pytest.mark.timeout(90)
PASSWORD = "etcd-pw-41d2"


def client_ssl(certs: Certs) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(certs.ca))
    ctx.load_cert_chain(str(certs.client_cert), str(certs.client_key))
    return ctx


class TlsEtcd:
    """etcd serving clients over TLS only, client certificates required, restartable on its data."""

    def __init__(self, log_dir: Path, data_dir: Path, certs: Certs) -> None:
        binary = find_binary("etcd")
        if binary is None:
            pytest.skip("etcd is not installed")
        self.binary, self.log_dir, self.data_dir, self.certs = binary, log_dir, data_dir, certs
        self.port, self.peer_port = free_port(), free_port()
        self.proc: ManagedProcess | None = None
        self.starts = 0

    @property
    def endpoint(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.starts += 1
        self.proc = ManagedProcess(
            f"etcd-tls-{self.port}-{self.starts}",
            [
                *etcd_command(
                    self.binary, "t", str(self.data_dir), "127.0.0.1", self.port, self.peer_port, "https"
                ),
                f"--cert-file={self.certs.server_cert}",
                f"--key-file={self.certs.server_key}",
                f"--trusted-ca-file={self.certs.ca}",
                "--client-cert-auth",
            ],
            self.log_dir,
        )
        wait_until(lambda: self.call("/health", None) is not None, 20, "etcd (TLS) health", interval=0.2)

    def call(self, path: str, body: dict | None) -> dict:
        """The JSON gateway (``/v3/...``) over TLS with our client certificate."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.endpoint + path, data=data, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=5, context=client_ssl(self.certs)) as resp:
            return json.loads(resp.read() or b"{}")

    def enable_auth(self, password: str) -> None:
        self.call("/v3/auth/role/add", {"name": "root"})
        self.call("/v3/auth/user/add", {"name": "root", "password": password})
        self.call("/v3/auth/user/grant", {"user": "root", "role": "root"})
        self.call("/v3/auth/enable", {})

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None


@pytest.fixture(scope="module")
def etcd_tls(log_dir: Path, certs: Certs, tmp_path_factory) -> Iterator[TlsEtcd]:
    server = TlsEtcd(log_dir, tmp_path_factory.mktemp("etcd-tls"), certs)
    server.start()
    try:
        server.enable_auth(PASSWORD)
        yield server
    finally:
        server.stop()


def etcd_env(
    monkeypatch: pytest.MonkeyPatch, certs: Certs, password: str | None, client_cert: bool = True
) -> None:
    for name in ("ETCD_AUTH_USERNAME", "ETCD_AUTH_PASSWORD", "ETCD_AUTH_CLIENT_CERT", "ETCD_AUTH_CLIENT_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ETCD_AUTH_CA", str(certs.ca))
    if password is not None:
        monkeypatch.setenv("ETCD_AUTH_USERNAME", "root")
        monkeypatch.setenv("ETCD_AUTH_PASSWORD", password)
    if client_cert:
        monkeypatch.setenv("ETCD_AUTH_CLIENT_CERT", str(certs.client_cert))
        monkeypatch.setenv("ETCD_AUTH_CLIENT_KEY", str(certs.client_key))


async def test_etcd_with_tls_and_a_password_serves_our_discovery_and_survives_a_restart(
    etcd_tls: TlsEtcd, certs: Certs, monkeypatch, caplog
) -> None:
    etcd_env(monkeypatch, certs, PASSWORD)
    discovery = EtcdDiscovery([etcd_tls.endpoint], ttl=5)
    await discovery.start()
    try:
        await discovery.put("sec/a", b"1")
        assert await discovery.get_prefix("sec/") == {"sec/a": b"1"}
        # etcd restarts on its data: the lease and keys survive, this process's token does not
        etcd_tls.stop()
        etcd_tls.start()
        caplog.set_level(logging.WARNING, logger="dynamo.runtime.discovery.etcd")
        await asyncio.wait_for(discovery.put("sec/b", b"2"), timeout=20)
        assert await discovery.get_prefix("sec/") == {"sec/a": b"1", "sec/b": b"2"}
        assert "logging in again" in caplog.text
    finally:
        await discovery.close()


@pytest.mark.parametrize(
    "who", ["wrong password", "no client certificate", "no password (certificate only)", "plaintext endpoint"]
)
async def test_etcd_refuses_our_client_without_its_credentials(
    etcd_tls: TlsEtcd, certs: Certs, monkeypatch, who: str
) -> None:
    etcd_env(
        monkeypatch,
        certs,
        password={"wrong password": "nope", "no password (certificate only)": None}.get(who, PASSWORD),
        client_cert=who != "no client certificate",
    )
    endpoint = etcd_tls.endpoint
    if who == "plaintext endpoint":
        for name in ("ETCD_AUTH_CA", "ETCD_AUTH_CLIENT_CERT", "ETCD_AUTH_CLIENT_KEY"):
            monkeypatch.delenv(name)
        endpoint = endpoint.replace("https://", "http://")
    discovery = EtcdDiscovery([endpoint], ttl=5)
    try:
        with pytest.raises(Exception):  # noqa: B017  # refused at connect, login or first write
            await asyncio.wait_for(discovery.start(), timeout=15)
            await asyncio.wait_for(discovery.put("sec/intruder", b"x"), timeout=10)
    finally:
        await discovery.close()


# --- NATS -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nats_tls(log_dir: Path, certs: Certs, tmp_path_factory) -> Iterator[str]:
    binary = find_binary("nats-server")
    if binary is None:
        pytest.skip("nats-server is not installed")
    port = free_port()
    conf = tmp_path_factory.mktemp("nats-tls") / "nats.conf"
    conf.write_text(
        f"""
listen: 127.0.0.1:{port}
tls {{
  cert_file: "{certs.server_cert}"
  key_file: "{certs.server_key}"
  ca_file: "{certs.ca}"
  verify: true
}}
authorization {{
  user: dyn
  password: nats-pw-93c1
}}
"""
    )
    proc = ManagedProcess(f"nats-tls-{port}", [binary, "-c", str(conf)], log_dir)

    def accepts() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True

    try:
        wait_until(accepts, 20, "nats-server (TLS) listening")
        yield f"nats://127.0.0.1:{port}"
    finally:
        proc.stop()


def nats_env(monkeypatch: pytest.MonkeyPatch, certs: Certs, password: str, client_cert: bool = True) -> None:
    monkeypatch.setenv("NATS_AUTH_USERNAME", "dyn")
    monkeypatch.setenv("NATS_AUTH_PASSWORD", password)
    monkeypatch.setenv("NATS_TLS_CA_CERT_PATH", str(certs.ca))
    for name in ("NATS_TLS_CLIENT_CERT_PATH", "NATS_TLS_CLIENT_KEY_PATH"):
        monkeypatch.delenv(name, raising=False)
    if client_cert:
        monkeypatch.setenv("NATS_TLS_CLIENT_CERT_PATH", str(certs.client_cert))
        monkeypatch.setenv("NATS_TLS_CLIENT_KEY_PATH", str(certs.client_key))


async def test_nats_with_tls_and_a_password_carries_our_events(
    nats_tls: str, certs: Certs, monkeypatch
) -> None:
    nats_env(monkeypatch, certs, "nats-pw-93c1")
    plane = NatsEventPlane(nats_tls)
    await plane.start()
    try:
        events = plane.subscribe("sec.events")
        first = asyncio.ensure_future(events.__anext__())
        await asyncio.sleep(0.2)  # the subscription reaches the server
        await plane.publish("sec.events", b"hello")
        assert await asyncio.wait_for(first, timeout=5) == ("sec.events", b"hello")
        await events.aclose()
    finally:
        await plane.close()


@pytest.mark.parametrize("who", ["wrong password", "no client certificate"])
async def test_nats_refuses_our_client_without_its_credentials(
    nats_tls: str, certs: Certs, monkeypatch, who: str
) -> None:
    nats_env(
        monkeypatch,
        certs,
        "nope" if who == "wrong password" else "nats-pw-93c1",
        client_cert=who != "no client certificate",
    )
    plane = NatsEventPlane(nats_tls)
    try:
        with pytest.raises(ConnectionError):
            await asyncio.wait_for(plane.start(), timeout=15)
    finally:
        await plane.close()
