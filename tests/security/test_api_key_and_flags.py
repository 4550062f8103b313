"""The API-key check (through the ASGI app, no engine) and the security flags' parsing."""

from __future__ import annotations

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from dynamo.frontend.args import FrontendConfig, build_parser
from dynamo.frontend.auth import ApiKeyAuth
from tests.security.conftest import Certs


async def inner(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"served"})


async def get(app: ApiKeyAuth, path: str, authorization: str | None) -> httpx.Response:
    headers = {"Authorization": authorization} if authorization is not None else {}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        return await client.get(path, headers=headers)


@pytest.mark.parametrize(
    ("authorization", "status"),
    [
        (None, 401),
        ("", 401),
        ("Bearer", 401),
        ("Bearer ", 401),
        ("Basic a2V5LW9uZQ==", 401),
        ("Bearer key-one-", 401),
        ("Bearer key-on", 401),
        ("Bearer key-one", 200),
        ("bearer key-one", 200),
        ("Bearer key-two", 200),
    ],
)
async def test_v1_paths_need_one_of_the_keys(authorization: str | None, status: int) -> None:
    app = ApiKeyAuth(inner, ["key-one", "key-two"])
    resp = await get(app, "/v1/chat/completions", authorization)
    assert resp.status_code == status
    if status == 401:
        assert resp.json()["error"]["code"] == "invalid_api_key"
        assert resp.json()["error"]["type"] == "invalid_request_error"
        assert resp.headers["www-authenticate"].startswith("Bearer")
    else:
        assert resp.text == "served"


@pytest.mark.parametrize("path", ["/health", "/live", "/metrics", "/openapi.json", "/v1"])
async def test_probes_metrics_and_the_description_need_no_key(path: str) -> None:
    assert (await get(ApiKeyAuth(inner, ["k"]), path, None)).status_code == 200


def config(*argv: str) -> FrontendConfig:
    return FrontendConfig.from_args(build_parser().parse_args(list(argv)))


def test_api_key_from_flags_or_env(monkeypatch) -> None:
    monkeypatch.delenv("DYN_API_KEY", raising=False)
    assert config().api_keys == ()
    assert config("--api-key", "a", "--api-key", "b").api_keys == ("a", "b")
    monkeypatch.setenv("DYN_API_KEY", "from-env")
    assert config().api_keys == ("from-env",)
    assert config("--api-key", "flag").api_keys == ("flag",)
    with pytest.raises(ValueError, match="--api-key must not be empty"):
        config("--api-key", " ")


def test_tls_flags_and_env(certs: Certs, monkeypatch) -> None:
    cert, key, ca = str(certs.server_cert), str(certs.server_key), str(certs.ca)
    got = config("--tls-cert-path", cert, "--tls-key-path", key)
    assert (got.tls_cert_path, got.tls_key_path, got.tls_client_ca_cert_path) == (cert, key, None)
    with pytest.raises(ValueError, match="must be provided together"):
        config("--tls-key-path", key)
    with pytest.raises(ValueError, match="requires --tls-cert-path"):
        config("--tls-client-ca-cert-path", ca)
    with pytest.raises(ValueError, match="not a readable file"):
        config("--tls-cert-path", cert + ".missing", "--tls-key-path", key)
    with pytest.raises(ValueError, match="--http-workers"):
        config(
            "--tls-cert-path",
            cert,
            "--tls-key-path",
            key,
            "--tls-client-ca-cert-path",
            ca,
            "--http-workers",
            "2",
        )
    monkeypatch.setenv("DYN_TLS_CERT_PATH", cert)
    monkeypatch.setenv("DYN_TLS_KEY_PATH", key)
    monkeypatch.setenv("DYN_TLS_CLIENT_CA_CERT_PATH", ca)
    got = config()
    assert (got.tls_cert_path, got.tls_key_path, got.tls_client_ca_cert_path) == (cert, key, ca)
