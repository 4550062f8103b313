"""End to end with real processes: a frontend serving HTTPS with an API key, and a mocker worker
whose request plane takes only mutual-TLS callers; the frontend reaches it over that TLS. Also: the
401 answers, the routes left open, a plaintext or certificate-less caller refused by the worker's
request plane, and a frontend that demands client certificates (HTTPS mutual TLS)."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from dynamo.runtime.request_plane import RequestPlaneClient, RequestPlaneError
from dynamo.runtime.tls import request_plane_client_tls
from tests.security.conftest import Certs
from tests.support.graph import discovery_env, start_mocker
from tests.support.procs import ManagedProcess, free_port, wait_until

pytestmark = [pytest.mark.timeout(120)]
MODEL = "sec-mock"
KEY = "sk-test-7f3a9c"


@dataclass
class SecureFrontend:
    proc: ManagedProcess
    url: str  # https://127.0.0.1:port
    ca: Path

    def get(
        self, path: str, key: str | None = None, cert: tuple[Path, Path] | None = None
    ) -> tuple[int, dict, dict]:
        """(status, headers, JSON body) of ``GET path`` over verified HTTPS."""
        ctx = ssl.create_default_context(cafile=str(self.ca))
        if cert:
            ctx.load_cert_chain(*map(str, cert))
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        req = urllib.request.Request(self.url + path, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=10, context=ctx) as resp:
                return resp.status, dict(resp.headers), json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as err:
            return err.code, dict(err.headers), json.loads(err.read() or b"{}")


def start_frontend(log_dir: Path, env: dict[str, str], certs: Certs, name: str, *args: str) -> SecureFrontend:
    port = free_port()
    proc = ManagedProcess.python(
        name,
        [
            "-m",
            "dynamo.frontend",
            "--http-host",
            "127.0.0.1",
            "--http-port",
            str(port),
            "--tls-cert-path",
            str(certs.server_cert),
            "--tls-key-path",
            str(certs.server_key),
            *args,
        ],
        log_dir,
        env,
    )
    frontend = SecureFrontend(proc, f"https://127.0.0.1:{port}", certs.ca)
    wait_until(lambda: proc.alive() and accepts(port), 30, f"{name} listening")
    return frontend


def accepts(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1):
        return True


@pytest.fixture(scope="module")
def graph(
    log_dir: Path, smollm2_tokenizer_dir: Path, certs: Certs, tmp_path_factory
) -> Iterator[tuple[SecureFrontend, ManagedProcess]]:
    env = discovery_env("file")
    env["DYN_FILE_DISCOVERY_DIR"] = str(tmp_path_factory.mktemp("sec-discovery"))
    env["DYN_NAMESPACE"] = "sec"
    tcp_tls = {
        # worker side: serve TLS, take only callers with a certificate from our CA
        "DYN_TCP_TLS_CERT_PATH": str(certs.server_cert),
        "DYN_TCP_TLS_KEY_PATH": str(certs.server_key),
        "DYN_TCP_TLS_CLIENT_CA_CERT_PATH": str(certs.ca),
        # caller side (the frontend): verify the worker, present our client certificate
        "DYN_TCP_TLS_CA_CERT_PATH": str(certs.ca),
        "DYN_TCP_TLS_CLIENT_CERT_PATH": str(certs.client_cert),
        "DYN_TCP_TLS_CLIENT_KEY_PATH": str(certs.client_key),
    }
    worker = start_mocker(
        log_dir,
        {**env, **tcp_tls},
        smollm2_tokenizer_dir,
        "sec-mocker",
        "--model-name",
        MODEL,
        "--speedup-ratio",
        "50",
    )
    frontend = start_frontend(log_dir, {**env, **tcp_tls, "DYN_API_KEY": KEY}, certs, "sec-frontend")
    try:
        wait_until(lambda: frontend.get("/health")[0] == 200, 30, "the worker in the frontend's /health")
        yield frontend, worker
    finally:
        frontend.proc.stop()
        worker.stop()


def test_v1_routes_refuse_a_missing_or_wrong_key_with_401_in_openai_shape(graph) -> None:
    frontend, _ = graph
    for key in (None, "sk-wrong", KEY + "x", KEY[:-1]):
        status, headers, body = frontend.get("/v1/models", key=key)
        assert status == 401, (key, body)
        assert set(body["error"]) == {"message", "type", "param", "code"}
        assert body["error"]["code"] == "invalid_api_key"
        assert headers.get("www-authenticate", headers.get("WWW-Authenticate", "")).startswith("Bearer")
    status, _, body = frontend.get("/v1/models", key=KEY)
    assert status == 200 and [m["id"] for m in body["data"]] == [MODEL]


def test_probes_and_metrics_stay_open(graph) -> None:
    frontend, _ = graph
    for path in ("/health", "/live"):
        assert frontend.get(path)[0] == 200, path
    ctx = ssl.create_default_context(cafile=str(frontend.ca))
    with urllib.request.urlopen(frontend.url + "/metrics", timeout=10, context=ctx) as resp:
        assert resp.status == 200


def test_completion_over_https_and_a_mutual_tls_request_plane(graph) -> None:
    frontend, worker = graph
    client = openai.OpenAI(
        base_url=frontend.url + "/v1", api_key=KEY, http_client=httpx.Client(verify=str(frontend.ca))
    )
    out = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=4)
    assert out.usage is not None and out.usage.completion_tokens == 4
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=3, stream=True
        )
    )
    assert chunks and chunks[-1].choices[-1].finish_reason == "length"
    wrong = openai.OpenAI(
        base_url=frontend.url + "/v1", api_key="sk-wrong", http_client=httpx.Client(verify=str(frontend.ca))
    )
    with pytest.raises(openai.AuthenticationError):
        wrong.completions.create(model=MODEL, prompt="x", max_tokens=1)


def test_plain_http_to_the_https_port_gets_no_answer(graph) -> None:
    frontend, _ = graph
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        urllib.request.urlopen(frontend.url.replace("https://", "http://") + "/live", timeout=5)


def test_worker_request_plane_refuses_callers_without_tls_or_a_certificate(graph, certs: Certs) -> None:
    frontend, _ = graph
    _, _, health = frontend.get("/health")
    address = health["instances"][0]["address"]
    assert address.startswith("127.0.0.1:"), address
    endpoint = health["instances"][0]["endpoint"]

    async def attempt(tls_env: dict[str, str]) -> None:
        client = RequestPlaneClient(connect_timeout=3, tls=request_plane_client_tls(tls_env))
        try:
            stream = await client.stream(address, endpoint, {"token_ids": [1, 2, 3]}, {})
            async for _ in stream:
                pass
        finally:
            await client.close()

    for tls_env in ({}, {"DYN_TCP_TLS_CA_CERT_PATH": str(certs.ca)}):
        with pytest.raises(RequestPlaneError):
            asyncio.run(asyncio.wait_for(attempt(tls_env), timeout=15))
    # ...and the frontend, which has a certificate, is still served
    status, _, body = frontend.get("/v1/models", key=KEY)
    assert status == 200 and body["data"]


def test_https_mutual_tls_frontend_refuses_clients_without_a_certificate(log_dir: Path, certs: Certs) -> None:
    env = discovery_env("file")
    env["DYN_NAMESPACE"] = "sec-mtls"
    frontend = start_frontend(
        log_dir, env, certs, "sec-frontend-mtls", "--tls-client-ca-cert-path", str(certs.ca)
    )
    try:
        assert frontend.get("/live", cert=(certs.client_cert, certs.client_key))[0] == 200
        with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
            frontend.get("/live")
    finally:
        frontend.proc.stop()


def test_bad_security_flags_exit_with_status_2_naming_the_flag(log_dir: Path, certs: Certs) -> None:
    proc = ManagedProcess.python(
        "sec-frontend-badflags",
        ["-m", "dynamo.frontend", "--http-port", str(free_port()), "--tls-cert-path", str(certs.server_cert)],
        log_dir,
        discovery_env("file"),
    )
    assert proc.proc.wait(timeout=30) == 2
    assert "--tls-cert-path and --tls-key-path must be provided together" in proc.log_text()
    proc.stop()


def test_https_with_several_http_workers_answers_metrics_for_all(log_dir: Path, certs: Certs) -> None:
    env = discovery_env("file")
    env["DYN_NAMESPACE"] = "sec-workers"
    frontend = start_frontend(
        log_dir, {**env, "DYN_API_KEY": KEY}, certs, "sec-frontend-workers", "--http-workers", "2"
    )
    try:
        ctx = ssl.create_default_context(cafile=str(frontend.ca))

        def merged() -> str:
            with urllib.request.urlopen(frontend.url + "/metrics", timeout=10, context=ctx) as resp:
                return resp.read().decode()

        wait_until(lambda: 'http_worker="1"' in merged(), 30, "/metrics of both processes over HTTPS")
        assert 'http_worker="0"' in merged()
        assert frontend.get("/v1/models")[0] == 401
        assert frontend.get("/v1/models", key=KEY)[0] == 200
    finally:
        frontend.proc.stop()
