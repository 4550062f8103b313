"""The request plane with TLS on real sockets (one process): a verified caller is served, a
plaintext caller, a caller trusting another CA and (with mutual TLS) a caller without a certificate
are refused before any handler runs; and where a worker's request plane listens by default."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncGenerator
from typing import Any

import pytest

from dynamo.runtime import DistributedRuntime, RuntimeConfig
from dynamo.runtime.request_plane import (
    RequestContext,
    RequestPlaneClient,
    RequestPlaneError,
    RequestPlaneServer,
)
from dynamo.runtime.tls import request_plane_client_tls, request_plane_server_context
from tests.security.conftest import Certs

pytestmark = pytest.mark.timeout(60)


class Counter:
    def __init__(self) -> None:
        self.calls = 0

    async def handler(self, request: Any, ctx: RequestContext) -> AsyncGenerator[int, None]:
        self.calls += 1
        for i in range(int(request["n"])):
            yield i


async def serve(env: dict[str, str]) -> tuple[RequestPlaneServer, Counter]:
    counter = Counter()
    server = RequestPlaneServer(
        "127.0.0.1", 0, ssl_context=request_plane_server_context(env), handshake_timeout=2
    )
    server.register("t.w.count", counter.handler)
    await server.start()
    return server, counter


async def call(client: RequestPlaneClient, server: RequestPlaneServer) -> list[int]:
    stream = await client.stream(f"127.0.0.1:{server.port}", "t.w.count", {"n": 5})
    return [item async for item in stream]


def server_env(certs: Certs, mutual: bool = False) -> dict[str, str]:
    env = {"DYN_TCP_TLS_CERT_PATH": str(certs.server_cert), "DYN_TCP_TLS_KEY_PATH": str(certs.server_key)}
    if mutual:
        env["DYN_TCP_TLS_CLIENT_CA_CERT_PATH"] = str(certs.ca)
    return env


async def test_tls_caller_verified_by_the_ca_is_served(certs: Certs) -> None:
    server, counter = await serve(server_env(certs))
    client = RequestPlaneClient(tls=request_plane_client_tls({"DYN_TCP_TLS_CA_CERT_PATH": str(certs.ca)}))
    try:
        assert await call(client, server) == [0, 1, 2, 3, 4]
        assert counter.calls == 1
    finally:
        await client.close()
        await server.stop()


@pytest.mark.parametrize("caller", ["plaintext", "trusts another CA"])
async def test_tls_server_refuses_plaintext_and_unverified_callers(certs: Certs, caller: str) -> None:
    server, counter = await serve(server_env(certs))
    env = {} if caller == "plaintext" else {"DYN_TCP_TLS_CA_CERT_PATH": str(certs.other_ca)}
    client = RequestPlaneClient(connect_timeout=3, tls=request_plane_client_tls(env))
    try:
        with pytest.raises(RequestPlaneError):
            await asyncio.wait_for(call(client, server), timeout=10)
        await asyncio.sleep(0.1)
        assert counter.calls == 0, "a handler ran for a caller that should have been refused"
    finally:
        await client.close()
        await server.stop()


async def test_mutual_tls_refuses_a_caller_without_a_certificate(certs: Certs) -> None:
    server, counter = await serve(server_env(certs, mutual=True))
    anonymous = RequestPlaneClient(
        connect_timeout=3, tls=request_plane_client_tls({"DYN_TCP_TLS_CA_CERT_PATH": str(certs.ca)})
    )
    known = RequestPlaneClient(
        tls=request_plane_client_tls(
            {
                "DYN_TCP_TLS_CA_CERT_PATH": str(certs.ca),
                "DYN_TCP_TLS_CLIENT_CERT_PATH": str(certs.client_cert),
                "DYN_TCP_TLS_CLIENT_KEY_PATH": str(certs.client_key),
            }
        )
    )
    try:
        with pytest.raises(RequestPlaneError):
            await asyncio.wait_for(call(anonymous, server), timeout=10)
        await asyncio.sleep(0.1)
        assert counter.calls == 0
        assert await call(known, server) == [0, 1, 2, 3, 4]
        assert counter.calls == 1
    finally:
        await anonymous.close()
        await known.close()
        await server.stop()


def test_tls_settings_name_the_variable_that_is_wrong(certs: Certs, tmp_path) -> None:
    with pytest.raises(ValueError, match="DYN_TCP_TLS_KEY_PATH"):
        request_plane_server_context({"DYN_TCP_TLS_CERT_PATH": str(certs.server_cert)})
    with pytest.raises(ValueError, match="DYN_TCP_TLS_CA_CERT_PATH"):
        request_plane_client_tls({"DYN_TCP_TLS_CA_CERT_PATH": str(tmp_path / "missing.pem")})
    assert request_plane_server_context({}) is None
    assert request_plane_client_tls({}) is None


# --- where the worker's request plane listens -------------------------------------------------


def listening_host(rt: DistributedRuntime) -> str:
    assert rt._server is not None and rt._server._server is not None
    return str(rt._server._server.sockets[0].getsockname()[0])


async def served_host(monkeypatch: pytest.MonkeyPatch, **env: str) -> tuple[str, str]:
    """(listening address, advertised address) of a worker runtime under ``env``."""
    for name in ("DYN_TCP_RPC_HOST", "DYN_ADVERTISE_HOST", "POD_IP"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    rt = await DistributedRuntime.create(RuntimeConfig.from_env(discovery_backend="mem", namespace="sec"))
    try:

        async def nothing(request: Any, ctx: RequestContext) -> AsyncGenerator[int, None]:
            yield 0

        record = await rt.serve_endpoint("sec.worker.generate", nothing)
        return listening_host(rt), record.address.rpartition(":")[0]
    finally:
        await rt.shutdown()


async def test_worker_listens_on_its_advertised_address_not_every_interface(monkeypatch) -> None:
    listening, advertised = await served_host(monkeypatch, DYN_ADVERTISE_HOST="127.0.0.1")
    assert (listening, advertised) == ("127.0.0.1", "127.0.0.1")


async def test_worker_advertising_a_name_listens_on_its_address(monkeypatch) -> None:
    listening, advertised = await served_host(monkeypatch, DYN_ADVERTISE_HOST="localhost")
    assert advertised == "localhost"
    assert listening == socket.getaddrinfo("localhost", None, type=socket.SOCK_STREAM)[0][4][0]


async def test_dyn_tcp_rpc_host_chooses_every_interface(monkeypatch) -> None:
    listening, advertised = await served_host(
        monkeypatch, DYN_TCP_RPC_HOST="0.0.0.0", DYN_ADVERTISE_HOST="127.0.0.1"
    )
    assert (listening, advertised) == ("0.0.0.0", "127.0.0.1")


async def test_an_address_not_on_this_host_falls_back_to_every_interface(monkeypatch) -> None:
    # 192.0.2.0/24 is TEST-NET-1: never configured on a real interface (a worker behind NAT).
    listening, advertised = await served_host(monkeypatch, DYN_ADVERTISE_HOST="192.0.2.7")
    assert (listening, advertised) == ("0.0.0.0", "192.0.2.7")
